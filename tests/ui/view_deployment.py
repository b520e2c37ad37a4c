"""
A running local Airflow with a finished run of the demo campaign, for the campaign view's browser tests.

Everything is real: moto server (S3, Logs), the SageMaker emulator running the BoltzGen simulator,
and Airflow's API server, scheduler, DAG processor and triggerer (tests/dags/airflow_services.py)
on free ports. The run is the demo campaign cut to one spec (:data:`SPEC`, still two shards through
all five stages), and a dry run goes alongside it. ``python tests/ui/view_deployment.py`` starts
one and keeps it up until interrupted.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import Request

import yaml

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests" / "dags"))

from airflow_services import AirflowServices  # noqa: E402

DAG_ID = "boltzgen_demo"
BUCKET = "bg-view"
RUN_ID = "view_demo_run"
DRY_RUN_ID = "view_dry_run"
SPEC = "binding_disordered_peptides/tpp4.yaml"  # the first spec of the full demo, whose 3D view is checked
SHARDS = 2  # what sharding.target_hours makes of the spec's 8 designs
USER, PASSWORD = "designer", "view-test-password"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """A running deployment and its finished demo run."""

    services: AirflowServices
    stack: Any
    url: str
    run_id: str
    run_state: str
    seconds: float

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """
        Call Airflow's REST API as :data:`USER`.

        :param method: ``GET``, ``POST``, ``PATCH``...
        :param path: under ``/api/v2``, e.g. ``/dags/boltzgen_demo``.
        :param body: the JSON body, if any.
        """
        login = json.dumps({"username": USER, "password": PASSWORD}).encode()
        token = _json_request(Request(f"{self.url}/auth/token", data=login, method="POST"))["access_token"]
        request = Request(
            f"{self.url}/api/v2{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}"},
            method=method,
        )
        return _json_request(request)

    def trigger(self, run_id: str, conf: dict[str, Any]) -> None:
        """:param run_id: a new run of the demo DAG. :param conf: its params."""
        self.api(
            "POST", f"/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        )

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        """
        Wait for a run of the demo DAG to end.

        :param run_id: the run.
        :param timeout: seconds.
        :return: its final state (``success`` or ``failed``).
        """
        return str(
            self.services.wait_for(
                lambda: next(
                    (
                        r["state"]
                        for r in self.services.runs(DAG_ID)
                        if r["run_id"] == run_id and r["state"] in ("success", "failed")
                    ),
                    None,
                ),
                timeout,
                f"run {run_id} to finish",
                interval=3,
            )
        )


def _json_request(request: Request) -> Any:
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _demo_campaign(folder: Path) -> Path:
    """The demo campaign cut to :data:`SPEC`, its specs folder made absolute (the copy lives elsewhere)."""
    campaign = yaml.safe_load((PROJECT / "include/configs/campaigns/demo.yaml").read_text())
    campaign["design"].update(specs=str(PROJECT / "include" / "specs"), include=SPEC)
    campaign["description"] = f"The demo campaign cut to {SPEC}, 8 designs."
    # Both shards at once: the small preset's single GPU slot would run the spec's shards one by one.
    for stage in ("design", "inverse_folding", "folding", "analysis"):
        campaign["scaling"][stage] = {"max_parallel_jobs": SHARDS}
    campaign["max_active_runs"] = 2  # the dry run alongside the real one
    campaign["retry_delay_seconds"] = 5  # a try lost to the deferral race (below) costs seconds
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    return path


@contextmanager
def demo_deployment(root: Path, conf: dict[str, Any] | None = None) -> Iterator[Deployment]:
    """
    Start the stack and Airflow, run the demo campaign once to its end, and stop everything after.

    :param root: a scratch folder (stack state, AIRFLOW_HOME, campaign copy).
    :param conf: the run's params.
    """
    from sagemaker_emulator.stack import LocalStack, free_ports

    stack = LocalStack(root / "stack", *free_ports(2), simulated=True, buckets=[BUCKET])
    campaign = _demo_campaign(root / "campaigns")
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    port = free_port()
    services = AirflowServices(
        root / "airflow",
        port,
        {
            **stack.env(),
            "BOLTZGEN_CAMPAIGNS_DIR": str(campaign.parent),
            "BOLTZGEN_BUCKET": BUCKET,
            # Every stage job waits one interval at least. Under 5 s a trigger can fire before the
            # scheduler saw its task defer (docs/architecture.md, "Airflow 3.3.2 deferral race"): the
            # try fails and waits for its retry (retry_delay_seconds above).
            "BOLTZGEN_CHECK_INTERVAL": "5",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        },
    )
    # The stack starts while Airflow migrates its database and parses the DAG (its endpoints are
    # known from its ports): neither waits for the other until the first run is triggered.
    stack_error: list[BaseException] = []

    def start_stack() -> None:
        try:
            stack.start(timeout=180)
        except BaseException as err:  # re-raised in the caller's thread
            stack_error.append(err)

    started = time.monotonic()
    stack_thread = threading.Thread(target=start_stack, name="local-stack")
    stack_thread.start()
    try:
        services.start()
        services.python(
            "from boltzgen_airflow.campaign.loading import load_campaign\n"
            "from boltzgen_airflow.dag.pools import ensure_pools\n"
            f"ensure_pools([load_campaign({str(campaign)!r})])\n"
        )
        services.wait_for(
            lambda: services.query("SELECT 1 FROM dag WHERE dag_id = ?", DAG_ID),
            180,
            f"{DAG_ID} to be parsed",
        )
        stack_thread.join()
        if stack_error:
            raise stack_error[0]
        deployment = Deployment(services, stack, f"http://127.0.0.1:{port}", RUN_ID, "", 0.0)
        deployment.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        deployment.trigger(RUN_ID, conf or {})
        deployment.trigger(DRY_RUN_ID, {"dry_run": True})
        deployment.run_state = deployment.wait_for_run(RUN_ID, 1200)
        deployment.seconds = time.monotonic() - started
        yield deployment
    finally:
        stack_thread.join()
        services.stop()
        stack.stop()


if __name__ == "__main__":
    import signal
    import tempfile

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill <pid>` stops everything it started

    with (
        tempfile.TemporaryDirectory(prefix="boltzgen-view-") as tmp,
        demo_deployment(Path(tmp)) as deployment,
    ):
        print(
            f"{deployment.url} ({USER} / {PASSWORD}); run {deployment.run_id} {deployment.run_state} "
            f"after {deployment.seconds:.0f}s; home {deployment.services.home}",
            flush=True,
        )
        try:
            while True:
                time.sleep(5)
        except KeyboardInterrupt:
            pass

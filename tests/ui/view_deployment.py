"""
A running local Airflow with a finished run of the demo campaign, for the campaign view's browser tests.

Everything is real: moto server (S3, Logs), the SageMaker emulator running the BoltzGen simulator,
and Airflow's API server, scheduler, DAG processor and triggerer (tests/dags/airflow_services.py)
on free ports. ``python tests/ui/view_deployment.py`` starts one and keeps it up until interrupted.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests" / "dags"))

from airflow_services import AirflowServices  # noqa: E402

DAG_ID = "boltzgen_demo"
BUCKET = "bg-view"
RUN_ID = "view_demo_run"
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


def _demo_campaign(folder: Path) -> Path:
    """The demo campaign file with its specs folder made absolute (the copy lives elsewhere)."""
    text = (PROJECT / "include/configs/campaigns/demo.yaml").read_text()
    text = text.replace("specs: ../../specs", f"specs: {PROJECT / 'include' / 'specs'}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.yaml"
    path.write_text(text)
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
    stack.start(timeout=180)
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
            # Under 5 s a trigger can fire before the scheduler saw its task defer (docs/architecture.md,
            # "Airflow 3.3.2 deferral race"): the try fails and waits for its retry.
            "BOLTZGEN_CHECK_INTERVAL": "10",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        },
    )
    try:
        started = time.monotonic()
        services.start()
        services.python(
            "from boltzgen_airflow.config import load_campaign\n"
            "from boltzgen_airflow.dag_factory import ensure_pools\n"
            f"ensure_pools([load_campaign({str(campaign)!r})])\n"
        )
        services.wait_for(
            lambda: services.query("SELECT 1 FROM dag WHERE dag_id = ?", DAG_ID),
            180,
            f"{DAG_ID} to be parsed",
        )
        services.cli("dags", "unpause", DAG_ID)
        services.cli("dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--conf", json.dumps(conf or {}))
        state = services.wait_for(
            lambda: next(
                (
                    r["state"]
                    for r in services.runs(DAG_ID)
                    if r["run_id"] == RUN_ID and r["state"] in ("success", "failed")
                ),
                None,
            ),
            1200,
            "the demo run to finish",
            interval=3,
        )
        yield Deployment(
            services, stack, f"http://127.0.0.1:{port}", RUN_ID, state, time.monotonic() - started
        )
    finally:
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

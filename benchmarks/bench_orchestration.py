"""
Orchestration overhead: a campaign whose simulated BoltzGen steps take no time, run through real
Airflow (``dag.test()``) against the local stack (SageMaker emulator, S3 and CloudWatch Logs on
moto server), so every second measured is Airflow, the emulator, the step scripts and S3.

The wall time is divided by the shard stage jobs run (shards x stages); task instance durations from
the metadata database break it down per task. Optional in ``make bench`` (``--orchestration``): it
takes minutes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import ROOT, load_average, median, table, write_result

BUCKET = "bench-orchestration"
CAMPAIGN = """
name: bench_orchestration
retries: 0
aws:
  bucket: {bucket}
  prefix: bench
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "{include}"
  protocol: protein-anything
  num_designs: {designs}
  budget: 1
  diffusion_batch_size: 1
scaling:
  preset: small
sharding:
  target_hours: 0.00001
  max_shards: {shards}
"""

_RUNNER = """
import json, runpy, sys, time
from airflow import settings
namespace = runpy.run_path(sys.argv[1])
dag = namespace[sys.argv[2]]
started = time.perf_counter()
run = dag.test(run_conf={})
wall = time.perf_counter() - started
session = settings.Session()
run = session.merge(run)
tis = [
    {"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state),
     "seconds": (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None}
    for ti in run.get_task_instances(session=session)
]
print("RESULT " + json.dumps({"state": str(run.state), "wall_s": wall, "tis": tis}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(shards: int = 50, designs_per_spec: int = 17, include: str = "*/*.yaml") -> dict[str, Any]:
    """
    Run the campaign once and return the figures.

    :param shards: shard cap of the campaign (the planner makes at most this many).
    :param designs_per_spec: designs per example spec (enough work items to fill the shards).
    :param include: which example specs (glob under ``include/specs``).
    """
    from sagemaker_emulator.stack import LocalStack

    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        home = Path(tmp) / "airflow-home"
        campaigns = Path(tmp) / "campaigns"
        campaigns.mkdir()
        (campaigns / "bench_orchestration.yaml").write_text(
            CAMPAIGN.format(
                bucket=BUCKET,
                specs=ROOT / "include" / "specs",
                include=include,
                designs=designs_per_spec,
                shards=shards,
            )
        )
        base = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=base, check=True, capture_output=True
        )
        stack = LocalStack(Path(tmp) / "stack", _free_port(), _free_port(), simulated=True, buckets=[BUCKET])
        stack.start(timeout=180)
        try:
            env = {
                **base,
                **stack.env(),
                "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
                "BOLTZGEN_CHECK_INTERVAL": "1",
            }
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _RUNNER,
                    str(ROOT / "dags" / "boltzgen_campaigns.py"),
                    "boltzgen_bench_orchestration",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            process_s = time.perf_counter() - started
        finally:
            stack.stop()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"dag.test failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    tis = result["tis"]
    shard_count = len({ti["map_index"] for ti in tis if ti["task_id"].startswith("shard.")})
    stage_jobs = sum(
        1 for ti in tis if ti["task_id"].startswith("shard.") and not ti["task_id"].startswith("shard.check")
    )
    per_task: dict[str, list[float]] = defaultdict(list)
    for ti in tis:
        if ti["seconds"] is not None:
            per_task[ti["task_id"]].append(ti["seconds"])
    return {
        "suite": "orchestration",
        "state": result["state"],
        "shards": shard_count,
        "shard_stage_jobs": stage_jobs,
        "task_instances": len(tis),
        "failed_task_instances": sum(
            ti["state"] not in ("success", "TaskInstanceState.SUCCESS") for ti in tis
        ),
        "dag_test_wall_s": round(result["wall_s"], 2),
        "process_wall_s": round(process_s, 2),
        "wall_s_per_shard_stage": round(result["wall_s"] / max(stage_jobs, 1), 3),
        "task_median_s": {k: round(median(v), 3) for k, v in sorted(per_task.items())},
        "task_total_s": {k: round(sum(v), 2) for k, v in sorted(per_task.items())},
        "check_interval_s": 1,
        "load_average_before": before,
    }


def report(document: dict[str, Any]) -> str:
    """
    The figures as a table.

    :param document: from :func:`run`.
    """
    rows = [
        [task, document["task_median_s"][task], document["task_total_s"][task]]
        for task in document["task_median_s"]
    ]
    return (
        f"Orchestration: {document['shards']} shards, {document['shard_stage_jobs']} shard stage jobs, "
        f"run {document['state']} in {document['dag_test_wall_s']:.1f} s "
        f"({document['wall_s_per_shard_stage']:.2f} s per shard stage)\n"
        + table(["task", "median s", "total s"], rows)
    )


def main(smoke: bool = False, folder: Path | None = None, shards: int = 50) -> dict[str, Any]:
    """
    Run the suite, print its table and write ``orchestration.json``.

    :param smoke: one spec, one design, one shard.
    :param folder: where to write the JSON.
    :param shards: shards of the full run (at most 51: three example specs of 17 designs).
    """
    document = run(shards=1, designs_per_spec=1, include="*/1*.yaml") if smoke else run(shards=shards)
    write_result("orchestration", document, folder)
    print(report(document))
    return document


if __name__ == "__main__":
    main("--smoke" in sys.argv, shards=int(os.environ.get("BENCH_ORCHESTRATION_SHARDS", "50")))

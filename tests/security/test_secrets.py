"""
AWS secrets from the environment and from Airflow's connection never reach task logs, XCom, the
metadata database, S3 (work.json, _manifest.json, run.json, reports) or the jobs' logs.

A dry run and one small real run with real Airflow (dag.test), the SageMaker emulator, S3 and
CloudWatch Logs on moto server; BoltzGen itself is the simulator (it needs a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.airflow, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[2]
RUN_DAG = PROJECT / "tests" / "dags" / "run_dag.py"
BUCKET = "bg-secrets"
CANARY = "seccanary"  # the campaign name: it must show up wherever the search looks
SECRETS = {
    "env secret key": "EnvSecretKey-9f2c1e7a5b3d",
    "env session token": "EnvSessionToken-4a8e2d6c0b1f",
    "connection password": "ConnPassword-7d3b9a1e5c2f",
    "connection session token": "ConnSessionToken-2e6a0c4d8b7f",
}
CAMPAIGN = f"""\
name: {CANARY}
retries: 0
aws:
  bucket: {BUCKET}
  prefix: sec
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {PROJECT / "include" / "specs"}
  include: "vanilla_protein/*.yaml"
  num_designs: 1
  budget: 1
  diffusion_batch_size: 1
scaling:
  preset: small
sharding:
  target_hours: 0.01
"""


@pytest.fixture(scope="module")
def env(local_stack: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    campaigns = tmp_path_factory.mktemp("campaigns")
    (campaigns / "secrets.yaml").write_text(CAMPAIGN)
    stack_env = local_stack.env()
    connection = json.loads(stack_env["AIRFLOW_CONN_AWS_DEFAULT"])
    connection["password"] = SECRETS["connection password"]
    connection["extra"]["aws_session_token"] = SECRETS["connection session token"]
    return {
        **os.environ,
        **stack_env,
        "AWS_SECRET_ACCESS_KEY": SECRETS["env secret key"],
        "AWS_SESSION_TOKEN": SECRETS["env session token"],
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
        "BOLTZGEN_CHECK_INTERVAL": "1",
    }


def run(env: dict[str, str], conf: dict[str, Any]) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, str(RUN_DAG), "test", f"boltzgen_{CANARY}", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"run_dag.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT ") :]), proc.stdout + proc.stderr


def files_under(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield str(path), path.read_bytes()


def bucket_objects(stack: Any) -> Iterator[tuple[str, bytes]]:
    client = stack.client("s3")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            yield f"s3://{BUCKET}/{item['Key']}", body


def log_events(stack: Any) -> Iterator[tuple[str, bytes]]:
    logs = stack.client("logs")
    for group in logs.describe_log_groups()["logGroups"]:
        name = group["logGroupName"]
        for stream in logs.describe_log_streams(logGroupName=name)["logStreams"]:
            events = logs.get_log_events(logGroupName=name, logStreamName=stream["logStreamName"])["events"]
            yield f"logs:{name}/{stream['logStreamName']}", "\n".join(e["message"] for e in events).encode()


def leaks(sources: list[tuple[str, bytes]]) -> list[str]:
    return [
        f"{what} in {where}"
        for where, data in sources
        for what, value in SECRETS.items()
        if value.encode() in data
    ]


def test_no_secret_in_logs_xcom_database_s3_or_job_logs(env: dict[str, str], local_stack: Any) -> None:
    dry, dry_output = run(env, {"dry_run": True})
    assert dry["state"] == "success", dry["tis"]
    real, real_output = run(env, {})
    assert real["state"] == "success", real["tis"]

    home = Path(os.environ["AIRFLOW_HOME"])
    airflow_files = list(files_under(home))
    objects = list(bucket_objects(local_stack))
    job_logs = list(log_events(local_stack))
    stack_files = list(files_under(Path(local_stack.state_dir)))
    output = [("run_dag.py output (task logs of dag.test)", (dry_output + real_output).encode())]
    xcom = [("xcom", json.dumps([dry["xcoms"], real["xcoms"]]).encode())]

    # The search reads what it should: the campaign's name is in each place that records the run.
    keys = [where for where, _ in objects]
    for name in ("work.json", "_manifest.json", "run.json", "report/"):
        assert any(name in key for key in keys), f"no {name} in the bucket"
    assert any(CANARY.encode() in data for where, data in airflow_files if where.endswith(".db"))
    assert any(CANARY.encode() in data for _, data in objects)
    assert CANARY.encode() in xcom[0][1] and CANARY.encode() in output[0][1]
    assert job_logs, "no job wrote CloudWatch logs"

    found = leaks(airflow_files + objects + job_logs + stack_files + output + xcom)
    assert found == []

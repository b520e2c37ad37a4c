"""The amazon provider's own SageMakerProcessingOperator against the emulator, inside ``dag.test()``.

``dag.test()`` needs the DAG file inside the configured DAGs folder and a migrated database, so the DAG
is written to a tmp DAGs folder and run in a subprocess with the stack's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from emulator_helpers import job_request, output_keys, put_script

from sagemaker_emulator.stack import LocalStack

pytestmark = [pytest.mark.stack, pytest.mark.airflow]

DAG_FILE = """
from __future__ import annotations

import json
import sys

import pendulum
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator
from airflow.sdk import DAG

CONFIGS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}

with DAG("emulator_provider_check", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    for task_id, config in CONFIGS.items():
        SageMakerProcessingOperator(
            task_id=task_id,
            config=config,
            aws_conn_id="aws_default",
            wait_for_completion=True,
            check_interval=1,
            max_attempts=120,
            deferrable=task_id.startswith("deferred"),
            action_if_job_exists="fail",
        )

if __name__ == "__main__":
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("TASK_STATES=" + json.dumps(states))
"""


def test_provider_operator_sync_and_deferrable(
    stack: LocalStack, sm: Any, s3: Any, tmp_path: Path, airflow_db: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    code = put_script(s3, f"airflow-{run}", "print('processing inside airflow')\n")
    sleeper = put_script(s3, f"airflow-sleep-{run}", "import time; time.sleep(60)\n")
    names = {
        "sync_ok": f"af-sync-{run}",
        "deferred_ok": f"af-deferred-{run}",
        "sync_stopped": f"af-stopme-sync-{run}",
        "deferred_stopped": f"af-stopme-deferred-{run}",
    }
    configs = {
        task: job_request(name, sleeper if "stopped" in task else code) for task, name in names.items()
    }
    stack.set_faults([{"pattern": f"af-stopme-*-{run}", "action": "stop", "seconds": 1}])

    dags = tmp_path / "dags"
    dags.mkdir()
    dag_file = dags / "emulator_provider_check.py"
    dag_file.write_text(textwrap.dedent(DAG_FILE))
    env = {**os.environ, **stack.env(), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    env.pop("AWS_SESSION_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, str(dag_file), json.dumps(configs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TASK_STATES=")]
    assert lines, f"dag.test() did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    states = json.loads(lines[-1].split("=", 1)[1])

    assert states["sync_ok"] == "success"
    assert states["deferred_ok"] == "success"
    for task in ("sync_ok", "deferred_ok"):
        desc = sm.describe_processing_job(ProcessingJobName=names[task])
        assert desc["ProcessingJobStatus"] == "Completed"
    # The provider's synchronous wait treats a Stopped job as success; the deferrable trigger fails it.
    for task in ("sync_stopped", "deferred_stopped"):
        assert sm.describe_processing_job(ProcessingJobName=names[task])["ProcessingJobStatus"] == "Stopped"
    assert states["sync_stopped"] == "success"
    assert states["deferred_stopped"] == "failed"
    assert output_keys(s3, names["sync_stopped"]) == []

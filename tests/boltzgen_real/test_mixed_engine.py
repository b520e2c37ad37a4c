"""The mixed engine end to end: the demo campaign's protein specs ranked by the real BoltzGen.

Real Airflow (``dag.test``) runs the campaign DAG against the local stack started with
``mixed=True``: the SageMaker emulator runs the GPU stages (no GPU here) on the BoltzGen
simulator and the analysis and filtering jobs on the real ``boltzgen`` 0.3.2 of ``BOLTZGEN_VENV``
(real metrics computed from the simulated structures and folding npz, real aggregation, ranking
and selection), with the stand-in molecule directory the stack builds in the jobs' Hugging Face
cache.
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
from conftest import PROJECT

pytestmark = [pytest.mark.boltzgen, pytest.mark.stack, pytest.mark.airflow]

BUCKET = "bg-mixed"
DAG_ID = "boltzgen_mixed"
RUN_DAG = PROJECT / "tests" / "dags" / "run_dag.py"
SIMULATED = "(simulated by boltzgen-sim)"


@pytest.fixture(scope="module")
def mixed_stack(tmp_path_factory: pytest.TempPathFactory, boltzgen_venv: Path) -> Iterator[Any]:
    from sagemaker_emulator.stack import LocalStack, free_ports

    state = tmp_path_factory.mktemp("mixed-stack")
    stack = LocalStack(state, *free_ports(2), simulated=True, mixed=True, buckets=[BUCKET])
    stack.start(timeout=180)
    try:
        yield stack
    finally:
        stack.stop()


def _campaign(folder: Path) -> Path:
    """The mixed demo's campaign (``demo_protein.yaml``), renamed, in this test's bucket."""
    text = (PROJECT / "include/configs/campaigns/demo_protein.yaml").read_text()
    text = text.replace("name: demo_protein", "name: mixed")
    text = text.replace("../../specs", str(PROJECT / "include" / "specs"))
    path = folder / "mixed.yaml"
    path.write_text(text)
    return path


def _manifests(stack: Any, stage: str) -> list[dict[str, Any]]:
    s3 = stack.client("s3")
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            key = item["Key"]
            if f"/{stage}/" in key and key.endswith("manifest.json"):
                found.append(json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    return found


@pytest.mark.timeout(1800)
def test_mixed_engine_scores_and_ranks_simulated_designs_with_real_boltzgen(
    mixed_stack: Any, airflow_db: Path, tmp_path: Path, boltzgen_venv: Path
) -> None:
    env = {
        **os.environ,
        **mixed_stack.env(),
        "BOLTZGEN_CAMPAIGNS_DIR": str(_campaign(tmp_path).parent),
        "BOLTZGEN_CHECK_INTERVAL": "1",
        "BOLTZGEN_BUCKET": BUCKET,
    }
    # Two designs per spec keep real analysis (about half a minute of CPU per design) to a few minutes;
    # a budget of one has real filtering choose between them.
    conf = {"num_designs": 2, "budget": 1}
    proc = subprocess.run(
        [sys.executable, str(RUN_DAG), "test", DAG_ID, json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["state"] == "success", result["tis"]
    cpu = _manifests(mixed_stack, "analysis") + _manifests(mixed_stack, "filtering")
    assert {m["stage"] for m in cpu} == {"analysis", "filtering"}, cpu
    assert all(m["boltzgen_version"] == "0.3.2" for m in cpu), cpu
    gpu = [m for s in ("design", "inverse_folding", "folding") for m in _manifests(mixed_stack, s)]
    assert gpu and all(m["boltzgen_version"].endswith(SIMULATED) for m in gpu), gpu
    # Real analysis scored every folded design, and real filtering selected from them.
    folded = {i for m in _manifests(mixed_stack, "folding") for i in m["design_ids"]}
    analysed = {i for m in _manifests(mixed_stack, "analysis") for i in m["design_ids"]}
    assert analysed == folded
    selected = [i for m in _manifests(mixed_stack, "filtering") for i in m["design_ids"]]
    assert len(selected) == len(_manifests(mixed_stack, "filtering")) and set(selected) <= analysed

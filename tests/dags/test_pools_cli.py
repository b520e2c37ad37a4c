"""`boltzgen-airflow pools`: the pools a folder of campaigns needs, created in a real metadata database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow]

PROJECT = Path(__file__).resolve().parents[2]
CAMPAIGNS = PROJECT / "include" / "configs" / "campaigns"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boltzgen_airflow.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
        timeout=300,
    )


def test_pools_are_listed_then_created_with_deferred_tasks_counted(airflow_db: Path) -> None:
    listed = _cli("pools", str(CAMPAIGNS))
    assert listed.returncode == 0, listed.stderr
    # The realistic campaign runs GPU stages on ml.g5.12xlarge, ten jobs at a time.
    assert "sagemaker_ml_g5_12xlarge: 10 slots (include deferred), needed" in listed.stdout

    created = _cli("pools", "--create", str(CAMPAIGNS))
    assert created.returncode == 0, created.stderr
    pools = subprocess.run(
        [sys.executable, "-m", "airflow", "pools", "list", "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=True,
        timeout=300,
    )
    by_name = {p["pool"]: p for p in json.loads(pools.stdout)}
    wanted = {line.split(":")[0]: int(line.split(": ")[1].split()[0]) for line in listed.stdout.splitlines()}
    for name, slots in wanted.items():
        assert int(by_name[name]["slots"]) == slots
        assert str(by_name[name]["include_deferred"]).lower() == "true"

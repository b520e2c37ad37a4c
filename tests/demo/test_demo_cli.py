"""The demo's command line and make targets, without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from boltzgen_demo.s3_copy import run_manifests
from boltzgen_demo.summary import find_final_designs

PROJECT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "boltzgen_demo", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=PROJECT)  # fmt: skip


def test_help_lists_the_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("demo", "up", "down", "status"):
        assert command in proc.stdout
    demo = run("demo", "--help")
    assert demo.returncode == 0 and "--fresh" in demo.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conf", "{not json"], "--conf is not JSON"),
        (["--conf", "[1]"], "--conf must be a JSON object"),
        (["--campaign", "no/such/campaign.yaml"], "campaign file no/such/campaign.yaml not found"),
    ],
)
def test_bad_demo_arguments_are_refused_before_anything_starts(args: list[str], message: str) -> None:
    proc = run("demo", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_make_targets_call_the_runner() -> None:
    proc = subprocess.run(["make", "-n", "demo", "up", "down"], capture_output=True, text=True, cwd=PROJECT,
                          check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "-m boltzgen_demo demo" in proc.stdout
    assert "-m boltzgen_demo up" in proc.stdout
    assert "-m boltzgen_demo down" in proc.stdout


def test_run_manifests_are_found_by_campaign() -> None:
    keys = [
        "boltzgen/campaigns/demo/runs/manual__1/run.json",
        "boltzgen/campaigns/demo/runs/manual__1/report/index.html",
        "boltzgen/campaigns/other/runs/manual__2/run.json",
        "x/y/campaigns/demo/runs/manual__3/run.json",
    ]
    assert run_manifests(keys, "demo") == {
        "manual__1": "boltzgen/campaigns/demo/runs/manual__1/run.json",
        "manual__3": "x/y/campaigns/demo/runs/manual__3/run.json",
    }


def test_find_final_designs_ignores_other_csvs(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "final_ranked_designs"
    folder.mkdir(parents=True)
    (folder / "all_designs_metrics.csv").write_text("id\nx\n")
    assert find_final_designs(tmp_path) == []

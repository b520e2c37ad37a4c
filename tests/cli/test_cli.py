from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from boltzgen_airflow.cli import main

PROJECT = Path(__file__).resolve().parents[2]
DEMO = PROJECT / "include/configs/campaigns/demo.yaml"
SCRIPT = Path(sys.executable).parent / "boltzgen-airflow"


def test_validate_ok_and_errors(write_campaign, capsys):
    assert main(["validate", str(PROJECT / "include/configs/campaigns")]) == 0
    assert "ok (boltzgen_demo)" in capsys.readouterr().out
    bad = write_campaign({"aws": {"bucket": "Bad_Bucket"}, "retries": 99}, name="bad.yaml")
    assert main(["validate", str(DEMO), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: aws.bucket: invalid S3 bucket name" in out
    assert f"{bad}: retries:" in out


def test_validate_reports_spec_errors(write_campaign, capsys):
    path = write_campaign()
    (path.parent / "specs" / "a.yaml").write_text("entities:\n  - file: {path: gone.cif}\n")
    assert main(["validate", str(path)]) == 1
    assert "a.yaml: entities[0].file.path: 'gone.cif' not found" in capsys.readouterr().out


def test_specs_json(shared_examples, capsys):
    assert main(["specs", str(shared_examples), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    specs = {s["spec"]: s for s in doc["specs"]}
    assert len(specs) == 51
    assert specs["vanilla_protein/1g13prot.yaml"]["files"] == ["vanilla_protein/1g13.cif"]
    assert specs["design_spec_showcasing_all_functionalities.yaml"]["errors"]
    assert main(["specs", str(PROJECT / "include/specs")]) == 0


def test_plan_json_with_overrides(capsys):
    assert (
        main(["plan", str(DEMO), "--json", "--set", "design.num_designs=12", "--set", "design.budget=3"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    counts = {}
    for shard in doc["shards"]:
        assert shard["id"].startswith("s")
        for item in shard["items"]:
            counts[item["spec"]] = counts.get(item["spec"], 0) + item["count"]
    assert set(counts.values()) == {12}
    assert set(doc["estimate"]) >= {"makespan_hours", "lower_bound_hours", "gpu_hours", "cost_usd"}


def test_plan_names_a_bad_override(capsys):
    assert main(["plan", str(DEMO), "--set", "design.num_designz=3"]) == 1
    assert "design.num_designz: unknown setting" in capsys.readouterr().out
    assert main(["plan", str(DEMO)]) == 0
    assert "total: makespan" in capsys.readouterr().out


def test_plan_refuses_a_campaign_estimated_above_its_spend_cap(capsys):
    assert main(["plan", str(DEMO), "--set", "design.max_cost_usd=0.01"]) == 1
    out = capsys.readouterr().out
    assert f"{DEMO}: design.max_cost_usd: the run is estimated at $" in out
    assert "more than the $0.01 left of max_cost_usd $0.01 ($0.00 spent by earlier rounds)" in out
    assert main(["plan", str(DEMO), "--set", "design.max_cost_usd=100000"]) == 0


def test_console_script():
    result = subprocess.run(
        [str(SCRIPT), "plan", str(DEMO), "--json"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shards"]
    result = subprocess.run(
        [str(SCRIPT), "validate", "/nonexistent/campaign.yaml"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "cannot read campaign file" in result.stdout


def _option_rows(out: str) -> dict[str, tuple[bool, float, float]]:
    rows = {}
    for line in out.splitlines()[1:]:
        if "  ml." not in line:
            continue
        marked, label = line.startswith("*"), line[2:46].strip()
        makespan, cost = line.split()[-2:]
        rows[label] = (marked, float(makespan), float(cost.replace(",", "")))
    return rows


def test_plan_deadline_marks_the_cheapest_option_that_ends_in_time(capsys):
    assert main(["plan", str(DEMO), "--deadline", "90m", "--gpu-types", "ml.g6e.xlarge"]) == 0
    rows = _option_rows(capsys.readouterr().out)
    assert {"campaign as written", "preset=small", "preset=xlarge gpu=ml.g6e.xlarge"} <= set(rows)
    (best,) = [label for label, (marked, _, _) in rows.items() if marked]
    in_time = {label: cost for label, (_, makespan, cost) in rows.items() if makespan <= 1.5}
    assert best in in_time and in_time[best] == min(in_time.values())
    assert rows["preset=small"][1] > 1.5  # one GPU is too slow for the deadline


def test_plan_budget_marks_the_fastest_option_within_it_or_says_none_fits(capsys):
    assert main(["plan", str(DEMO), "--budget", "5", "--presets", "small,medium"]) == 0
    rows = _option_rows(capsys.readouterr().out)
    (best,) = [label for label, (marked, _, _) in rows.items() if marked]
    within = {label: makespan for label, (_, makespan, cost) in rows.items() if cost <= 5}
    assert within[best] == min(within.values())
    assert main(["plan", str(DEMO), "--budget", "0.01"]) == 1
    assert "no option has a cost within $0.01" in capsys.readouterr().out


def test_plan_refuses_a_bad_deadline_or_gpu_type(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["plan", str(DEMO), "--deadline", "soon"])
    assert stop.value.code == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err
    assert main(["plan", str(DEMO), "--deadline", "2d", "--gpu-types", "ml.z9.huge"]) == 1
    assert "scaling.design.instance_type" in capsys.readouterr().out

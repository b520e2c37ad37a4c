from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

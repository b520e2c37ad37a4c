"""Pure helpers of the stage scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SCRIPTS

sys.path.insert(0, str(SCRIPTS))
import stepcommon as sc


def test_lpt_balances_by_estimated_seconds() -> None:
    items = [{"spec": "s", "start": i, "est_seconds": est} for i, est in enumerate([9, 7, 6, 5, 4, 3])]
    plan = sc.lpt_assign(items, 2)
    loads = sorted(sum(it["est_seconds"] for it in queue) for queue in plan)
    assert loads == [17, 17]


def test_set_top_level_keys_replaces_nested_values() -> None:
    text = yaml.safe_dump(
        {
            "budget": 30,
            "metrics_override": {"a": 1, "b": None},
            "additional_filters": [{"feature": "x", "threshold": 1}],
            "alpha": 0.001,
        },
        default_flow_style=False,
        sort_keys=False,
    )
    new = sc.set_top_level_keys(text, {"metrics_override": {"c": 2.0}, "additional_filters": [], "budget": 5})
    assert yaml.safe_load(new) == {
        "alpha": 0.001,
        "metrics_override": {"c": 2.0},
        "additional_filters": [],
        "budget": 5,
    }


def test_rewrite_configs_moves_whole_paths_only(tmp_path: Path) -> None:
    config = tmp_path / "config" / "analysis.yaml"
    config.parent.mkdir()
    config.write_text("design_dir: /old/result/a/x\nother: /old/result-b/y\n")
    sc.rewrite_configs(tmp_path, {"/old/result": "/new/r"})
    assert config.read_text() == "design_dir: /new/r/a/x\nother: /old/result-b/y\n"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stage": "folding"}, "stage"),
        ({"protocol": "x"}, "protocol"),
        ({"max_runtime_seconds": 0}, "max_runtime_seconds"),
    ],
)
def test_load_work_names_the_bad_field(tmp_path: Path, change: dict, field: str) -> None:
    work = {
        "schema": 1,
        "stage": "design",
        "protocol": "protein-anything",
        "max_runtime_seconds": 60,
        "items": [{"spec": "b/x.yaml", "spec_name": "x.yaml", "start": 0, "count": 1, "width": 1}],
    }
    path = tmp_path / "work.json"
    path.write_text(json.dumps({**work, **change}))
    with pytest.raises(sc.StepError, match=field):
        sc.load_work(path, "design")


def test_spec_stem_ending_in_digits_is_refused(tmp_path: Path) -> None:
    work = {
        "schema": 1,
        "stage": "design",
        "protocol": "protein-anything",
        "max_runtime_seconds": 60,
        "items": [
            {"spec": "b/binder_2.yaml", "spec_name": "binder_2.yaml", "start": 0, "count": 1, "width": 1}
        ],
    }
    path = tmp_path / "work.json"
    path.write_text(json.dumps(work))
    with pytest.raises(sc.StepError, match="binder_2"):
        sc.load_work(path, "design")

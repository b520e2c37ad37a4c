"""Broken campaign files whose names would clash with a valid campaign or exceed Airflow's dag id limit."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
GOOD: dict[str, Any] = {
    "name": "good",
    "aws": {
        "bucket": "my-bucket",
        "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
        "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
    },
    "design": {"specs": "specs", "num_designs": 20, "budget": 5},
}


def parse(monkeypatch: pytest.MonkeyPatch, folder: Path) -> dict[str, Any]:
    from airflow.sdk import DAG

    monkeypatch.setenv("BOLTZGEN_CAMPAIGNS_DIR", str(folder))
    namespace = runpy.run_path(str(PROJECT / "dags" / "boltzgen_campaigns.py"))
    return {v.dag_id: v for v in namespace.values() if isinstance(v, DAG)}


def test_a_broken_file_named_after_a_campaign_does_not_take_its_dag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "good.yaml").write_text("name: [unclosed\n")  # sorts first, stem = the campaign's id
    (tmp_path / "zz_campaign.yaml").write_text(yaml.safe_dump(GOOD))
    dags = parse(monkeypatch, tmp_path)
    assert "invalid" not in dags["boltzgen_good"].tags
    assert str(tmp_path / "good.yaml") in (dags["boltzgen_good_invalid"].doc_md or "")


def test_long_broken_names_do_not_hide_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(GOOD))
    names = ["a" * 240 + ".yaml", "a" * 240 + "\u00e9.yaml", "a" * 240 + "\u00e8.yaml", "b" * 250 + ".yaml"]
    for name in names:
        (tmp_path / name).write_text("name: [unclosed\n")
    dags = parse(monkeypatch, tmp_path)
    assert "invalid" not in dags["boltzgen_good"].tags
    broken = [d for d in dags.values() if "invalid" in d.tags]
    assert len(broken) == len(names) and all(len(d.dag_id) <= 250 for d in broken)
    for name in names:
        assert sum(f"`{tmp_path / name}`" in (d.doc_md or "") for d in broken) == 1

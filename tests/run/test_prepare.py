"""Specs kept under an ``s3://`` prefix are discovered, staged and sharded by the plan like local ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.s3_specs import FILES, PEPTIDES, SPEC_PREFIX, SPECS, VANILLA, ZINC, campaign, upload

from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.run.prepare import plan_run
from boltzgen_airflow.storage.layout import Layout


def plan(client: Any, bucket: str, run_id: str) -> dict[str, Any]:
    """The plan as the JSON documents kept in XCom (``plan_info``) and S3 (the shard descriptors)."""
    options, updated = validate_run_params(campaign(bucket), {})
    planned = plan_run(client, updated, options, run_id)
    return {**planned.info_json(), "shards": [s.to_json() for s in planned.shards]}


def keys(client: Any, bucket: str, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix) :] for page in pages for item in page.get("Contents", [])}


def stage_keys(result: dict[str, Any], spec: str) -> dict[str, dict[str, str]]:
    """Shard id -> stage -> cache key, for the shards of one spec."""
    shards = {s["shard"]: s for s in result["shards"]}
    return {
        shard: {stage: info["key"] for stage, info in shards[shard]["stages"].items()}
        for shard in result["specs"][spec]["shards"]
    }


def test_specs_under_an_s3_prefix_are_planned_and_a_new_spec_leaves_the_others_cached(
    s3: tuple[Any, str],
) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA], PEPTIDES, *FILES[PEPTIDES])
    layout = Layout(bucket, "runs")

    first = plan(client, bucket, "manual__2026-01-01T00:00:00+00:00")

    assert set(first["specs"]) == {VANILLA, PEPTIDES}
    for spec, info in first["specs"].items():
        assert info["files"] == [spec, *FILES[spec]]
        # Staged under inputs/<bundle hash>/ with the layout relative to the specs prefix, byte for byte.
        staged = layout.bundle_prefix(info["bundle"])
        assert keys(client, bucket, staged) == set(info["files"])
        for rel in info["files"]:
            body = client.get_object(Bucket=bucket, Key=staged + rel)["Body"].read()
            assert body == (SPECS / rel).read_bytes()
        assert info["shards"]
    assert {s for shard in first["shards"] for s in shard["specs"]} == {VANILLA, PEPTIDES}
    work_root = first["run_prefix"] + "work/"
    written = keys(client, bucket, work_root)
    for shard in first["shards"]:
        for stage, info in shard["stages"].items():
            assert info["work_prefix"] == f"{work_root}{stage}/{shard['shard']}/"
            assert f"{stage}/{shard['shard']}/work.json" in written
        spec_items = [i["spec"] for i in shard["items"]]
        assert spec_items == [
            f"{first['specs'][i['spec_name']]['bundle']}/{i['spec_name']}" for i in shard["items"]
        ]
    assert len(written) == sum(len(s["stages"]) for s in first["shards"])

    upload(client, bucket, ZINC, *FILES[ZINC])
    second = plan(client, bucket, "manual__2026-01-02T00:00:00+00:00")

    assert set(second["specs"]) == {VANILLA, PEPTIDES, ZINC}
    new_shards = set(second["specs"][ZINC]["shards"])
    assert new_shards and len(second["shards"]) == len(first["shards"]) + len(new_shards)
    assert keys(client, bucket, layout.bundle_prefix(second["specs"][ZINC]["bundle"])) == {ZINC, *FILES[ZINC]}
    for spec in (VANILLA, PEPTIDES):
        assert second["specs"][spec]["bundle"] == first["specs"][spec]["bundle"]
        # Same stage keys: the old specs' shards would find their commits and not run again.
        assert sorted(stage_keys(second, spec).values(), key=str) == sorted(
            stage_keys(first, spec).values(), key=str
        )
    assert second["run_prefix"] != first["run_prefix"]


def test_a_spec_whose_file_is_missing_from_the_prefix_fails_the_plan(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, PEPTIDES, *FILES[PEPTIDES])

    with pytest.raises(CampaignError) as err:
        plan(client, bucket, "manual__2026-01-01T00:00:00+00:00")

    message = str(err.value)
    assert VANILLA in message and "1g13.cif" in message and "not found" in message
    assert PEPTIDES not in message
    assert keys(client, bucket, "runs/") == set()


def test_plan_reads_only_the_named_prefix(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    upload(client, bucket, PEPTIDES)
    # A sibling prefix that merely starts with the same characters is another folder.
    client.put_object(Bucket=bucket, Key=f"{SPEC_PREFIX}-old/{VANILLA}", Body=(SPECS / VANILLA).read_bytes())

    result = plan(client, bucket, "manual__2026-01-01T00:00:00+00:00")

    assert set(result["specs"]) == {PEPTIDES}

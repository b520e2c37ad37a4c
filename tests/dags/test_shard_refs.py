"""The shards are mapped over small references; each task reads its own descriptor from S3."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_s3_specs import FILES, PEPTIDES, VANILLA, ZINC, campaign, plan, upload

from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.run.prepare import SHARD_REF_FIELDS, load_shard, load_shards, publish_shards
from boltzgen_airflow.sagemaker.hooks import s3_client
from boltzgen_airflow.sagemaker.operators import shard_descriptor
from boltzgen_airflow.storage.layout import Layout

RUN = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture
def planned(s3: tuple[Any, str]) -> tuple[Any, str, dict[str, Any], list[dict[str, Any]]]:
    client, bucket = s3
    for spec in (VANILLA, PEPTIDES, ZINC):
        upload(client, bucket, spec, *FILES[spec])
    result = plan(client, bucket, RUN)
    shards = result.pop("shards")
    refs = publish_shards(client, campaign(bucket), RUN, shards)
    return client, bucket, result, refs


def test_the_map_input_is_references_whose_size_does_not_grow_with_the_work(
    planned: tuple[Any, str, dict[str, Any], list[dict[str, Any]]],
) -> None:
    client, bucket, _, refs = planned
    full = load_shards(client, campaign(bucket), RUN, refs)
    assert len(refs) == len(full) >= 3
    assert all(set(ref) == set(SHARD_REF_FIELDS) for ref in refs)
    assert [ref["shard"] for ref in refs] == [d["shard"] for d in full]
    # A reference does not repeat the work items, stage keys and resources a descriptor holds.
    assert max(len(json.dumps(r)) for r in refs) < 200 < min(len(json.dumps(d)) for d in full)
    layout = Layout(bucket, "runs")
    assert refs[0]["descriptor"] == layout.shard_key("s3specs", RUN, refs[0]["shard"])


def test_each_reference_loads_its_own_descriptor_as_planned(
    planned: tuple[Any, str, dict[str, Any], list[dict[str, Any]]],
) -> None:
    client, bucket, _, refs = planned
    full = {d["shard"]: d for d in load_shards(client, campaign(bucket), RUN, refs)}
    for ref in refs:
        descriptor = load_shard(client, ref)
        assert descriptor == full[ref["shard"]]
        assert set(descriptor["stages"]) >= {"design", "folding", "analysis"}
    # A descriptor passed in place of a reference is used as it is.
    first = full[refs[0]["shard"]]
    assert load_shard(client, first) == first
    assert load_shards(client, campaign(bucket), RUN, list(full.values())) == list(full.values())


def test_a_missing_or_foreign_descriptor_fails_naming_the_object(
    planned: tuple[Any, str, dict[str, Any], list[dict[str, Any]]],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, bucket, _, refs = planned
    gone = {**refs[0], "descriptor": refs[0]["descriptor"].replace(".json", "x.json")}
    with pytest.raises(CampaignError, match=r"s3://.*x\.json.*not found"):
        load_shard(client, gone)
    foreign = {**refs[0], "descriptor": refs[1]["descriptor"]}
    with pytest.raises(CampaignError, match=f"holds shard '{refs[1]['shard']}', not '{refs[0]['shard']}'"):
        load_shard(client, foreign)
    # In a task the error fails the try for good: another try would read the same object.
    from airflow.providers.common.compat.sdk import AirflowFailException

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_endpoint},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BG_MOTO", json.dumps(connection))
    task_client = s3_client("bg_moto", "us-east-1")
    assert shard_descriptor(refs[1], task_client) == load_shard(client, refs[1])
    client.delete_object(Bucket=bucket, Key=refs[0]["descriptor"])
    with pytest.raises(AirflowFailException, match="not found"):
        shard_descriptor(refs[0], task_client)

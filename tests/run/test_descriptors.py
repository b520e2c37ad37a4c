"""The shards are mapped over small references; each task reads its own descriptor from S3."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.s3_specs import FILES, PEPTIDES, VANILLA, ZINC, campaign, upload

from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import RunStateError
from boltzgen_airflow.run.descriptors import REF_FIELDS, DescriptorRef, ShardDescriptor
from boltzgen_airflow.run.prepare import load_shard, load_shards, plan_run, publish_shards
from boltzgen_airflow.sagemaker.hooks import s3_client
from boltzgen_airflow.sagemaker.operators import shard_descriptor
from boltzgen_airflow.storage.layout import Layout

RUN = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture
def planned(s3: tuple[Any, str]) -> tuple[Any, str, dict[str, Any], list[DescriptorRef]]:
    client, bucket = s3
    for spec in (VANILLA, PEPTIDES, ZINC):
        upload(client, bucket, spec, *FILES[spec])
    options, updated = validate_run_params(campaign(bucket), {})
    result = plan_run(client, updated, options, RUN)
    refs = publish_shards(client, campaign(bucket), RUN, result.shards)
    return client, bucket, result.info_json(), refs


def test_the_map_input_is_references_whose_size_does_not_grow_with_the_work(
    planned: tuple[Any, str, dict[str, Any], list[DescriptorRef]],
) -> None:
    client, bucket, _, refs = planned
    full = load_shards(client, campaign(bucket), RUN, refs)
    assert len(refs) == len(full) >= 3
    assert all(set(ref.to_json()) == set(REF_FIELDS) for ref in refs)
    assert [ref.shard for ref in refs] == [d.shard for d in full]
    # A reference does not repeat the work items, stage keys and resources a descriptor holds.
    assert (
        max(len(json.dumps(r.to_json())) for r in refs)
        < 200
        < min(len(json.dumps(d.to_json())) for d in full)
    )
    layout = Layout(bucket, "runs")
    assert refs[0].descriptor == layout.shard_key("s3specs", RUN, refs[0].shard)


def test_each_reference_loads_its_own_descriptor_as_planned(
    planned: tuple[Any, str, dict[str, Any], list[DescriptorRef]],
) -> None:
    client, bucket, _, refs = planned
    full = {d.shard: d for d in load_shards(client, campaign(bucket), RUN, refs)}
    for ref in refs:
        descriptor = load_shard(client, ref)
        assert descriptor == full[ref.shard]
        assert set(descriptor.stages) >= {"design", "folding", "analysis"}
    # One JSON round trip: a descriptor's document reads back as the same descriptor.
    first = full[refs[0].shard]
    assert ShardDescriptor.from_json(json.loads(json.dumps(first.to_json()))) == first
    assert DescriptorRef.from_json(refs[0].to_json()) == refs[0]


def test_a_missing_or_foreign_descriptor_fails_naming_the_object(
    planned: tuple[Any, str, dict[str, Any], list[DescriptorRef]],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, bucket, _, refs = planned
    gone = DescriptorRef(refs[0].shard, refs[0].bucket, refs[0].descriptor.replace(".json", "x.json"))
    with pytest.raises(RunStateError, match=r"s3://.*x\.json.*not found"):
        load_shard(client, gone)
    foreign = DescriptorRef(refs[0].shard, refs[0].bucket, refs[1].descriptor)
    with pytest.raises(RunStateError, match=f"holds shard '{refs[1].shard}', not '{refs[0].shard}'"):
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
    assert shard_descriptor(refs[1].to_json(), task_client) == load_shard(client, refs[1])
    client.delete_object(Bucket=bucket, Key=refs[0].descriptor)
    with pytest.raises(AirflowFailException, match="not found"):
        shard_descriptor(refs[0].to_json(), task_client)


def test_a_fused_stage_s_work_rides_in_its_host_s_work_file(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA])
    fused = campaign(bucket).with_overrides({"stages.fuse": ["inverse_folding"]})
    options, updated = validate_run_params(fused, {})
    result = plan_run(client, updated, options, RUN)
    shard = result.shards[0]
    host = json.loads(
        client.get_object(Bucket=bucket, Key=shard.stages["design"].work_prefix + "work.json")["Body"].read()
    )
    [entry] = host["fused"]
    assert entry["stage"] == "inverse_folding" and entry["key"] == shard.stages["inverse_folding"].key
    # The fused stage's own work file stays, for a job of its own when its commit is missing.
    own = shard.stages["inverse_folding"].work_prefix + "work.json"
    assert json.loads(client.get_object(Bucket=bucket, Key=own)["Body"].read()) == entry["work"]


def test_packed_filtering_reaches_the_filter_tasks_as_packs_of_references(s3: tuple[Any, str]) -> None:
    from boltzgen_airflow.run.descriptors import RunPlan
    from boltzgen_airflow.run.filtering_inputs import (
        describe_filtering,
        pack_refs,
        publish_filtering,
        unpack_refs,
    )

    client, bucket = s3
    for spec in (VANILLA, PEPTIDES, ZINC):
        upload(client, bucket, spec, *FILES[spec])
    options, updated = validate_run_params(campaign(bucket), {})
    result = plan_run(client, updated, options, RUN)
    packs = (tuple(sorted(result.specs)[:2]), tuple(sorted(result.specs)[2:]))
    plan = RunPlan.from_info_json({**result.info_json(), "filtering_packs": packs}, result.shards)
    assert plan.filtering_packs == packs and plan.info_json()["filtering_packs"] == [list(p) for p in packs]
    described = describe_filtering(updated, options, RUN, plan)
    refs = publish_filtering(client, updated, RUN, described)
    documents = pack_refs(refs, described, plan.filtering_packs)
    assert [len(d.get("pack", [d])) for d in documents] == [2, 1]
    assert unpack_refs(documents) == [r.to_json() for r in refs]
    assert pack_refs(refs, described, ()) == [r.to_json() for r in refs]
    # A later round packs only the specs with new designs: a spec in no pack is still filtered.
    first_two = pack_refs(refs, described, (packs[0],))
    assert first_two == [{"pack": [r.to_json() for r in refs[:2]]}, refs[2].to_json()]


def test_the_deadline_param_plans_the_run_on_the_cheapest_preset_ending_in_time(s3: tuple[Any, str]) -> None:
    from boltzgen_airflow.exceptions import CampaignError

    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA])
    base = campaign(bucket).with_overrides({"design.num_designs": 400, "design.budget": 2})
    options, updated = validate_run_params(base, {})
    written = plan_run(client, updated, options, RUN)
    hours = written.estimate["makespan_hours"]
    # A deadline shorter than the campaign as written moves the run to a faster preset.
    options, updated = validate_run_params(base, {"deadline_hours": hours * 0.9})
    faster = plan_run(client, updated, options, RUN)
    assert faster.estimate["makespan_hours"] <= hours * 0.9
    assert faster.shards[0].stages["design"].resources.instance_type != "ml.g5.xlarge"
    # What no preset can meet fails the plan naming the param.
    options, updated = validate_run_params(base, {"deadline_hours": 0.01})
    with pytest.raises(CampaignError, match=r"params\.deadline_hours: no preset"):
        plan_run(client, updated, options, RUN)

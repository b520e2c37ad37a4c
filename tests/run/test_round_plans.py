"""Rounds and the spend cap before any job: settings, run params, round sizing, plan refusal, round plans."""

from __future__ import annotations

from typing import Any

import pytest
from support.s3_specs import FILES, PEPTIDES, VANILLA, upload
from support.s3_specs import campaign as s3_campaign

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.run.prepare import plan_run, publish_shards
from boltzgen_airflow.run.rounds import (
    CAP,
    MIN_ROUND_DESIGNS,
    REACHED,
    ROUNDS,
    Ledger,
    RoundRecord,
    read_ledger,
    size_round,
    wanted_designs,
)
from boltzgen_airflow.run.spend import check_plan
from boltzgen_airflow.storage.layout import Layout

RUN1 = "manual__2026-01-01T00:00:00+00:00"


def issues(err: pytest.ExceptionInfo[CampaignError]) -> list[tuple[str, str, str]]:
    return [(i.file, i.path, i.message) for i in err.value.issues]


@pytest.mark.parametrize(
    ("design", "path", "words"),
    [
        ({"until_passing": 0}, "design.until_passing", "greater than or equal to 1"),
        ({"max_rounds": 3}, "design.max_rounds", "needs until_passing"),
        ({"until_passing": 5, "max_rounds": 0}, "design.max_rounds", "greater than or equal to 1"),
        ({"until_passing": 5, "max_rounds": 51}, "design.max_rounds", "less than or equal to 50"),
        ({"max_cost_usd": 0}, "design.max_cost_usd", "greater than 0"),
        ({"max_cost_usd": "lots"}, "design.max_cost_usd", "valid number"),
    ],
)
def test_round_settings_are_validated_naming_file_and_field(
    write_campaign: Any, design: dict[str, Any], path: str, words: str
) -> None:
    file = write_campaign({"design": design})
    with pytest.raises(CampaignError) as err:
        load_campaign(file)
    found = issues(err)
    assert [(f, p) for f, p, _ in found] == [(str(file), path)], found
    assert words in found[0][2]


def test_until_passing_alone_allows_the_default_rounds(write_campaign: Any) -> None:
    campaign = load_campaign(write_campaign({"design": {"until_passing": 96, "max_cost_usd": 500}}))
    assert campaign.design.rounds == 5 and campaign.design.max_cost_usd == 500
    assert load_campaign(write_campaign()).design.rounds == 1


def test_run_params_of_rounds_are_validated(write_campaign: Any) -> None:
    campaign = load_campaign(write_campaign({"design": {"until_passing": 4}}))
    options, updated = validate_run_params(
        campaign,
        {"designs_per_spec": {"a.yaml": 7}, "max_cost_usd": 12.5, "max_rounds": 3},
        {"designs_per_spec": {"a.yaml": 7}, "max_cost_usd": 12.5, "max_rounds": 3},
    )
    assert options.designs_of("a.yaml") == 7 and options.designs_of("b.yaml") == options.num_designs
    assert updated.design.max_cost_usd == 12.5 and updated.design.rounds == 3
    with pytest.raises(CampaignError) as err:
        validate_run_params(
            campaign,
            {"designs_per_spec": {"a.yaml": 0}, "max_cost_usd": -1, "until_passing": True, "round": 2},
        )
    paths = {p for _, p, _ in issues(err)}
    assert paths == {
        "params.designs_per_spec",
        "params.max_cost_usd",
        "params.until_passing",
        "params.campaign_run_id",
    }
    plain = load_campaign(write_campaign())
    with pytest.raises(CampaignError) as err:
        validate_run_params(plain, {"max_rounds": 3})
    assert [(p, "needs until_passing" in m) for _, p, m in issues(err)] == [("params.max_rounds", True)]


def test_a_next_round_is_sized_from_each_spec_pass_rate() -> None:
    assert wanted_designs(10, 10, 4) == 0
    # 2 of 10 pass: 2 more need about 10 designs, with the margin 13.
    assert wanted_designs(10, 2, 4) == 13
    # None passed yet: counted as half a pass, so a hard spec grows with what it made.
    assert wanted_designs(10, 0, 4) == 100
    assert wanted_designs(100, 99, 100) == MIN_ROUND_DESIGNS
    record = RoundRecord(
        1, RUN1, designs={"a": 10, "b": 10, "c": 10}, made={"a": 10, "b": 10, "c": 10},
        passing={"a": 9, "b": 2, "c": 0},
    )  # fmt: skip
    step = size_round(record, until_passing=4, rounds_left=2, budget_left=None, usd_per_design=1.0)
    assert step.designs == {"a": 10, "b": 23, "c": 110} and step.stopped == {"a": REACHED}
    last = size_round(record, until_passing=4, rounds_left=0, budget_left=None, usd_per_design=1.0)
    assert last.designs is None and last.stopped == {"a": REACHED, "b": ROUNDS, "c": ROUNDS}
    # The budget pays for 56 of the 113 designs asked for: each spec gets its share.
    shared = size_round(record, until_passing=4, rounds_left=2, budget_left=56.0, usd_per_design=1.0)
    assert shared.designs == {"a": 10, "b": 16, "c": 59}
    broke = size_round(record, until_passing=4, rounds_left=2, budget_left=3.0, usd_per_design=1.0)
    assert broke.designs is None and broke.stopped["c"] == CAP and broke.reason.startswith("spend cap:")


def test_check_plan_names_estimate_cap_and_spend() -> None:
    check_plan("c.yaml", estimate_usd=4.0, cap_usd=None, spent_usd=100.0)
    check_plan("c.yaml", estimate_usd=4.0, cap_usd=10.0, spent_usd=6.0)
    with pytest.raises(CampaignError) as err:
        check_plan("c.yaml", estimate_usd=4.01, cap_usd=10.0, spent_usd=6.0)
    [(file, path, message)] = issues(err)
    assert (file, path) == ("c.yaml", "design.max_cost_usd")
    assert "$4.01" in message and "$4.00 left" in message and "$10.00" in message and "$6.00 spent" in message


def _plan(client: Any, campaign: Any, run_id: str, params: dict[str, Any]) -> Any:
    options, updated = validate_run_params(campaign, params)
    planned = plan_run(client, updated, options, run_id)
    publish_shards(client, updated, run_id, planned.shards)  # as the plan task does
    return planned


def test_plan_refuses_a_run_estimated_above_the_cap(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA])
    estimate = _plan(client, s3_campaign(bucket), "manual__probe", {"dry_run": True}).estimate["cost_usd"]
    with pytest.raises(CampaignError) as err:
        _plan(client, s3_campaign(bucket, max_cost_usd=estimate * 0.9), RUN1, {})
    assert f"${estimate:.2f}" in issues(err)[0][2]
    # Nothing was published for the refused run.
    layout = Layout(bucket, "runs")
    assert read_ledger(client, layout, "s3specs", RUN1) is None
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=layout.run_prefix("s3specs", RUN1))


def test_a_next_round_keeps_earlier_shards_and_adds_only_new_designs(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA], PEPTIDES, *FILES[PEPTIDES])
    campaign = s3_campaign(bucket, until_passing=3, max_cost_usd=1000.0)
    first = _plan(client, campaign, RUN1, {})
    layout = Layout(bucket, "runs")
    ledger = read_ledger(client, layout, "s3specs", RUN1)
    assert ledger is not None and ledger.rounds[0].designs == {PEPTIDES: 4, VANILLA: 4}
    # Round 2 gives the peptide 6 more designs and the vanilla spec none.
    conf = {"round": 2, "campaign_run_id": RUN1, "designs_per_spec": {PEPTIDES: 10, VANILLA: 4}}
    second = _plan(client, campaign, "round2__" + RUN1, conf)
    old = {s.shard: s for s in first.shards}
    kept = [s for s in second.shards if s.shard in old]
    assert [s.shard for s in kept] == [s.shard for s in first.shards]
    keys = {s.shard: {stage: t.key for stage, t in s.stages.items()} for s in first.shards}
    # Same cache keys: the earlier round's commits are found and no job runs for them.
    assert all({stage: t.key for stage, t in s.stages.items()} == keys[s.shard] for s in kept)
    added = [s for s in second.shards if s.shard not in old]
    items = sorted((i["spec_name"], i["start"], i["count"]) for s in added for i in s.items)
    assert {spec for spec, _, _ in items} == {PEPTIDES}
    assert [d for _, start, count in items for d in range(start, start + count)] == list(range(4, 10))
    assert set(second.specs[VANILLA].shards) == set(first.specs[VANILLA].shards)
    assert all(s.spend_cap is not None and s.spend_cap.cap_usd == 1000.0 for s in second.shards)
    ledger = read_ledger(client, layout, "s3specs", RUN1)
    assert ledger is not None and [r.new for r in ledger.rounds] == [
        {PEPTIDES: 4, VANILLA: 4},
        {PEPTIDES: 6, VANILLA: 0},
    ]


def test_a_round_names_a_campaign_run_that_exists(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    upload(client, bucket, VANILLA, *FILES[VANILLA])
    with pytest.raises(CampaignError) as err:
        _plan(
            client, s3_campaign(bucket, until_passing=3), "round2__x", {"round": 2, "campaign_run_id": "nope"}
        )
    assert issues(err)[0][1] == "params.campaign_run_id" and "'nope'" in issues(err)[0][2]
    with pytest.raises(CampaignError) as err:
        _plan(client, s3_campaign(bucket), RUN1, {"designs_per_spec": {"missing.yaml": 3}})
    assert issues(err)[0][1] == "params.designs_per_spec" and "missing.yaml" in issues(err)[0][2]


def test_the_ledger_round_trips() -> None:
    ledger = Ledger(
        RUN1, 2, (RoundRecord(1, RUN1, {"a": 4}, {"a": 4}, {"a": 1}, {"a": 4}, 0.5, 1.0, "s3://x/"),)
    )
    assert Ledger.from_json(ledger.to_json()) == ledger

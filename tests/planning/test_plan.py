from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support.campaigns import campaign_in

from boltzgen_airflow.campaign.catalog import load_catalog, resolve_resources
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.planning.plan import (
    AUTO_FUSE,
    AUTO_MAKESPAN_TOLERANCE,
    AUTO_TARGET_HOURS,
    MAX_RUNTIME_FRACTION,
    MIN_JOB_PROVISIONINGS,
    OPTION_PRESETS,
    Plan,
    Shard,
    cache_key,
    cheapest_within,
    choose_option,
    compare_options,
    design_id,
    design_width,
    fallback_estimates,
    load_time_model,
    option_overrides,
    plan_campaign,
    stage_params,
)

campaign = campaign_in


def bundles(residues: list[int]) -> list[SpecBundle]:
    return [SpecBundle(spec=f"s/spec{i}.yaml", hash=f"{i:064x}", residues=r) for i, r in enumerate(residues)]


def check_exact_cover(plan, specs, num_designs):
    seen: Counter[tuple[str, int]] = Counter()
    for shard in plan.shards:
        for item in shard.items:
            assert item.count > 0
            for index in range(item.start, item.start + item.count):
                seen[(item.spec, index)] += 1
    expected = {(b.spec, i) for b in specs for i in range(num_designs)}
    assert set(seen) == expected
    assert all(count == 1 for count in seen.values())


def test_design_ids_and_width():
    assert design_width(1) == 1
    assert design_width(10) == 1
    assert design_width(11) == 2
    assert design_width(10000) == 4
    assert design_id("1g13prot", 7, 3) == "1g13prot_007"


def test_demo_plan_splits_every_spec(tmp_path):
    project = Path(__file__).resolve().parents[2]
    from boltzgen_airflow.campaign.loading import load_campaign
    from boltzgen_airflow.campaign.specs import discover_bundles

    demo = load_campaign(project / "include/configs/campaigns/demo.yaml", {})
    specs = discover_bundles(demo.specs_root(), demo.design.include)
    plan = plan_campaign(demo, specs)
    check_exact_cover(plan, specs, demo.design.num_designs)
    for bundle in specs:
        assert len(plan.shards_of(bundle.spec)) >= 2


@settings(max_examples=40, deadline=None)
@given(
    residues=st.lists(st.integers(20, 900), min_size=1, max_size=30),
    num_designs=st.integers(1, 3000),
    target_hours=st.sampled_from([0.05, 0.5, 2.0, 8.0, "auto"]),
    max_shards=st.integers(1, 1000),
    preset=st.sampled_from(["small", "medium", "xlarge"]),
    batch=st.sampled_from([None, 1, 4, 10]),
)
def test_every_design_planned_exactly_once(
    tmp_path_factory, residues, num_designs, target_hours, max_shards, preset, batch
):
    c = campaign(
        tmp_path_factory.mktemp("p"),
        design={"num_designs": num_designs, "budget": 1, "diffusion_batch_size": batch},
        sharding={"target_hours": target_hours, "max_shards": max_shards},
        scaling={"preset": preset},
    )
    specs = bundles(residues)
    plan = plan_campaign(c, specs)
    check_exact_cover(plan, specs, num_designs)
    ids = [s.id for s in plan.shards]
    assert ids == [f"s{i:04d}" for i in range(len(ids))]
    assert 1 <= len(plan.shards) <= max_shards
    effective_batch = batch or (1 if num_designs < 100 else 10)
    for shard in plan.shards:
        for item in shard.items:
            is_last = item.start + item.count == num_designs
            assert is_last or item.count % effective_batch == 0
    assert plan.estimate.makespan_hours >= plan.estimate.lower_bound_hours - 1e-9
    assert plan_campaign(c, list(reversed(specs))) == plan  # deterministic, order-independent


def pool_bound_hours(plan, num_designs):
    """GPU work of every GPU stage over every GPU the pools run at once, plus one provisioning."""
    model = load_time_model()
    slots, gpus = {}, {}
    for stage in plan.stages:
        if stage == "analysis":
            continue
        instance = plan.resources[stage].instance_type
        slots[instance.name] = max(slots.get(instance.name, 0), plan.resources[stage].max_parallel_jobs)
        gpus[instance.name] = instance.gpus
    work = sum(
        num_designs
        * model.seconds_per_design(
            stage, bundle.residues, plan.resources[stage].instance_type.gpu_model, protocol="protein-anything"
        )
        for bundle in plan.bundles.values()
        for stage in plan.stages
        if stage != "analysis"
    )
    return (work / sum(slots[name] * gpus[name] for name in slots) + model.provisioning_seconds) / 3600


@settings(max_examples=20, deadline=None)
@given(
    residues=st.lists(st.integers(50, 600), min_size=1, max_size=12),
    num_designs=st.integers(1, 6000),
    preset=st.sampled_from(["small", "medium", "large", "xlarge"]),
)
def test_estimate_never_beats_the_lower_bound(tmp_path_factory, residues, num_designs, preset):
    c = campaign(
        tmp_path_factory.mktemp("p"),
        design={"num_designs": num_designs, "budget": 1},
        scaling={"preset": preset},
    )
    plan = plan_campaign(c, bundles(residues))
    # The bound counts the GPUs of the shared pools, not each stage's max_parallel_jobs apart.
    assert plan.estimate.lower_bound_hours >= pool_bound_hours(plan, num_designs) - 1e-9
    assert plan.estimate.makespan_hours >= plan.estimate.lower_bound_hours - 1e-9


@settings(max_examples=8, deadline=None)
@given(
    residues=st.lists(st.integers(50, 600), min_size=20, max_size=30),
    num_designs=st.integers(5000, 10000),
    preset=st.sampled_from(["small", "medium", "large"]),
)
def test_makespan_close_to_lower_bound_when_gpus_are_full(tmp_path_factory, residues, num_designs, preset):
    # Every shard pays three GPU provisionings (design, inverse folding, folding): the automatic
    # granularity trades them against the last wave, so 1.10 leaves room for the pipeline's fill
    # and drain. A fixed 6-hour granularity lands at up to 1.11 on some of these campaigns.
    c = campaign(
        tmp_path_factory.mktemp("p"),
        design={"num_designs": num_designs, "budget": 1},
        scaling={"preset": preset},
    )
    plan = plan_campaign(c, bundles(residues))
    pool = max(plan.resources[s].max_parallel_jobs for s in ("design", "inverse_folding", "folding"))
    # Enough work: every slot of the shared GPU pool runs many waves of jobs.
    assume(len(plan.shards) >= 10 * pool)
    assert plan.estimate.makespan_hours <= 1.10 * plan.estimate.lower_bound_hours


def test_shards_fill_the_shared_gpu_pool_when_work_is_short(tmp_path):
    c = campaign(
        tmp_path,
        design={"num_designs": 10000, "budget": 1, "diffusion_batch_size": 10},
        sharding={"target_hours": 2.0},
        scaling={"preset": "xlarge"},
    )
    plan = plan_campaign(c, bundles([100]))
    # Design, inverse folding and folding share the ml.g5.12xlarge pool of 50 slots.
    assert len(plan.shards) == 50
    # 200 designs each, spread evenly over the instance's 4 GPUs (in pieces where analysis follows).
    assert all(sum(i.count for i in shard.items) == 200 for shard in plan.shards)
    assert all(len(shard.items) % 4 == 0 for shard in plan.shards)
    target = c.sharding.target_hours * 3600
    assert all(seconds <= target for shard in plan.stage_seconds.values() for seconds in shard.values())
    check_exact_cover(plan, bundles([100]), 10000)


def test_no_shard_job_shorter_than_three_provisionings_when_work_allows(tmp_path):
    model = load_time_model()
    floor = MIN_JOB_PROVISIONINGS * model.provisioning_seconds
    c = campaign(
        tmp_path,
        design={"num_designs": 400, "budget": 1, "diffusion_batch_size": 10},
        sharding={"target_hours": 2.0},
        scaling={"preset": "xlarge"},
    )
    plan = plan_campaign(c, bundles([100]))
    folding = model.seconds_per_design("folding", 100, "A10G")
    # 400 designs of folding fill under 3 jobs of 3 provisionings on 4 GPUs: fewer, longer shards.
    assert len(plan.shards) == max(1, int(400 * folding // (4 * floor)))
    assert all(shard.est_seconds >= floor for shard in plan.shards[:-1])
    tiny = campaign(tmp_path, design={"num_designs": 12, "budget": 1}, scaling={"preset": "xlarge"})
    assert len(plan_campaign(tiny, bundles([100])).shards) == 1


@settings(max_examples=15, deadline=None)
@given(
    residues=st.lists(st.integers(50, 600), min_size=1, max_size=3),
    first=st.integers(1001, 6000),
    more=st.integers(0, 3999),
    preset=st.sampled_from(["small", "medium"]),
)
def test_raising_num_designs_adds_shards_without_redoing_old_ones(
    tmp_path_factory, residues, first, more, preset
):
    folder = tmp_path_factory.mktemp("p")
    specs = bundles(residues)

    def plan_of(n):
        c = campaign(
            folder,
            design={"num_designs": n, "budget": 1},
            sharding={"target_hours": 0.5},
            scaling={"preset": preset},
        )
        return plan_campaign(c, specs)

    old, new = plan_of(first), plan_of(first + more)
    assert old.width == new.width
    # Enough work to fill the pool at the target, and not so much that the shard cap makes shards
    # longer: then shard sizes do not depend on the amount of work.
    assume(old.estimate.stages["folding"].instance_hours >= 0.5 * old.resources["folding"].max_parallel_jobs)
    assume(max(shard.est_seconds for shard in new.shards) <= 0.5 * 3600)
    new_items = {shard.items for shard in new.shards}
    for bundle in specs:
        counts = [sum(i.count for i in s.items if i.spec == bundle.spec) for s in old.shards]
        whole = max(counts)
        assume(first >= 2 * whole)
        redone = sum(c for s, c in zip(old.shards, counts, strict=True) if c and s.items not in new_items)
        # Only the spec's tail (less than one whole shard) runs again; its whole shards are kept.
        assert redone < whole


def test_auto_granularity_makes_long_shards_on_one_gpu_within_the_job_limits(tmp_path):
    def plan_with(**sharding):
        c = campaign(
            tmp_path,
            design={"num_designs": 10000, "budget": 1, "diffusion_batch_size": 10},
            sharding=sharding,
            scaling={"preset": "small"},
        )
        return plan_campaign(c, bundles([100]))

    auto, fixed = plan_with(target_hours="auto"), plan_with(target_hours=2.0)
    # One GPU runs nothing in parallel: fewer shards pay fewer provisionings.
    assert len(auto.shards) < len(fixed.shards) / 5
    assert auto.estimate.makespan_hours < fixed.estimate.makespan_hours
    assert auto.estimate.cost_usd < fixed.estimate.cost_usd
    price = auto.resources["folding"].instance_type.price_per_hour
    for seconds in auto.stage_seconds.values():
        for stage, job in seconds.items():
            assert job <= MAX_RUNTIME_FRACTION * auto.resources[stage].max_runtime_seconds
    # What a failed job may cost bounds the shards too.
    cheap = plan_with(target_hours="auto", max_job_usd=5.0)
    assert len(cheap.shards) > len(auto.shards)
    assert all((360 + s.est_seconds) / 3600 * price <= 5.0 for s in cheap.shards)
    assert plan_with(target_hours="auto") == auto


def test_auto_granularity_is_never_slower_than_any_granularity_it_may_choose(tmp_path):
    c = campaign(tmp_path, design={"num_designs": 3000, "budget": 1}, scaling={"preset": "large"})
    specs = bundles([150, 320, 480])
    auto = plan_campaign(c, specs)
    fastest = min(plan_campaign(c, specs, target_hours=h).estimate.makespan_hours for h in AUTO_TARGET_HOURS)
    assert auto.estimate.makespan_hours <= fastest * 1.005 + 1e-9


def test_shard_cap_holds_for_huge_campaigns(tmp_path):
    c = campaign(tmp_path, design={"num_designs": 10000, "budget": 1}, sharding={"target_hours": 0.1})
    plan = plan_campaign(c, bundles([300] * 100))
    assert len(plan.shards) == 1000
    check_exact_cover(plan, bundles([300] * 100), 10000)


def test_small_specs_share_a_shard_and_big_specs_split(tmp_path):
    c = campaign(
        tmp_path,
        design={"num_designs": 10, "budget": 1},
        sharding={"target_hours": 1.0},
        scaling={"preset": "small"},
    )
    plan = plan_campaign(c, bundles([100, 100, 100]))
    assert len(plan.shards) == 1
    assert len(plan.shards[0].items) == 3
    big = campaign(
        tmp_path,
        design={"num_designs": 1000, "budget": 1},
        sharding={"target_hours": 1.0},
        scaling={"preset": "small"},
    )
    assert len(plan_campaign(big, bundles([400])).shards) > 5


def test_estimate_prices_jobs_from_the_catalog(tmp_path):
    # One job per shard stage (pinned: the planner would otherwise fuse inverse folding here).
    c = campaign(
        tmp_path,
        design={"num_designs": 100, "budget": 1},
        scaling={"preset": "small"},
        stages={"fuse": "none"},
    )
    plan = plan_campaign(c, bundles([200]))
    catalog = load_catalog()
    for stage, est in plan.estimate.stages.items():
        instance = catalog.get(est.instance_type)
        assert est.cost_usd == pytest.approx(est.instance_hours * instance.price_per_hour)
        assert est.gpu_hours == pytest.approx(est.instance_hours * instance.gpus)
        assert est.jobs == (len(plan.shards) if stage != "filtering" else 1)
    # Every job pays the provisioning overhead.
    assert plan.estimate.stages["design"].instance_hours >= len(plan.shards) * 0.1
    assert plan.estimate.cost_usd == pytest.approx(sum(s.cost_usd for s in plan.estimate.stages.values()))


def test_a_fused_stage_runs_in_its_host_job_and_is_still_costed_as_its_own_stage(tmp_path):
    design = {"num_designs": 400, "budget": 1}
    scaling = {"preset": "medium"}
    plain = plan_campaign(
        campaign(tmp_path, design=design, scaling=scaling, stages={"fuse": "none"}),
        bundles([200, 300]),
        target_hours=1,
    )
    fused_campaign = campaign(
        tmp_path, design=design, scaling=scaling, stages={"fuse": ["analysis", "inverse_folding"]}
    )
    fused = plan_campaign(fused_campaign, bundles([200, 300]), target_hours=1)
    assert fused.fused == {"inverse_folding": "design", "analysis": "folding"}
    # The same designs in each shard (items cut into pieces where analysis follows folding).
    assert sorted(designs_of(s) for s in fused.shards) == sorted(designs_of(s) for s in plain.shards)
    est, base = fused.estimate.stages, plain.estimate.stages
    # No job, no provisioning of its own; its work billed at its host's instance type.
    assert est["inverse_folding"].jobs == 0 and est["analysis"].jobs == 0
    assert est["design"].jobs == len(fused.shards)
    assert est["analysis"].instance_type == est["folding"].instance_type
    overhead = len(fused.shards) * 0.1
    assert est["inverse_folding"].instance_hours == pytest.approx(
        base["inverse_folding"].instance_hours - overhead
    )
    assert fused.estimate.makespan_hours < plain.estimate.makespan_hours


def designs_of(shard: Shard) -> list[tuple[str, int]]:
    """The designs a shard makes, as (spec, index)."""
    return sorted((i.spec, d) for i in shard.items for d in range(i.start, i.start + i.count))


def test_analysis_in_the_folding_job_follows_it_in_pieces_and_ends_sooner(tmp_path):
    design = {"num_designs": 2000, "budget": 1, "diffusion_batch_size": 10}

    def planned(fuse: list[str] | str) -> Plan:
        c = campaign(tmp_path, design=design, scaling={"preset": "large"}, stages={"fuse": fuse})
        return plan_campaign(c, bundles([150]), target_hours=4)

    plain, fused = planned("none"), planned(["analysis"])
    assert fused.fused == {"analysis": "folding"}
    # One item per GPU of the 4-GPU instance; where analysis follows, each in pieces of whole batches.
    assert all(len(s.items) == 4 for s in plain.shards)
    assert all(len(s.items) > 4 and all(i.count % 10 == 0 for i in s.items) for s in fused.shards)
    assert sorted(designs_of(s) for s in fused.shards) == sorted(designs_of(s) for s in plain.shards)
    first = plain.shards[0]
    per_design = plain.stage_seconds[first.id]["analysis"] / sum(i.count for i in first.items)
    for shard in fused.shards:
        # Only the analysis of the last pieces (one per GPU at most) runs after the folding ends.
        piece = max(i.count for i in shard.items) * per_design
        assert 0.99 * piece <= fused.stage_seconds[shard.id]["analysis"] <= 4 * piece
    ran_after = sum(fused.stage_seconds[s.id]["analysis"] for s in fused.shards)
    assert ran_after < 0.5 * sum(plain.stage_seconds[s.id]["analysis"] for s in plain.shards)
    assert fused.estimate.makespan_hours < plain.estimate.makespan_hours


def test_packed_filtering_waits_for_every_spec_of_its_job_and_pays_one_provisioning(tmp_path):
    specs = bundles([100 + 10 * i for i in range(30)])
    design = {"num_designs": 20, "budget": 1}
    packed = plan_campaign(
        campaign(tmp_path, design=design, scaling={"preset": "small"}, sharding={"pack_filtering": True}),
        specs,
    )
    plain = plan_campaign(
        campaign(tmp_path, design=design, scaling={"preset": "small"}, sharding={"pack_filtering": False}),
        specs,
    )
    assert len(plain.filtering_jobs) == 30
    assert sorted(s for job in packed.filtering_jobs for s in job) == sorted(plain.filter_ids)
    assert len(packed.filtering_jobs) < 30
    assert packed.estimate.stages["filtering"].jobs == len(packed.filtering_jobs)
    assert packed.estimate.cost_usd < plain.estimate.cost_usd
    assert packed.estimate.makespan_hours <= plain.estimate.makespan_hours * 1.005
    # The DAG's filter ids stay one per spec.
    assert packed.filter_ids == plain.filter_ids


def test_auto_levers_keep_the_fastest_then_cheapest_of_the_settings_a_campaign_may_pin(tmp_path):
    specs = bundles([100 + 37 * i % 400 for i in range(40)])
    design = {"num_designs": 100, "budget": 1}

    def plan_with(**settings):
        return plan_campaign(
            campaign(tmp_path, design=design, scaling={"preset": "xlarge"}, **settings), specs
        )

    auto = plan_with()
    pinned = [
        plan_with(stages={"fuse": list(fuse)}, sharding={"pack_filtering": pack})
        for fuse in AUTO_FUSE
        for pack in (False, "auto")
    ]
    fastest = min(p.estimate.makespan_hours for p in pinned)
    assert auto.estimate.makespan_hours <= fastest * (1 + AUTO_MAKESPAN_TOLERANCE)
    # On this many GPUs a chain of five provisioned jobs per shard is what loses: auto fuses.
    assert auto.fused
    # The plan says what it chose and against what.
    assert set(auto.choices) == {"sharding.target_hours", "stages.fuse", "sharding.pack_filtering"}
    assert "none" in auto.choices["stages.fuse"] and " in design" in auto.choices["stages.fuse"]
    assert auto.to_json()["choices"] == auto.choices
    # Pinned settings are honoured and not reported as chosen.
    none = plan_with(stages={"fuse": "none"}, sharding={"pack_filtering": False, "target_hours": 2})
    assert none.fused == {} and len(none.filtering_jobs) == len(specs) and none.choices == {}
    forced = plan_with(sharding={"pack_filtering": True})
    assert len(forced.filtering_jobs) < len(specs)


def test_auto_on_one_gpu_is_never_slower_nor_dearer_than_every_stage_in_its_own_job(tmp_path):
    design = {"num_designs": 100, "budget": 1}
    specs = bundles([100 + 37 * i % 400 for i in range(20)])
    auto = plan_campaign(campaign(tmp_path, design=design, scaling={"preset": "small"}), specs)
    plain = plan_campaign(
        campaign(
            tmp_path,
            design=design,
            scaling={"preset": "small"},
            stages={"fuse": "none"},
            sharding={"pack_filtering": False},
        ),
        specs,
    )
    assert auto.estimate.makespan_hours <= plain.estimate.makespan_hours * (1 + AUTO_MAKESPAN_TOLERANCE)
    assert auto.estimate.cost_usd <= plain.estimate.cost_usd
    # Inverse folding, minutes of work, rides in the design job instead of paying a provisioning.
    assert auto.fused.get("inverse_folding") == "design"
    check_exact_cover(auto, specs, 100)


def test_fuse_none_and_a_list_are_read_and_a_wrong_value_is_named(tmp_path):
    assert campaign(tmp_path, stages={"fuse": "none"}).stages.fuse == []
    assert campaign(tmp_path).stages.fuse == "auto"
    assert campaign(tmp_path).sharding.pack_filtering == "auto"
    with pytest.raises(CampaignError, match=r"stages\.fuse"):
        campaign(tmp_path, stages={"fuse": "sometimes"})


def test_the_deadline_choice_is_the_cheapest_preset_ending_in_time(tmp_path):
    c = campaign(tmp_path, design={"num_designs": 2000, "budget": 1}, scaling={"preset": "small"})
    specs = bundles([200, 300])
    options = compare_options(c, specs, option_overrides(OPTION_PRESETS, []))
    fastest = min(o.makespan_hours for o in options)
    slowest = max(o.makespan_hours for o in options)
    deadline = (fastest + slowest) / 2
    best = cheapest_within(c, specs, deadline)
    assert best is not None and best.makespan_hours <= deadline
    assert best.cost_usd == min(o.cost_usd for o in options if o.makespan_hours <= deadline)
    assert best == choose_option(options, deadline_hours=deadline)
    assert cheapest_within(c, specs, fastest / 2) is None


def test_skip_inverse_folding_drops_the_stage(tmp_path):
    c = campaign(tmp_path, design={"num_designs": 50, "budget": 1, "skip_inverse_folding": True})
    plan = plan_campaign(c, bundles([200]))
    assert "inverse_folding" not in plan.estimate.stages
    assert plan.stages == ("design", "folding", "analysis")


def test_time_model_scales_with_residues_and_gpu():
    model = load_time_model()
    a100 = model.seconds_per_design("folding", 300, "A100", protocol="peptide-anything")
    assert a100 == pytest.approx(46)
    assert model.seconds_per_design("folding", 300, "A10G", protocol="peptide-anything") > a100
    assert model.seconds_per_design("design", 250, "A100") == pytest.approx(6.25)
    assert model.seconds_per_design("folding", 300, "A100") == pytest.approx(46 * 1.5)  # with design_folding
    assert model.seconds_per_design("inverse_folding", 300, "A100", skip_inverse_folding=True) == 0


def test_resources_follow_preset_and_overrides(tmp_path):
    c = campaign(
        tmp_path,
        scaling={
            "preset": "xlarge",
            "folding": {"instance_type": "ml.g6e.12xlarge", "max_runtime_hours": 500 / 60},
        },
    )
    res = resolve_resources(c, 10, load_catalog())
    assert res["design"].max_parallel_jobs == 50
    assert res["analysis"].max_parallel_jobs == 25
    assert res["folding"].instance_type.gpu_model == "L40S"
    assert res["folding"].max_runtime_seconds == 30000
    auto = campaign(tmp_path, scaling={"preset": "auto"})
    assert resolve_resources(auto, 100, load_catalog())["design"].max_parallel_jobs == 1
    assert resolve_resources(auto, 10_000_000, load_catalog())["design"].max_parallel_jobs == 50


def test_fallback_instance_types_resolve_or_name_the_setting(tmp_path):
    c = campaign(
        tmp_path,
        scaling={
            "preset": "medium",
            "folding": {"fallback_instance_types": ["ml.g6e.12xlarge", "ml.g6.12xlarge"]},
        },
    )
    res = resolve_resources(c, 10, load_catalog())
    assert [f.name for f in res["folding"].fallbacks] == ["ml.g6e.12xlarge", "ml.g6.12xlarge"]
    assert res["design"].fallbacks == ()
    setting = "scaling.folding.fallback_instance_types"
    for bad, message in (
        (["ml.z9.huge"], "unknown"),
        (["ml.r5.12xlarge"], "has no GPU"),
        (["ml.g5.xlarge"], "has 1 GPUs, ml.g5.12xlarge 4"),
        (["ml.g5.12xlarge"], "the stage's own instance type"),
    ):
        odd = campaign(tmp_path, scaling={"preset": "medium", "folding": {"fallback_instance_types": bad}})
        with pytest.raises(CampaignError) as err:
            resolve_resources(odd, 10, load_catalog())
        assert [i.path for i in err.value.issues] == [setting]
        assert message in err.value.issues[0].message


def test_fallback_estimates_keep_the_shards_and_the_pools(tmp_path):
    scaling = {
        "preset": "small",
        "folding": {"fallback_instance_types": ["ml.g6.xlarge", "ml.g4dn.xlarge"], "max_runtime_hours": 2},
    }
    # Folding in a job of its own (pinned): fused into design it would run on design's type.
    c = campaign(
        tmp_path,
        design={"num_designs": 200, "budget": 1},
        sharding={"target_hours": 1.0},
        scaling=scaling,
        stages={"fuse": "none"},
    )
    plan = plan_campaign(c, bundles([300, 200]))
    model = load_time_model()
    first, second = fallback_estimates(plan, c)
    assert (first.label, second.label) == ("fallback 1", "fallback 2")
    # Slower GPUs (L4, then T4) on the same shards, and folding still waits for the one g5 slot.
    assert plan.estimate.makespan_hours < first.estimate.makespan_hours < second.estimate.makespan_hours
    assert first.estimate.stages["folding"].instance_type == "ml.g6.xlarge"
    assert first.estimate.stages["folding"].jobs == len(plan.shards)
    t4 = [
        sum(i.count * model.seconds_per_design("folding", i.residues, "T4") for i in shard.items)
        for shard in plan.shards
    ]
    assert second.over_runtime == sum(1 for seconds in t4 if seconds > 2 * 3600) > 0
    assert first.over_runtime == 0
    assert fallback_estimates(plan_campaign(campaign(tmp_path), bundles([300])), campaign(tmp_path)) == []


def test_invalid_bundles_are_refused(tmp_path):
    c = campaign(tmp_path)
    with pytest.raises(CampaignError, match=r"missing\.cif"):
        plan_campaign(c, [SpecBundle(spec="a.yaml", errors=("a.yaml: entities[0].file.path: missing.cif",))])
    with pytest.raises(CampaignError, match="no design specs"):
        plan_campaign(c, [])


def test_cache_key_changes_exactly_with_what_determines_output(tmp_path):
    c = campaign(tmp_path)
    items = [{"spec": "a.yaml", "start": 0, "count": 5, "width": 2}]
    base = {
        "params": stage_params(c, "design"),
        "bundle_hashes": ["ab" * 32],
        "items": items,
        "image_uri": "img:1",
        "upstream_key": None,
    }
    key = cache_key("design", **base)
    assert len(key) == 32
    assert cache_key("design", **{**base, "items": list(reversed(items))}) == key
    assert cache_key("design", **{**base, "items": [{**items[0], "est_seconds": 9}]}) == key
    assert cache_key("folding", **base) != key
    assert cache_key("design", **{**base, "image_uri": "img:2"}) != key
    assert cache_key("design", **{**base, "upstream_key": "0" * 32}) != key
    assert cache_key("design", **{**base, "items": [{**items[0], "count": 6}]}) != key
    # Changing only the budget changes filtering's parameters and nothing upstream.
    cheaper = c.with_overrides({"design.budget": 2})
    assert stage_params(cheaper, "filtering") != stage_params(c, "filtering")
    for stage in ("design", "inverse_folding", "folding", "analysis"):
        assert stage_params(cheaper, stage) == stage_params(c, stage)

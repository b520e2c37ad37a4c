"""
Planner quality: makespan and cost of this project's plan against the original SageMaker Pipelines
strategy and a lower bound, on every scaling preset.

All three use the project's stage time model, instance catalog and presets, so only the strategy
differs:

- **ours**: :func:`boltzgen_airflow.planning.plan.plan_campaign` (shards packed to a target runtime,
  shards flow through the stages independently). Reported twice: the planner's own estimate
  (each stage limited to its ``max_parallel_jobs``) and a list-scheduling simulation in which the
  stages that share an instance type share one pool, as the DAG's Airflow pools make them
  (:func:`simulate_pools`).
- **original**: :func:`original_strategy`, one processing job per stage over all specs with
  ``max_parallel_jobs`` instances, whole specs dealt round-robin to the GPUs, a barrier between stages.
- **lower bound**: the GPU work of every GPU stage over every GPU that may run at once, plus one
  provisioning overhead.
"""

from __future__ import annotations

import heapq
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import load_average, table, write_result

from boltzgen_airflow.campaign.catalog import StageResources, load_catalog, load_presets, resolve_resources
from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.planning.plan import Plan, StageTimeModel, load_time_model, plan_campaign
from boltzgen_airflow.stages import GPU_STAGES, SHARD_STAGES

TARGET_RATIO = 1.10
# Ours counts as behind the original when slower or dearer by more than this factor.
ORIGINAL_TOLERANCE = 1.01
PRESETS = ("small", "medium", "large", "xlarge")
SCENARIOS = ((1, 10_000), (10, 10_000), (100, 100), (1_000, 1_000))

CAMPAIGN = """
name: bench_{preset}
aws:
  bucket: bench-bucket
  role_arn: arn:aws:iam::123456789012:role/boltzgen
  image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2
design:
  specs: specs
  protocol: protein-anything
  num_designs: 100
  budget: 10
  diffusion_batch_size: 10
scaling:
  preset: {preset}
"""


def bench_bundles(count: int) -> list[SpecBundle]:
    """
    Synthetic spec bundles with sizes spread over 100-499 residues (the first has 100).

    :param count: number of specs.
    """
    return [
        SpecBundle(spec=f"targets/spec{i:04d}.yaml", hash=f"{i:064x}", residues=100 + (i * 37) % 400)
        for i in range(count)
    ]


def load_bench_campaign(folder: Path, preset: str) -> Campaign:
    """
    Write and load the benchmark campaign of a preset.

    :param folder: where to write it (a ``specs`` folder is created beside it).
    :param preset: the scaling preset.
    """
    (folder / "specs").mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{preset}.yaml"
    path.write_text(CAMPAIGN.format(preset=preset))
    return load_campaign(path, {})


def _per_design(
    campaign: Campaign, model: StageTimeModel, resources: Mapping[str, StageResources], residues: int
) -> dict[str, float]:
    design = campaign.design
    stages = [s for s in SHARD_STAGES if not (s == "inverse_folding" and design.skip_inverse_folding)]
    return {
        s: model.seconds_per_design(
            s,
            residues,
            resources[s].instance_type.gpu_model,
            protocol=design.protocol,
            inverse_fold_num_sequences=design.inverse_fold_num_sequences,
            skip_inverse_folding=design.skip_inverse_folding,
        )
        for s in stages
    }


def gpu_pool_gpus(resources: Mapping[str, StageResources]) -> int:
    """
    GPUs that may run at once: per GPU instance type, its pool (the largest ``max_parallel_jobs`` of
    the stages using it) times its GPUs.

    :param resources: per-stage resources.
    """
    slots: dict[str, int] = {}
    gpus: dict[str, int] = {}
    for stage in GPU_STAGES:
        res = resources[stage]
        name = res.instance_type.name
        slots[name] = max(slots.get(name, 0), res.max_parallel_jobs)
        gpus[name] = res.instance_type.gpus
    return sum(slots[name] * gpus[name] for name in slots)


def lower_bound(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    num_designs: int,
    resources: Mapping[str, StageResources],
    model: StageTimeModel,
) -> dict[str, float]:
    """
    Total GPU work over the GPUs that may run at once, plus one provisioning overhead.

    :param campaign: the campaign.
    :param bundles: its specs.
    :param num_designs: designs per spec.
    :param resources: per-stage resources.
    :param model: the stage time model.
    :return: ``hours``, ``floor_hours`` (the bound plus the analysis and filtering jobs that follow
        the last GPU work), ``gpu_hours`` (work only) and ``gpus``.
    """
    work = 0.0
    for bundle in bundles:
        times = _per_design(campaign, model, resources, bundle.residues)
        work += num_designs * sum(times[s] for s in GPU_STAGES if s in times)
    gpus = gpu_pool_gpus(resources)
    # After the last GPU work ends, some design still needs its analysis job and its spec's
    # filtering job, each with its provisioning: no plan of these five stages ends sooner.
    analysis = min(_per_design(campaign, model, resources, b.residues)["analysis"] for b in bundles)
    tail = 2 * model.provisioning_seconds + analysis + model.filtering_seconds(num_designs)
    hours = (work / gpus + model.provisioning_seconds) / 3600
    return {"hours": hours, "floor_hours": hours + tail / 3600, "gpu_hours": work / 3600, "gpus": gpus}


def original_strategy(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    num_designs: int,
    resources: Mapping[str, StageResources],
    model: StageTimeModel,
) -> dict[str, Any]:
    """
    The SageMaker Pipelines strategy: per stage one processing job of ``max_parallel_jobs`` instances
    over every spec, whole specs dealt round-robin to the GPUs (instances for CPU stages), each job
    lasting provisioning plus its busiest worker, and every instance billed for the whole job; the
    next stage starts when the job ends; filtering is one more such job.

    :param campaign: the campaign.
    :param bundles: its specs (in spec order).
    :param num_designs: designs per spec.
    :param resources: per-stage resources.
    :param model: the stage time model.
    :return: ``makespan_hours``, ``cost_usd`` and per-stage ``stages``.
    """
    specs = sorted(bundles, key=lambda b: b.spec)
    per_design = [_per_design(campaign, model, resources, b.residues) for b in specs]
    stages: dict[str, dict[str, float]] = {}
    clock = cost = 0.0
    for stage in [*per_design[0], "filtering"]:
        res = resources[stage]
        instances = res.max_parallel_jobs
        workers = instances * max(1, res.instance_type.gpus) if stage in GPU_STAGES else instances
        loads = [0.0] * workers
        for i, times in enumerate(per_design):
            seconds = (
                model.filtering_seconds(num_designs) if stage == "filtering" else num_designs * times[stage]
            )
            loads[i % workers] += seconds
        duration = model.provisioning_seconds + max(loads)
        stage_cost = duration / 3600 * instances * res.instance_type.price_per_hour
        stages[stage] = {"hours": duration / 3600, "instances": instances, "cost_usd": stage_cost}
        clock += duration
        cost += stage_cost
    return {"makespan_hours": clock / 3600, "cost_usd": cost, "stages": stages}


Job = tuple[str, str]


def simulate_pools(plan: Plan, model: StageTimeModel) -> dict[Job, tuple[float, float]]:
    """
    Start and end seconds of every job of ``plan`` when the stages sharing an instance type share
    one pool; jobs are keyed by (stage, shard or filtering job index).

    Jobs of one shard run in stage order, a filtering job after the analysis of all its specs'
    shards; a freed slot goes to the ready job of the earliest stage (Airflow's default
    ``downstream`` priority weight), then to the job ready first. A stage fused into an earlier
    stage's job (``plan.fused``) adds its time to that job and takes none itself.

    :param plan: the plan.
    :param model: the stage time model (provisioning per job).
    """
    fuse = plan.fused
    overhead = model.provisioning_seconds
    stages = list(plan.stages)
    slots: dict[str, int] = {}
    for stage in [*stages, "filtering"]:
        res = plan.resources[stage]
        slots[res.instance_type.name] = max(slots.get(res.instance_type.name, 0), res.max_parallel_jobs)
    duration: dict[Job, float] = {}
    pool: dict[Job, str] = {}
    rank: dict[Job, int] = {}
    waiting: dict[Job, int] = {}
    after: dict[Job, list[Job]] = {}
    for shard in plan.shards:
        for index, stage in enumerate(stages):
            job = (stage, shard.id)
            own = plan.stage_seconds[shard.id]
            guests = sum(own[guest] for guest, host in fuse.items() if host == stage and guest in own)
            duration[job] = 0.0 if stage in fuse else overhead + own[stage] + guests
            pool[job] = plan.resources[stage].instance_type.name
            rank[job] = index
            waiting[job] = 1 if index else 0
            if index:
                after.setdefault((stages[index - 1], shard.id), []).append(job)
    for index, specs in enumerate(plan.filtering_jobs):
        job = ("filtering", f"{index:06d}")
        duration[job] = overhead + len(specs) * model.filtering_seconds(plan.num_designs)
        pool[job] = plan.resources["filtering"].instance_type.name
        rank[job] = len(stages)
        holders = sorted({shard.id for spec in specs for shard in plan.shards_of(spec)})
        waiting[job] = len(holders)
        for shard_id in holders:
            after.setdefault((stages[-1], shard_id), []).append(job)
    ready: dict[str, list[tuple[int, float, Job]]] = {name: [] for name in slots}
    for job, count in waiting.items():
        if count == 0:
            heapq.heappush(ready[pool[job]], (rank[job], 0.0, job))
    free = dict(slots)
    running: list[tuple[float, Job]] = []
    times: dict[Job, tuple[float, float]] = {}
    now = 0.0
    while True:
        for name, queue in ready.items():
            while free[name] and queue:
                _, _, job = heapq.heappop(queue)
                free[name] -= 1
                times[job] = (now, now + duration[job])
                heapq.heappush(running, (now + duration[job], job))
        if not running:
            return times
        now, job = heapq.heappop(running)
        free[pool[job]] += 1
        for nxt in after.get(job, ()):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready[pool[nxt]], (rank[nxt], now, nxt))


def losses(
    plan: Plan, model: StageTimeModel, times: Mapping[Job, tuple[float, float]], bound: Mapping[str, float]
) -> dict[str, float]:
    """
    Where the pooled makespan of ``plan`` loses hours against the lower bound; the four add up to
    the difference.

    - ``provisioning``: every GPU job's provisioning over the pool's GPUs, beyond the bound's one;
    - ``chain``: GPUs idle before the last GPU job starts (jobs waiting on their previous stage),
      plus GPUs of a job idle while its busiest GPU works;
    - ``waves``: GPUs idle from the last GPU job's start to the end of GPU work (the last wave);
    - ``cpu_stages``: analysis and filtering after the last GPU job.

    :param plan: the plan.
    :param model: the stage time model.
    :param times: from :func:`simulate_pools`.
    :param bound: from :func:`lower_bound`.
    """
    gpus = float(bound["gpus"])
    # A fused stage's zero-length step holds no GPU.
    gpu_jobs = {job: span for job, span in times.items() if job[0] in GPU_STAGES and span[1] > span[0]}
    width = {job: plan.resources[job[0]].instance_type.gpus for job in gpu_jobs}
    gpu_end = max(end for _, end in gpu_jobs.values())
    last_start = max(start for start, _ in gpu_jobs.values())
    provisioning = sum(width[j] for j in gpu_jobs) * model.provisioning_seconds / gpus
    # A fused analysis adds GPU-instance time that the bound's GPU work does not count.
    hosted = (
        sum(
            plan.resources[job[0]].instance_type.gpus * plan.stage_seconds[job[1]][guest]
            for job in gpu_jobs
            for guest, host in plan.fused.items()
            if host == job[0] and guest not in GPU_STAGES
        )
        / gpus
    )
    in_jobs = sum(width[j] * (end - start) for j, (start, end) in gpu_jobs.items()) / gpus
    before = sum(width[j] * (min(end, last_start) - start) for j, (start, end) in gpu_jobs.items())
    waves = gpu_end - last_start - (in_jobs * gpus - before) / gpus
    idle_before = last_start - before / gpus
    work = bound["gpu_hours"] * 3600 / gpus
    makespan = max(end for _, end in times.values())
    hours = {
        "provisioning": provisioning - model.provisioning_seconds,
        "chain": idle_before + (in_jobs - provisioning - work - hosted),
        "hosted_cpu": hosted,
        "waves": waves,
        "cpu_stages": makespan - gpu_end,
    }
    return {name: round(value / 3600, 3) for name, value in hours.items()}


def _variant(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    designs: int,
    bound: Mapping[str, float],
    original: Mapping[str, Any],
    model: StageTimeModel,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    plan = plan_campaign(campaign.with_overrides(overrides), bundles, num_designs=designs, time_model=model)
    hours = max(end for _, end in simulate_pools(plan, model).values()) / 3600
    return {
        "shards": len(plan.shards),
        "filtering_jobs": len(plan.filtering_jobs),
        "pooled_makespan_hours": round(hours, 3),
        "estimate_makespan_hours": round(plan.estimate.makespan_hours, 3),
        "cost_usd": round(plan.estimate.cost_usd, 2),
        "vs_lower_bound": round(hours / bound["hours"], 3),
        "vs_original_makespan": round(hours / original["makespan_hours"], 3),
        "vs_original_cost": round(plan.estimate.cost_usd / original["cost_usd"], 3),
    }


def scenario(campaign: Campaign, specs: int, designs: int) -> dict[str, Any]:
    """
    Compare the three strategies on one campaign size.

    :param campaign: the campaign (its preset decides the resources).
    :param specs: number of specs.
    :param designs: designs per spec.
    """
    model = load_time_model()
    bundles = bench_bundles(specs)
    resources = resolve_resources(campaign, specs * designs, load_catalog(), load_presets())
    plan = plan_campaign(campaign, bundles, num_designs=designs, time_model=model)
    ours = plan.estimate
    times = simulate_pools(plan, model)
    simulated = max(end for _, end in times.values()) / 3600
    original = original_strategy(campaign, bundles, designs, resources, model)
    bound = lower_bound(campaign, bundles, designs, resources, model)
    lost = losses(plan, model, times, bound)
    variants = {
        name: _variant(campaign, bundles, designs, bound, original, model, overrides)
        for name, overrides in VARIANTS.items()
    }
    return {
        "name": f"{specs}x{designs}",
        "preset": campaign.scaling.preset,
        "specs": specs,
        "designs_per_spec": designs,
        "shards": len(plan.shards),
        "fused": plan.fused,
        "filtering_jobs": len(plan.filtering_jobs),
        "gpus": bound["gpus"],
        "pool_instances": bound["gpus"] // max(1, resources["folding"].instance_type.gpus),
        "gpu_stage_jobs": len(plan.shards) * len([s for s in plan.stages if s in GPU_STAGES]),
        # GPU hours spent provisioning the GPU stage jobs: the main cost of shards over the bound.
        "gpu_provisioning_hours": round(
            len(plan.shards)
            * sum(resources[s].instance_type.gpus for s in plan.stages if s in GPU_STAGES)
            * model.provisioning_seconds
            / 3600,
            3,
        ),
        "gpu_work_hours": round(bound["gpu_hours"], 3),
        "ours_makespan_hours": round(ours.makespan_hours, 3),
        "ours_pooled_makespan_hours": round(simulated, 3),
        "original_makespan_hours": round(original["makespan_hours"], 3),
        "lower_bound_hours": round(bound["hours"], 3),
        "planner_lower_bound_hours": round(ours.lower_bound_hours, 3),
        "ours_cost_usd": round(ours.cost_usd, 2),
        "original_cost_usd": round(original["cost_usd"], 2),
        "ours_vs_lower_bound": round(ours.makespan_hours / bound["hours"], 3),
        "ours_pooled_vs_lower_bound": round(simulated / bound["hours"], 3),
        "floor_hours": round(bound["floor_hours"], 3),
        "ours_pooled_vs_floor": round(simulated / bound["floor_hours"], 3),
        "original_vs_lower_bound": round(original["makespan_hours"] / bound["hours"], 3),
        "original_vs_ours_makespan": round(original["makespan_hours"] / ours.makespan_hours, 3),
        "original_vs_ours_pooled_makespan": round(original["makespan_hours"] / simulated, 3),
        "original_vs_ours_cost": round(original["cost_usd"] / ours.cost_usd, 3),
        "ours_vs_original_cost": round(ours.cost_usd / original["cost_usd"], 3),
        "lost_hours": lost,
        "variants": variants,
    }


LOSSES = ("provisioning", "chain", "waves", "cpu_stages")
# The same campaign with the planner's levers pinned, each planned and simulated as above: ``none``
# is every stage in its own job and one filtering job per spec (the defaults before ``auto``).
NONE: dict[str, Any] = {"stages.fuse": [], "sharding.pack_filtering": False}
ALL_STAGES = ["inverse_folding", "folding", "analysis"]
VARIANTS: dict[str, dict[str, Any]] = {
    "none": NONE,
    "pack_filtering": {**NONE, "sharding.pack_filtering": "auto"},
    "fuse_inverse_folding": {**NONE, "stages.fuse": ["inverse_folding"]},
    "fuse_inverse_folding_analysis": {**NONE, "stages.fuse": ["inverse_folding", "analysis"]},
    "fuse_all": {**NONE, "stages.fuse": ALL_STAGES},
    "fuse_inverse_folding_pack_filtering": {
        "stages.fuse": ["inverse_folding"],
        "sharding.pack_filtering": "auto",
    },
    "fuse_all_pack_filtering": {"stages.fuse": ALL_STAGES, "sharding.pack_filtering": "auto"},
}


def run(scenarios: Sequence[tuple[int, int]] = SCENARIOS, presets: Sequence[str] = PRESETS) -> dict[str, Any]:
    """
    Run every scenario on every preset.

    :param scenarios: (specs, designs per spec) pairs.
    :param presets: scaling presets.
    """
    before = load_average()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        for preset in presets:
            campaign = load_bench_campaign(Path(tmp), preset)
            rows.extend(scenario(campaign, specs, designs) for specs, designs in scenarios)
    misses = [f"{r['name']}/{r['preset']}" for r in rows if r["ours_pooled_vs_lower_bound"] > TARGET_RATIO]
    behind = [
        f"{r['name']}/{r['preset']}"
        for r in rows
        if r["ours_pooled_makespan_hours"] > ORIGINAL_TOLERANCE * r["original_makespan_hours"]
        or r["ours_cost_usd"] > ORIGINAL_TOLERANCE * r["original_cost_usd"]
    ]
    ratios = [r["ours_pooled_vs_lower_bound"] for r in rows]
    return {
        "suite": "planner",
        "target_ratio": TARGET_RATIO,
        "scenarios": rows,
        "misses_target": misses,
        "behind_original": behind,
        "worst_ours_pooled_vs_lower_bound": max(ratios),
        "median_ours_pooled_vs_lower_bound": round(statistics.median(ratios), 3),
        "load_average_before": before,
    }


def report(document: dict[str, Any]) -> str:
    """
    The figures as a table, with the hours ours loses against the bound by cause.

    :param document: from :func:`run`.
    """
    rows = [
        [
            r["name"],
            r["preset"],
            r["shards"],
            r["lower_bound_hours"],
            r["ours_pooled_makespan_hours"],
            r["original_makespan_hours"],
            r["ours_pooled_vs_lower_bound"],
            r["ours_pooled_vs_floor"],
            r["original_vs_ours_pooled_makespan"],
            r["ours_cost_usd"],
            r["original_cost_usd"],
            r["ours_vs_original_cost"],
            *(r["lost_hours"][name] for name in LOSSES),
        ]
        for r in document["scenarios"]
    ]
    headers = [
        "scenario",
        "preset",
        "shards",
        "bound h",
        "ours h",
        "original h",
        "ours/bound",
        "ours/floor",
        "orig/ours",
        "ours $",
        "original $",
        "ours/orig $",
        *(f"lost {name} h" for name in LOSSES),
    ]
    misses = ", ".join(document["misses_target"]) or "none"
    behind = ", ".join(document["behind_original"]) or "none"
    return (
        "Planner: makespan (hours, pooled as the DAG runs it) and cost (USD) against the original strategy\n"
        "and the lower bound; lost: hours over the bound by cause\n"
        + table(headers, rows)
        + f"\nours/bound: worst {document['worst_ours_pooled_vs_lower_bound']:.3f}, "
        f"median {document['median_ours_pooled_vs_lower_bound']:.3f}"
        + f"\nscenarios over {document['target_ratio']:.2f}x the bound: {misses}"
        + f"\nscenarios slower or dearer than the original (over {ORIGINAL_TOLERANCE - 1:.0%}): {behind}"
        + "".join(_variant_line(document, name) for name in VARIANTS)
        + _best_line(document)
    )


def _best_line(document: dict[str, Any]) -> str:
    """Per scenario the fastest of the campaign as written and its variants (what a campaign may ask)."""
    best = [
        min([r["ours_pooled_vs_lower_bound"], *(v["vs_lower_bound"] for v in r["variants"].values())])
        for r in document["scenarios"]
    ]
    return (
        f"\nbest setting per scenario: ours/bound worst {max(best):.3f}, median {statistics.median(best):.3f}"
    )


def _variant_line(document: dict[str, Any], name: str) -> str:
    rows = document["scenarios"]
    ratios = [r["variants"][name]["vs_lower_bound"] for r in rows]
    worst = max(rows, key=lambda r: r["variants"][name]["vs_lower_bound"])
    behind = [
        f"{r['name']}/{r['preset']}"
        for r in rows
        if r["variants"][name]["vs_original_makespan"] > ORIGINAL_TOLERANCE
        or r["variants"][name]["vs_original_cost"] > ORIGINAL_TOLERANCE
    ]
    return (
        f"\n{name}: ours/bound worst {max(ratios):.3f} ({worst['name']}/{worst['preset']}), "
        f"median {statistics.median(ratios):.3f}; behind the original: {', '.join(behind) or 'none'}"
    )


def main(smoke: bool = False, folder: Path | None = None) -> dict[str, Any]:
    """
    Run the suite, print its table and write ``planner.json``.

    :param smoke: one small scenario on one preset.
    :param folder: where to write the JSON.
    """
    document = run(scenarios=((2, 50),), presets=("small",)) if smoke else run()
    write_result("planner", document, folder)
    print(report(document))
    return document


if __name__ == "__main__":
    main("--smoke" in sys.argv)

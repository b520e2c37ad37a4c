"""
Planning: work items packed into shards, the stage time and cost model, cache keys and design ids.

Everything here is a pure function of its arguments (plus the packaged data files), so the same
campaign and specs always give the same plan.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boltzgen_airflow.catalog import (
    Catalog,
    StageResources,
    configs_dir,
    load_catalog,
    read_yaml,
    resolve_resources,
)
from boltzgen_airflow.config import MAX_SHARDS, Campaign
from boltzgen_airflow.errors import CampaignError, ConfigIssue
from boltzgen_airflow.specs import SpecBundle
from boltzgen_airflow.stages import GPU_STAGES, SHARD_STAGES

DESIGN_FOLDING_PROTOCOLS = frozenset({"protein-anything", "protein-small_molecule"})
AFFINITY_PROTOCOLS = frozenset({"protein-small_molecule"})


def design_width(num_designs: int) -> int:
    """
    Digits of a design index: ``len(str(num_designs - 1))``, at least 1.

    :param num_designs: designs per spec.
    """
    return max(1, len(str(max(num_designs - 1, 0))))


def design_id(stem: str, index: int, width: int) -> str:
    """
    The global id of design ``index`` of a spec: ``<stem>_<index zero-padded to width>``.

    :param stem: the spec's file stem.
    :param index: the design's global index within the spec.
    :param width: from :func:`design_width`.
    """
    return f"{stem}_{index:0{width}d}"


class StageTimeModel:
    """
    Seconds per design of each stage, interpolated from the A100 table by residues and scaled per GPU.

    :param data: the parsed ``stage_time_model.yaml``.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.residues: list[float] = [float(x) for x in data["residues"]]
        self.gpu_table: dict[str, list[float]] = {
            k: [float(x) for x in v] for k, v in data["gpu_seconds_per_design"].items()
        }
        self.cpu_table: dict[str, list[float]] = {
            k: [float(x) for x in v] for k, v in data["cpu_seconds_per_design"].items()
        }
        self.slowdown: dict[str, float] = {k: float(v) for k, v in data["gpu_slowdown"].items()}
        self.design_folding_fraction = float(data.get("design_folding_fraction", 0.5))
        self.filtering_base = float(data["filtering_seconds"]["base"])
        self.filtering_per_design = float(data["filtering_seconds"]["per_design"])
        self.provisioning_seconds = float(data.get("provisioning_seconds_per_job", 360))

    def _interpolate(self, table: Sequence[float], residues: float) -> float:
        xs = self.residues
        if residues <= xs[0]:
            return table[0] * max(residues, 1.0) / xs[0]
        index = min(bisect.bisect_left(xs, residues), len(xs) - 1)
        x0, x1 = xs[index - 1], xs[index]
        y0, y1 = table[index - 1], table[index]
        return max(y0 + (y1 - y0) * (residues - x0) / (x1 - x0), table[0])

    def gpu_factor(self, gpu_model: str | None) -> float:
        """
        Slowdown of a GPU relative to an A100 (unknown models count as the slowest known).

        :param gpu_model: e.g. ``A10G``.
        """
        if gpu_model is None:
            raise ValueError("a GPU stage needs a GPU instance")
        return self.slowdown.get(gpu_model, max(self.slowdown.values()))

    def seconds_per_design(
        self,
        stage: str,
        residues: int,
        gpu_model: str | None = None,
        *,
        protocol: str = "protein-anything",
        inverse_fold_num_sequences: int = 1,
        skip_inverse_folding: bool = False,
    ) -> float:
        """
        Estimated seconds of one design in ``stage`` on one GPU (or on the CPU instance for analysis).

        :param stage: a shard stage.
        :param residues: total residues of the spec.
        :param gpu_model: the GPU (GPU stages).
        :param protocol: BoltzGen protocol (decides design_folding and affinity).
        :param inverse_fold_num_sequences: sequences per design after inverse folding.
        :param skip_inverse_folding: inverse folding does nothing when set.
        """
        sequences = 1 if skip_inverse_folding else inverse_fold_num_sequences
        if stage == "analysis":
            return self._interpolate(self.cpu_table["analysis"], residues) * sequences
        factor = self.gpu_factor(gpu_model)
        if stage == "design":
            return self._interpolate(self.gpu_table["design"], residues) * factor
        if stage == "inverse_folding":
            if skip_inverse_folding:
                return 0.0
            return self._interpolate(self.gpu_table["inverse_folding"], residues) * factor * sequences
        if stage == "folding":
            fold = self._interpolate(self.gpu_table["folding"], residues)
            total = fold
            if protocol in DESIGN_FOLDING_PROTOCOLS:
                total += fold * self.design_folding_fraction
            if protocol in AFFINITY_PROTOCOLS:
                total += self._interpolate(self.gpu_table["affinity"], residues)
            return total * factor * sequences
        raise ValueError(f"no per-design time for stage {stage!r}")

    def filtering_seconds(self, designs: int) -> float:
        """
        Estimated seconds of one spec's filtering job over ``designs`` designs.

        :param designs: designs of the spec.
        """
        return self.filtering_base + self.filtering_per_design * designs


@functools.lru_cache(maxsize=4)
def _load_time_model(path: Path) -> StageTimeModel:
    data = read_yaml(path)
    try:
        return StageTimeModel(data)
    except (KeyError, TypeError, ValueError) as err:
        raise CampaignError.single(str(path), "", f"invalid stage time model: {err}") from None


def load_time_model(path: str | Path | None = None) -> StageTimeModel:
    """
    Load the stage time model (cached per path).

    :param path: a time model YAML; default ``include/configs/stage_time_model.yaml``.
    """
    return _load_time_model(Path(path) if path else configs_dir() / "stage_time_model.yaml")


@dataclass(frozen=True)
class WorkItem:
    """
    Designs ``start .. start+count-1`` of one spec.

    :param spec: the spec's path relative to the specs root.
    :param start: first global design index.
    :param count: number of designs.
    :param width: digits of design indices (see :func:`design_width`).
    :param residues: the spec's residue estimate.
    :param est_seconds: estimated seconds of the item's longest GPU stage on one GPU.
    """

    spec: str
    start: int
    count: int
    width: int
    residues: int
    est_seconds: float

    def design_ids(self, stem: str) -> list[str]:
        """
        The ids of the item's designs.

        :param stem: the spec's file stem.
        """
        return [design_id(stem, i, self.width) for i in range(self.start, self.start + self.count)]

    def to_json(self) -> dict[str, Any]:
        """The item as plain JSON types (``spec`` is the path relative to the specs root)."""
        return {
            "spec": self.spec,
            "start": self.start,
            "count": self.count,
            "width": self.width,
            "residues": self.residues,
            "est_seconds": round(self.est_seconds, 3),
        }


@dataclass(frozen=True)
class Shard:
    """
    Work items run by one SageMaker job per shard stage.

    :param id: ``s0000``, ``s0001``... in plan order.
    :param items: the work items, sorted by spec and start.
    :param est_seconds: estimated duration of the shard's longest stage job (without provisioning).
    """

    id: str
    items: tuple[WorkItem, ...]
    est_seconds: float

    @property
    def specs(self) -> tuple[str, ...]:
        """The specs the shard touches, sorted."""
        return tuple(sorted({item.spec for item in self.items}))

    @property
    def designs(self) -> int:
        """Designs the shard produces."""
        return sum(item.count for item in self.items)


@dataclass(frozen=True)
class StageEstimate:
    """
    Time and cost of one stage over the whole campaign.

    :param stage: the stage.
    :param instance_type: the instance type name.
    :param jobs: SageMaker jobs of the stage.
    :param gpu_hours: GPU hours billed (GPUs of the instance times job hours).
    :param instance_hours: instance hours billed, provisioning included.
    :param makespan_hours: from the stage's first job start to its last job end.
    :param cost_usd: on-demand cost.
    """

    stage: str
    instance_type: str
    jobs: int
    gpu_hours: float
    instance_hours: float
    makespan_hours: float
    cost_usd: float


@dataclass(frozen=True)
class Estimate:
    """
    Time and cost of a campaign.

    :param stages: per-stage estimates.
    :param makespan_hours: from the first job to the last filtering job, with each stage limited to
        its max_parallel_jobs and shards flowing through stages independently.
    :param lower_bound_hours: no schedule can be shorter (busiest stage's work over its parallelism,
        or the longest chain of one shard plus its filtering).
    :param gpu_hours: GPU hours billed.
    :param cost_usd: on-demand cost.
    """

    stages: dict[str, StageEstimate]
    makespan_hours: float
    lower_bound_hours: float
    gpu_hours: float
    cost_usd: float

    def to_json(self) -> dict[str, Any]:
        """The estimate as plain JSON types."""
        return {
            "makespan_hours": round(self.makespan_hours, 4),
            "lower_bound_hours": round(self.lower_bound_hours, 4),
            "gpu_hours": round(self.gpu_hours, 4),
            "cost_usd": round(self.cost_usd, 2),
            "stages": {
                name: {
                    "instance_type": s.instance_type,
                    "jobs": s.jobs,
                    "gpu_hours": round(s.gpu_hours, 4),
                    "instance_hours": round(s.instance_hours, 4),
                    "makespan_hours": round(s.makespan_hours, 4),
                    "cost_usd": round(s.cost_usd, 2),
                }
                for name, s in self.stages.items()
            },
        }


@dataclass(frozen=True)
class Plan:
    """
    The shards of a campaign run and what they are expected to cost.

    :param shards: shards in plan order.
    :param estimate: time and cost.
    :param resources: per-stage instance type, parallelism, volume and max runtime.
    :param bundles: the planned spec bundles by spec path.
    :param num_designs: designs per spec.
    :param width: digits of design indices.
    :param stage_seconds: per shard id, per shard stage: estimated job seconds (provisioning excluded).
    :param filter_ids: per spec, the id of its filtering job (``f0000``...).
    """

    shards: tuple[Shard, ...]
    estimate: Estimate
    resources: dict[str, StageResources]
    bundles: dict[str, SpecBundle]
    num_designs: int
    width: int
    stage_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    filter_ids: dict[str, str] = field(default_factory=dict)

    @property
    def stages(self) -> tuple[str, ...]:
        """The shard stages that run (inverse folding is left out when skipped)."""
        return tuple(s for s in SHARD_STAGES if s in self.estimate.stages)

    def shards_of(self, spec: str) -> list[Shard]:
        """
        The shards holding work of ``spec``.

        :param spec: a spec path.
        """
        return [s for s in self.shards if any(item.spec == spec for item in s.items)]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON types."""
        return {
            "num_designs": self.num_designs,
            "width": self.width,
            "shards": [
                {
                    "id": shard.id,
                    "est_seconds": round(shard.est_seconds, 3),
                    "items": [item.to_json() for item in shard.items],
                }
                for shard in self.shards
            ],
            "filter_ids": self.filter_ids,
            "resources": {
                stage: {
                    "instance_type": r.instance_type.name,
                    "max_parallel_jobs": r.max_parallel_jobs,
                    "volume_gb": r.volume_gb,
                    "max_runtime_seconds": r.max_runtime_seconds,
                }
                for stage, r in self.resources.items()
            },
            "estimate": self.estimate.to_json(),
        }


def _lpt(durations: Iterable[float], bins: int) -> float:
    """Longest-processing-time-first makespan of ``durations`` on ``bins`` identical machines."""
    loads = [0.0] * max(bins, 1)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def _split(total: int, parts: int, batch: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal counts that are multiples of ``batch`` (but the last)."""
    chunk = math.ceil(total / parts)
    chunk = max(batch, math.ceil(chunk / batch) * batch)
    counts = []
    remaining = total
    while remaining > 0:
        counts.append(min(chunk, remaining))
        remaining -= counts[-1]
    return counts


def _schedule(ready: list[tuple[float, int]], durations: Mapping[int, float], slots: int) -> dict[int, float]:
    """List-schedule jobs in order of readiness on ``slots`` parallel slots; return end times."""
    free = [0.0] * max(slots, 1)
    ends: dict[int, float] = {}
    for at, job in sorted(ready):
        start = max(at, heapq.heappop(free))
        ends[job] = start + durations[job]
        heapq.heappush(free, ends[job])
    return ends


def plan_campaign(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    catalog: Catalog | None = None,
    *,
    num_designs: int | None = None,
    target_hours: float | None = None,
    max_shards: int | None = None,
    presets: Mapping[str, Any] | None = None,
    time_model: StageTimeModel | None = None,
) -> Plan:
    """
    Cut a campaign into shards and estimate its time and cost.

    Each spec's designs are split into work items of about equal runtime, sized so that one shard
    job (one item per GPU of the instance) runs about ``target_hours``; small specs stay whole and
    share shards; items are packed longest first onto the least loaded GPU slot. The shard count
    never exceeds ``max_shards`` (at most 1000: Airflow maps at most 1024 task instances).

    :param campaign: the campaign.
    :param bundles: its spec bundles (all valid).
    :param catalog: the instance catalog (default: packaged).
    :param num_designs: designs per spec (default: the campaign's).
    :param target_hours: runtime per shard job (default: the campaign's).
    :param max_shards: shard cap (default: the campaign's).
    :param presets: scaling presets (default: packaged).
    :param time_model: stage time model (default: packaged).
    :raises CampaignError: when a bundle has errors or there is nothing to plan.
    """
    file = str(campaign.source_path or "<campaign>")
    bad = [ConfigIssue("error", b.spec, "", e.removeprefix(f"{b.spec}: ")) for b in bundles for e in b.errors]
    if bad:
        raise CampaignError(bad)
    if not bundles:
        raise CampaignError.single(file, "design.specs", "no design specs found")
    specs = sorted(bundles, key=lambda b: b.spec)
    if len({b.spec for b in specs}) != len(specs):
        raise CampaignError.single(file, "design.specs", "the same spec is listed twice")
    design = campaign.design
    n = num_designs if num_designs is not None else design.num_designs
    if n < 1:
        raise CampaignError.single(file, "design.num_designs", "must be at least 1")
    target = (target_hours if target_hours is not None else campaign.sharding.target_hours) * 3600
    cap = min(max_shards if max_shards is not None else campaign.sharding.max_shards, MAX_SHARDS)
    model = time_model or load_time_model()
    resources = resolve_resources(campaign, n * len(specs), catalog or load_catalog(), presets)
    width = design_width(n)
    batch = design.diffusion_batch_size or (1 if n < 100 else 10)
    stages = [s for s in SHARD_STAGES if not (s == "inverse_folding" and design.skip_inverse_folding)]
    gpu_stages = [s for s in stages if s in GPU_STAGES]

    per_design: dict[str, dict[str, float]] = {}
    for bundle in specs:
        per_design[bundle.spec] = {
            s: model.seconds_per_design(
                s,
                bundle.residues,
                resources[s].instance_type.gpu_model,
                protocol=design.protocol,
                inverse_fold_num_sequences=design.inverse_fold_num_sequences,
                skip_inverse_folding=design.skip_inverse_folding,
            )
            for s in stages
        }
    bottleneck = {spec: max(times[s] for s in gpu_stages) for spec, times in per_design.items()}
    gpus = min(resources[s].instance_type.gpus for s in gpu_stages)

    total_work = sum(n * bottleneck[b.spec] for b in specs)
    shard_count = min(cap, max(1, math.ceil(total_work / (gpus * target))))
    item_seconds = total_work / (shard_count * gpus)

    items: list[WorkItem] = []
    for bundle in specs:
        per_item = bottleneck[bundle.spec]
        parts = max(1, min(n, round(n * per_item / item_seconds)))
        start = 0
        for count in _split(n, parts, batch):
            items.append(WorkItem(bundle.spec, start, count, width, bundle.residues, count * per_item))
            start += count

    slots = shard_count * gpus
    loads = [(0.0, slot) for slot in range(slots)]
    assigned: dict[int, list[WorkItem]] = {}
    for item in sorted(items, key=lambda i: (-i.est_seconds, i.spec, i.start)):
        load, slot = heapq.heappop(loads)
        assigned.setdefault(slot // gpus, []).append(item)
        heapq.heappush(loads, (load + item.est_seconds, slot))
    groups = sorted(
        (sorted(group, key=lambda i: (i.spec, i.start)) for group in assigned.values()),
        key=lambda g: (g[0].spec, g[0].start),
    )

    shards: list[Shard] = []
    stage_seconds: dict[str, dict[str, float]] = {}
    for index, group in enumerate(groups):
        shard_id = f"s{index:04d}"
        seconds: dict[str, float] = {}
        for stage in stages:
            durations = [i.count * per_design[i.spec][stage] for i in group]
            if stage in GPU_STAGES:
                seconds[stage] = _lpt(durations, resources[stage].instance_type.gpus)
            else:
                seconds[stage] = sum(durations)
        stage_seconds[shard_id] = seconds
        shards.append(Shard(shard_id, tuple(group), max(seconds[s] for s in gpu_stages)))

    filter_ids = {b.spec: f"f{i:04d}" for i, b in enumerate(specs)}
    estimate = _estimate(shards, stage_seconds, stages, resources, model, n=n, filter_ids=filter_ids)
    return Plan(
        shards=tuple(shards),
        estimate=estimate,
        resources=resources,
        bundles={b.spec: b for b in specs},
        num_designs=n,
        width=width,
        stage_seconds=stage_seconds,
        filter_ids=filter_ids,
    )


def _estimate(
    shards: Sequence[Shard],
    stage_seconds: Mapping[str, Mapping[str, float]],
    stages: Sequence[str],
    resources: Mapping[str, StageResources],
    model: StageTimeModel,
    *,
    n: int,
    filter_ids: Mapping[str, str],
) -> Estimate:
    overhead = model.provisioning_seconds
    ready = dict.fromkeys(range(len(shards)), 0.0)
    chain = dict.fromkeys(range(len(shards)), 0.0)
    per_stage: dict[str, StageEstimate] = {}
    lower = 0.0
    for stage in stages:
        res = resources[stage]
        durations = {k: overhead + stage_seconds[s.id][stage] for k, s in enumerate(shards)}
        starts = {k: ready[k] for k in durations}
        ends = _schedule([(ready[k], k) for k in durations], durations, res.max_parallel_jobs)
        busy = sum(durations.values())
        lower = max(lower, busy / res.max_parallel_jobs)
        for k, duration in durations.items():
            chain[k] += duration
        per_stage[stage] = _stage_estimate(stage, res, busy, min(starts.values()), ends)
        ready = ends

    spec_ready: dict[str, float] = {}
    spec_chain: dict[str, float] = {}
    for k, shard in enumerate(shards):
        for spec in shard.specs:
            spec_ready[spec] = max(spec_ready.get(spec, 0.0), ready[k])
            spec_chain[spec] = max(spec_chain.get(spec, 0.0), chain[k])
    res = resources["filtering"]
    order = sorted(filter_ids)
    durations = {i: overhead + model.filtering_seconds(n) for i in range(len(order))}
    ends = _schedule(
        [(spec_ready[spec], i) for i, spec in enumerate(order)], durations, res.max_parallel_jobs
    )
    busy = sum(durations.values())
    lower = max(lower, busy / res.max_parallel_jobs)
    lower = max(lower, *(spec_chain[spec] + durations[i] for i, spec in enumerate(order)))
    first = min(spec_ready.values())
    per_stage["filtering"] = _stage_estimate("filtering", res, busy, first, ends)
    makespan = max(ends.values())
    return Estimate(
        stages=per_stage,
        makespan_hours=makespan / 3600,
        lower_bound_hours=lower / 3600,
        gpu_hours=sum(s.gpu_hours for s in per_stage.values()),
        cost_usd=sum(s.cost_usd for s in per_stage.values()),
    )


def _stage_estimate(
    stage: str, res: StageResources, busy: float, first_start: float, ends: Mapping[int, float]
) -> StageEstimate:
    hours = busy / 3600
    return StageEstimate(
        stage=stage,
        instance_type=res.instance_type.name,
        jobs=len(ends),
        gpu_hours=hours * res.instance_type.gpus,
        instance_hours=hours,
        makespan_hours=(max(ends.values()) - first_start) / 3600 if ends else 0.0,
        cost_usd=hours * res.instance_type.price_per_hour,
    )


def _canonical_items(items: Iterable[WorkItem | Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for item in items:
        if isinstance(item, WorkItem):
            rows.append([item.spec, item.start, item.count, item.width])
        else:
            rows.append([item["spec"], int(item["start"]), int(item["count"]), int(item["width"])])
    return sorted(rows)


def cache_key(
    stage: str,
    *,
    params: Mapping[str, Any],
    bundle_hashes: Iterable[str],
    items: Iterable[WorkItem | Mapping[str, Any]],
    image_uri: str,
    upstream_key: str | None,
) -> str:
    """
    Content key of a shard stage's output: it changes exactly when the output would.

    Residue and runtime estimates are not part of it (they do not change what BoltzGen writes).

    :param stage: the stage.
    :param params: the stage's parameters (see :func:`stage_params`).
    :param bundle_hashes: hashes of the bundles the shard reads.
    :param items: the shard's work items (WorkItem or mappings with spec, start, count, width).
    :param image_uri: the processing image.
    :param upstream_key: the previous stage's key for this shard (None for design).
    :return: 32 hex digits.
    """
    document = {
        "v": 1,
        "stage": stage,
        "params": params,
        "bundles": sorted(set(bundle_hashes)),
        "items": _canonical_items(items),
        "image": image_uri,
        "upstream": upstream_key,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stage_params(campaign: Campaign, stage: str) -> dict[str, Any]:
    """
    The campaign settings that determine a stage's output (the ``params`` of :func:`cache_key`).

    :param campaign: the campaign.
    :param stage: the stage.
    """
    design = campaign.design
    steps = design.step_config
    if stage == "design":
        batch = design.diffusion_batch_size or (1 if design.num_designs < 100 else 10)
        return {
            "protocol": design.protocol,
            "diffusion_batch_size": batch,
            "step_config": steps.get("design", {}),
        }
    if stage == "inverse_folding":
        return {
            "protocol": design.protocol,
            "inverse_fold_num_sequences": design.inverse_fold_num_sequences,
            "skip_inverse_folding": design.skip_inverse_folding,
            "step_config": steps.get("inverse_folding", {}),
        }
    if stage == "folding":
        return {
            "protocol": design.protocol,
            "step_config": {s: steps.get(s, {}) for s in ("folding", "design_folding", "affinity")},
        }
    if stage == "analysis":
        return {"protocol": design.protocol, "step_config": steps.get("analysis", {})}
    if stage == "filtering":
        return {
            "protocol": design.protocol,
            "budget": design.budget,
            "alpha": design.alpha,
            "filter_biased": design.filter_biased,
            "metrics_override": design.metrics_override,
            "additional_filters": design.additional_filters,
            "size_buckets": design.size_buckets,
            "refolding_rmsd_threshold": design.refolding_rmsd_threshold,
            "step_config": steps.get("filtering", {}),
        }
    raise ValueError(f"unknown stage {stage!r}")

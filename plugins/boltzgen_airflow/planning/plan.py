"""
Planning: work items packed into shards, the stage time and cost model, cache keys and design ids.

Everything here is a pure function of its arguments (plus the packaged data files), so the same
campaign and specs always give the same plan.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import heapq
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boltzgen_airflow.campaign.catalog import (
    Catalog,
    StageResources,
    load_catalog,
    read_yaml,
    resolve_resources,
)
from boltzgen_airflow.campaign.model import MAX_SHARDS, Campaign, step_contract
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.settings import configs_dir
from boltzgen_airflow.stages import GPU_STAGES, SHARD_STAGES, STAGES, fused_hosts, shard_stages

DESIGN_FOLDING_PROTOCOLS = frozenset({"protein-anything", "protein-small_molecule"})
AFFINITY_PROTOCOLS = frozenset({"protein-small_molecule"})
# Each shard job's longest stage should run at least this many provisioning overheads: a shorter job
# pays more for starting than for working, so splitting further to fill idle GPUs would waste money.
MIN_JOB_PROVISIONINGS = 3.0
# The granularities (hours of a shard job's longest stage) that ``target_hours: auto`` chooses from.
AUTO_TARGET_HOURS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 36.0)
# No job is planned past this share of its stage's max runtime: an estimate that is off by a third
# still finishes instead of being stopped with its work lost.
MAX_RUNTIME_FRACTION = 0.75
# Granularities whose makespans are this close to the fastest count as equally fast (then the cheapest).
AUTO_MAKESPAN_TOLERANCE = 0.005
# With ``sharding.pack_filtering``: the most filtering work (hours) one packed filtering job may
# hold; the estimate tries each (and one job per spec) and keeps the fastest, then cheapest.
FILTER_PACK_HOURS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
# The tails and small specs packed into mixed shards are cut into pieces of this fraction of a
# GPU's share (whole batches), so that the packing evens the GPUs' loads.
REST_PIECES = 4
# ... but no piece runs less than this many model loads (each piece is one BoltzGen process).
MIN_PIECE_LOADS = 10.0
# Where analysis follows folding in one job (``contract.FOLLOWS``), each item may be cut into up to
# this many pieces (whole batches, each still ``MIN_PIECE_LOADS`` model loads), so that the analysis
# left when the GPUs finish is one piece's; only when the job then ends this much sooner (the CPUs
# the analysis shares with folding's processes are not modelled, and each piece loads the models).
MAX_FOLLOW_PIECES = 4
MIN_FOLLOW_GAIN = 0.02
# ... and packed to end together, the last job holding this many of the largest spec's filtering.
FILTER_TAIL_SPECS = (1.0, 2.0, 4.0, 8.0)
# The fusings ``stages.fuse: auto`` compares: every stage in its own job; the short inverse folding
# in the design job; analysis in the folding job too; every shard stage in the design job.
AUTO_FUSE: tuple[tuple[str, ...], ...] = (
    (),
    ("inverse_folding",),
    ("inverse_folding", "analysis"),
    ("inverse_folding", "folding", "analysis"),
)


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
        self.model_load_seconds: dict[str, float] = {
            k: float(v) for k, v in (data.get("model_load_seconds") or {}).items()
        }
        self.calibrated: dict[str, str] = {str(k): str(v) for k, v in (data.get("calibrated") or {}).items()}
        self.data: dict[str, Any] = dict(data)

    def figures(self) -> dict[str, str]:
        """
        Each figure the estimate uses and where it comes from: how it was calibrated, or ``default``.
        """
        names = [*self.gpu_table, *self.cpu_table, "provisioning_seconds_per_job", "model_load_seconds"]
        return {name: self.calibrated.get(name, "default") for name in names}

    def load_seconds(self, stage: str) -> float:
        """
        Seconds one BoltzGen process of ``stage`` spends before its first design (loading weights).

        :param stage: a shard stage.
        """
        return self.model_load_seconds.get(stage, 0.0)

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
def _load_time_model(path: Path, mtime_ns: int) -> StageTimeModel:
    data = read_yaml(path)
    try:
        return StageTimeModel(data)
    except (KeyError, TypeError, ValueError) as err:
        raise CampaignError.single(str(path), "", f"invalid stage time model: {err}") from None


def load_time_model(path: str | Path | None = None) -> StageTimeModel:
    """
    Load the stage time model (cached per path and modification time).

    :param path: a time model YAML; default ``include/configs/stage_time_model.yaml``.
    """
    file = Path(path) if path else configs_dir() / "stage_time_model.yaml"
    try:
        mtime_ns = file.stat().st_mtime_ns
    except OSError:
        mtime_ns = 0  # read_yaml names the missing file
    return _load_time_model(file, mtime_ns)


def campaign_time_model(campaign: Campaign) -> StageTimeModel:
    """
    The campaign's time model: ``sharding.time_model`` (relative to the campaign file), else the
    packaged one.

    :param campaign: the campaign.
    :raises CampaignError: naming the setting when the file is missing or not a time model.
    """
    name = campaign.sharding.time_model
    if name is None:
        return load_time_model()
    base = campaign.source_path.parent if campaign.source_path else Path.cwd()
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        file = str(campaign.source_path or "<campaign>")
        raise CampaignError.single(file, "sharding.time_model", f"{path} not found")
    return load_time_model(path)


@dataclass(frozen=True)
class TimingSample:
    """
    One BoltzGen process of a committed stage: its work item and how long it ran.

    :param stage: the shard stage.
    :param residues: the spec's residue estimate.
    :param count: designs of the item.
    :param seconds: the process's wall seconds (from the manifest's timings).
    :param gpu_model: the GPU it ran on (None for CPU stages).
    """

    stage: str
    residues: int
    count: int
    seconds: float
    gpu_model: str | None


def _fit_line(xs: Sequence[float], ys: Sequence[float], intercept: float) -> tuple[float, float]:
    """Least squares ``y = a + b x`` with ``a >= 0``; ``intercept`` stands when the xs cannot fix it."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if len(xs) >= 2 and spread > 0:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
        a = mean_y - slope * mean_x
        if a >= 0 and slope > 0:
            return a, slope
        intercept = 0.0
    return intercept, max(sum(ys) - intercept * len(ys), 0.0) / sum(xs)


# The tables of the time model that a stage's timings scale.
_STAGE_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "design": ("gpu_seconds_per_design", ("design",)),
    "inverse_folding": ("gpu_seconds_per_design", ("inverse_folding",)),
    "folding": ("gpu_seconds_per_design", ("folding", "affinity")),
    "analysis": ("cpu_seconds_per_design", ("analysis",)),
}


def _fit_stage(
    model: StageTimeModel, stage: str, samples: Sequence[TimingSample], campaign: Campaign
) -> tuple[float, float] | None:
    """(load seconds, scale of the stage's tables) fitted to ``samples`` of one stage, if they can."""
    design = campaign.design
    # A GPU stage's process whose GPU is unknown cannot be compared with the model.
    mine = [
        t for t in samples if t.stage == stage and t.count > 0 and (t.gpu_model or stage not in GPU_STAGES)
    ]
    xs = [
        t.count
        * model.seconds_per_design(
            stage,
            t.residues,
            t.gpu_model,
            protocol=design.protocol,
            inverse_fold_num_sequences=design.inverse_fold_num_sequences,
        )
        for t in mine
    ]
    if not mine or not sum(xs) > 0:
        return None
    return _fit_line(xs, [t.seconds for t in mine], model.load_seconds(stage))


def calibrate_time_model(
    model: StageTimeModel,
    samples: Sequence[TimingSample],
    provisioning: Sequence[float],
    *,
    campaign: Campaign,
) -> dict[str, Any]:
    """
    The time model's data refitted to what ran: per stage, seconds = load + scale x the model's
    estimate (scale multiplies the stage's table, load is ``model_load_seconds``), and the median
    provisioning. Figures without samples keep their values; ``calibrated`` says which were fitted.

    :param model: the model the samples are compared with.
    :param samples: per-process timings of committed stages.
    :param provisioning: seconds from a job's creation to its script's start.
    :param campaign: the campaign whose settings (protocol, sequences) the samples ran with.
    :return: data for :class:`StageTimeModel` (write it as YAML to reuse it).
    """
    data = json.loads(json.dumps(model.data))
    loads = dict(model.model_load_seconds)
    calibrated = dict(model.calibrated)
    for stage, (table, names) in _STAGE_TABLES.items():
        fit = _fit_stage(model, stage, samples, campaign)
        if fit is None:
            continue
        loads[stage], scale = fit
        processes = sum(1 for t in samples if t.stage == stage and (t.gpu_model or stage not in GPU_STAGES))
        for name in names:
            data[table][name] = [round(v * scale, 4) for v in data[table][name]]
            calibrated[name] = f"{processes} processes, x{scale:.3f} of the previous model"
        calibrated["model_load_seconds"] = "fitted per stage (the intercept of its processes' seconds)"
    if provisioning:
        data["provisioning_seconds_per_job"] = round(statistics.median(provisioning), 1)
        calibrated["provisioning_seconds_per_job"] = f"median of {len(provisioning)} jobs"
    data["model_load_seconds"] = {k: round(v, 2) for k, v in loads.items()}
    data["calibrated"] = calibrated
    return data


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
    :param makespan_hours: from the first job to the last filtering job, list-scheduled as the DAG
        runs: stages on one instance type share its pool, a shard's stage starts after its previous
        stage, a spec's filtering after all its shards, every job pays the provisioning overhead.
    :param lower_bound_hours: no plan can be shorter: per pool, its work over its GPUs (instances
        for CPU stages) plus one provisioning, or one design's chain of jobs through every stage.
    :param gpu_hours: GPU hours billed.
    :param cost_usd: on-demand cost.
    :param figures: each figure of the time model and whether it is calibrated or a default.
    """

    stages: dict[str, StageEstimate]
    makespan_hours: float
    lower_bound_hours: float
    gpu_hours: float
    cost_usd: float
    figures: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The estimate as plain JSON types."""
        return {
            "makespan_hours": round(self.makespan_hours, 4),
            "lower_bound_hours": round(self.lower_bound_hours, 4),
            "gpu_hours": round(self.gpu_hours, 4),
            "cost_usd": round(self.cost_usd, 2),
            "figures": self.figures,
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
    :param fused: per stage run inside another stage's job (``stages.fuse``), that stage.
    :param filtering_jobs: the specs of each filtering job the estimate counts: one per spec, or
        packed with ``sharding.pack_filtering``.
    :param choices: per setting the planner chose (``auto``), what it chose and why.
    """

    shards: tuple[Shard, ...]
    estimate: Estimate
    resources: dict[str, StageResources]
    bundles: dict[str, SpecBundle]
    num_designs: int
    width: int
    stage_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    filter_ids: dict[str, str] = field(default_factory=dict)
    fused: dict[str, str] = field(default_factory=dict)
    filtering_jobs: tuple[tuple[str, ...], ...] = ()
    choices: dict[str, str] = field(default_factory=dict)

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
            "fused": self.fused,
            "filtering_jobs": [list(specs) for specs in self.filtering_jobs],
            "choices": self.choices,
            "resources": {
                stage: {
                    "instance_type": r.instance_type.name,
                    "max_parallel_jobs": r.max_parallel_jobs,
                    "volume_gb": r.volume_gb,
                    "max_runtime_seconds": r.max_runtime_seconds,
                    "fallback_instance_types": [f.name for f in r.fallbacks],
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


def _batch_floor(designs: float, batch: int) -> int:
    """``designs`` rounded down to a multiple of ``batch``, at least one batch."""
    return max(batch, int(designs // batch) * batch)


def _batch_ceil(designs: float, batch: int) -> int:
    """``designs`` rounded up to a multiple of ``batch``, at least one batch."""
    return max(batch, math.ceil(designs / batch) * batch)


def _pools(resources: Mapping[str, StageResources], stages: Sequence[str]) -> dict[str, int]:
    """Slots per pool: the stages sharing an instance type share one Airflow pool (the larger size wins)."""
    slots: dict[str, int] = {}
    for stage in stages:
        res = resources[stage]
        slots[res.pool] = max(slots.get(res.pool, 0), res.max_parallel_jobs)
    return slots


def _gpu_share(work: float, gpus: int, slots: int, target: float, min_job: float) -> tuple[float, bool]:
    """
    Seconds of the longest stage that one GPU of a shard job should run.

    When the work fills every GPU of the pool at ``target``, the share is ``target`` (independent of
    the amount of work, so item boundaries do not move when designs are added). Otherwise the work
    is spread over as many shards as the pool runs at once, but no shard job below ``min_job``.

    :param work: longest-stage GPU seconds of the campaign.
    :param gpus: GPUs per instance.
    :param slots: jobs the pool runs at once.
    :param target: the target runtime of a shard job (upper bound).
    :param min_job: the shortest useful shard job.
    :return: the share and whether the target decides it.
    """
    if work >= gpus * target * slots:
        return target, True
    shards = min(slots, max(1, math.floor(work / (gpus * min_job))))
    return min(target, max(min_job, work / (shards * gpus))), False


def _cut(
    specs: Sequence[SpecBundle],
    bottleneck: Mapping[str, float],
    *,
    counts: Mapping[str, int],
    starts: Mapping[str, int],
    width: int,
    batch: int,
    gpus: int,
    share: float,
    at_target: bool,
    target: float,
) -> tuple[list[list[WorkItem]], list[WorkItem]]:
    """
    Cut every spec into whole shards of ``gpus`` items of one GPU ``share`` each, plus a remainder.

    Item boundaries depend on the spec, the batch and the share only; a spec's shards start at
    its first design, so adding designs appends shards and leaves the earlier ones as they were.

    :param specs: the specs.
    :param bottleneck: per spec, seconds per design of its longest GPU stage.
    :param counts: designs of each spec.
    :param starts: each spec's first design index (0 unless earlier rounds made designs before it).
    :param width: digits of design indices.
    :param batch: the diffusion batch (items are multiples of it, but a spec's last).
    :param gpus: GPUs per instance (items per whole shard).
    :param share: longest-stage seconds per GPU.
    :param at_target: the share is the target (round items down, never past it).
    :param target: the target runtime of a shard job.
    :return: the whole shards and the remainder items (tails and small specs) still to pack.
    """
    groups: list[list[WorkItem]] = []
    rest: list[WorkItem] = []
    for bundle in specs:
        n, first = counts[bundle.spec], starts.get(bundle.spec, 0)
        seconds = bottleneck[bundle.spec]
        designs = share / seconds if seconds > 0 else float(n)
        # At the target, round down (the target bounds a job); below it, round up so the shards
        # stay within the pool's slots.
        per_item = _batch_ceil(designs, batch)
        if at_target or per_item * seconds > target:
            per_item = _batch_floor(designs, batch)
        chunk = per_item * gpus

        def item(start: int, count: int, bundle: SpecBundle = bundle, seconds: float = seconds) -> WorkItem:
            return WorkItem(bundle.spec, start, count, width, bundle.residues, count * seconds)

        full = n // chunk if n > chunk else 0
        for index in range(full):
            base = first + index * chunk
            groups.append([item(base + k * per_item, per_item) for k in range(gpus)])
        start, end = first + full * chunk, first + n
        while start < end:
            count = min(per_item, end - start)
            rest.append(item(start, count))
            start += count
    return groups, rest


def _pack(
    items: Sequence[WorkItem], shards: int, gpus: int, weight: Mapping[str, float] | None = None
) -> list[list[WorkItem]]:
    """
    Pack ``items`` longest first onto the least loaded GPU of ``shards`` shards (empty ones dropped).

    :param weight: per spec, seconds per design an item adds to its GPU's load (default: the
        item's ``est_seconds``).
    """
    loads = [(0.0, slot) for slot in range(max(shards, 1) * gpus)]
    assigned: dict[int, list[WorkItem]] = {}

    def cost(item: WorkItem) -> float:
        return item.count * weight[item.spec] if weight else item.est_seconds

    for it in sorted(items, key=lambda i: (-cost(i), i.spec, i.start)):
        load, slot = heapq.heappop(loads)
        assigned.setdefault(slot // gpus, []).append(it)
        heapq.heappush(loads, (load + cost(it), slot))
    return list(assigned.values())


def _job_weight(inputs: _Inputs) -> dict[str, float]:
    """
    Per spec, seconds per design a mixed shard's GPU spends: every GPU stage, and its share of the
    CPU analysis that runs through the shard's items one after another.
    """
    gpus = max(inputs.gpus, 1)
    return {
        spec: sum(times[s] for s in inputs.gpu_stages) + times.get("analysis", 0.0) / gpus
        for spec, times in inputs.per_design.items()
    }


@dataclass(frozen=True)
class _Inputs:
    """What every granularity of one campaign's plan shares: specs, resources and per-design times."""

    specs: tuple[SpecBundle, ...]
    n: int
    counts: dict[str, int]
    starts: dict[str, int]
    width: int
    batch: int
    stages: tuple[str, ...]
    gpu_stages: tuple[str, ...]
    resources: dict[str, StageResources]
    model: StageTimeModel
    per_design: dict[str, dict[str, float]]
    bottleneck: dict[str, float]
    gpus: int
    slots: int
    cap: int
    max_job_usd: float
    fused: dict[str, str]
    pack_filtering: bool | str


def _checked_specs(campaign: Campaign, bundles: Sequence[SpecBundle], n: int) -> list[SpecBundle]:
    file = str(campaign.source_path or "<campaign>")
    bad = [ConfigIssue("error", b.spec, "", e.removeprefix(f"{b.spec}: ")) for b in bundles for e in b.errors]
    if bad:
        raise CampaignError(bad)
    if not bundles:
        raise CampaignError.single(file, "design.specs", "no design specs found")
    specs = sorted(bundles, key=lambda b: b.spec)
    if len({b.spec for b in specs}) != len(specs):
        raise CampaignError.single(file, "design.specs", "the same spec is listed twice")
    if n < 1:
        raise CampaignError.single(file, "design.num_designs", "must be at least 1")
    return specs


def _inputs(
    campaign: Campaign,
    specs: Sequence[SpecBundle],
    n: int,
    *,
    resources: dict[str, StageResources],
    model: StageTimeModel,
    cap: int,
    counts: Mapping[str, int] | None = None,
    starts: Mapping[str, int] | None = None,
    width: int | None = None,
    fuse: Sequence[str] = (),
) -> _Inputs:
    design = campaign.design
    stages = shard_stages(design.skip_inverse_folding)
    gpu_stages = tuple(s for s in stages if s in GPU_STAGES)
    fused = fused_hosts(stages, fuse)
    # A fused stage runs on its host's instance (a GPU stage on the host's GPUs).
    per_design = {
        b.spec: {
            s: model.seconds_per_design(
                s,
                b.residues,
                resources[fused.get(s, s)].instance_type.gpu_model,
                protocol=design.protocol,
                inverse_fold_num_sequences=design.inverse_fold_num_sequences,
                skip_inverse_folding=design.skip_inverse_folding,
            )
            for s in stages
        }
        for b in specs
    }
    dominant = max(gpu_stages, key=lambda s: sum(per_design[b.spec][s] for b in specs))
    return _Inputs(
        specs=tuple(specs),
        n=n,
        counts={b.spec: (counts or {}).get(b.spec, n) for b in specs},
        starts={b.spec: (starts or {}).get(b.spec, 0) for b in specs},
        width=width if width is not None else design_width(n),
        batch=design.diffusion_batch_size or (1 if n < 100 else 10),
        stages=stages,
        gpu_stages=gpu_stages,
        resources=resources,
        model=model,
        per_design=per_design,
        bottleneck={spec: max(times[s] for s in gpu_stages) for spec, times in per_design.items()},
        gpus=min(resources[s].instance_type.gpus for s in gpu_stages),
        slots=_pools(resources, [*stages, "filtering"])[resources[dominant].pool],
        cap=cap,
        max_job_usd=campaign.sharding.max_job_usd,
        fused=fused,
        pack_filtering=campaign.sharding.pack_filtering,
    )


def _groups(inputs: _Inputs, target: float) -> list[list[WorkItem]]:
    """The work items of each shard at a granularity of ``target`` seconds (see :func:`plan_campaign`)."""
    gpus = inputs.gpus
    total_work = sum(inputs.counts[b.spec] * inputs.bottleneck[b.spec] for b in inputs.specs)
    min_job = min(target, MIN_JOB_PROVISIONINGS * inputs.model.provisioning_seconds)
    share, at_target = _gpu_share(total_work, gpus, inputs.slots, target, min_job)
    while True:
        full, rest = _cut(
            inputs.specs,
            inputs.bottleneck,
            counts=inputs.counts,
            starts=inputs.starts,
            width=inputs.width,
            batch=inputs.batch,
            gpus=gpus,
            share=share,
            at_target=at_target,
            target=target,
        )
        rest_work = sum(i.est_seconds for i in rest)
        # The tolerance keeps float noise from opening one more shard than the pool has slots.
        mixed = math.ceil(rest_work / (gpus * share) - 1e-9) if rest else 0
        if rest:
            mixed = max(1, min(mixed, len(rest)))
        if len(full) + mixed <= inputs.cap:
            return full + _pack(_finer(inputs, rest, share / REST_PIECES), mixed, gpus, _job_weight(inputs))
        # Over the cap: longer shards (past the target), the only way to fewer.
        share *= max(1.05, (len(full) + mixed) / inputs.cap)
        at_target = True


def _finer(inputs: _Inputs, items: Sequence[WorkItem], piece: float) -> list[WorkItem]:
    """
    ``items`` cut into pieces of about ``piece`` seconds (whole diffusion batches), so that packing
    them onto the GPUs of the mixed shards evens their loads; a piece still runs at least
    ``MIN_PIECE_LOADS`` times the model load of a process.
    """
    piece = max(piece, MIN_PIECE_LOADS * _model_load(inputs))
    result: list[WorkItem] = []
    for item in items:
        pieces = math.floor(item.est_seconds / piece) if piece > 0 else 1
        result.extend(_in_pieces(item, _batch_ceil(item.count / max(pieces, 1), inputs.batch)))
    return result


def _model_load(inputs: _Inputs) -> float:
    """The longest model load of a GPU stage's process."""
    return max(inputs.model.load_seconds(s) for s in inputs.gpu_stages)


def _in_pieces(item: WorkItem, size: int) -> list[WorkItem]:
    """``item`` cut into pieces of ``size`` designs (the last one shorter)."""
    per_design = item.est_seconds / item.count
    end = item.start + item.count
    return [
        WorkItem(item.spec, start, count, item.width, item.residues, count * per_design)
        for start in range(item.start, end, size)
        for count in (min(size, end - start),)
    ]


def _shards(inputs: _Inputs, groups: list[list[WorkItem]]) -> tuple[list[Shard], dict[str, dict[str, float]]]:
    """Shards with ids longest first (the order the pools start them) and their stage seconds."""
    timed: list[tuple[float, list[WorkItem], dict[str, float]]] = []
    # Whole shards of a spec have items of the same sizes: their pieces and times are computed once.
    shapes: dict[tuple[tuple[str, int], ...], tuple[int, dict[str, float]]] = {}
    for found in groups:
        group = sorted(found, key=lambda i: (i.spec, i.start))
        shape = tuple((i.spec, i.count) for i in group)
        if shape not in shapes:
            shapes[shape] = _follow_pieces(inputs, group)
        pieces, seconds = shapes[shape]
        group, seconds = _pieces(inputs, group, pieces), dict(seconds)
        timed.append((max(seconds[s] for s in inputs.gpu_stages), group, seconds))
    timed.sort(key=lambda t: (-round(t[0], 6), t[1][0].spec, t[1][0].start))
    shards = [Shard(f"s{i:04d}", tuple(group), longest) for i, (longest, group, _) in enumerate(timed)]
    return shards, {shard.id: seconds for shard, (_, _, seconds) in zip(shards, timed, strict=True)}


def _durations(inputs: _Inputs, group: Sequence[WorkItem], stage: str) -> list[float]:
    """Seconds of each item's process in ``stage`` (the model load included)."""
    load = inputs.model.load_seconds(stage)
    return [load + i.count * inputs.per_design[i.spec][stage] for i in group]


def _stage_seconds(inputs: _Inputs, group: Sequence[WorkItem]) -> dict[str, float]:
    """
    Per stage, the seconds a shard of ``group`` (in spec, start order) adds to the job that runs
    it: a GPU stage's busiest GPU, a CPU stage's items one after another, and a stage following its
    host only what it runs after the host has ended.
    """
    seconds: dict[str, float] = {}
    for stage in inputs.stages:
        durations = _durations(inputs, group, stage)
        if stage in GPU_STAGES:
            seconds[stage] = _lpt(durations, _gpus_running(inputs, stage))
        else:
            seconds[stage] = sum(durations)
    for guest, host in _following(inputs):
        seconds[guest] = max(0.0, _followed(inputs, group, guest, host) - seconds[host])
    return seconds


def _gpus_running(inputs: _Inputs, stage: str) -> int:
    """GPUs of the instance whose job runs ``stage`` (its host's when fused)."""
    return inputs.resources[inputs.fused.get(stage, stage)].instance_type.gpus


def _following(inputs: _Inputs) -> tuple[tuple[str, str], ...]:
    """(guest, host) for each fused stage that runs beside its host item by item (``contract.FOLLOWS``)."""
    fused = inputs.fused
    return tuple(
        (guest, host)
        for guest, host in step_contract().FOLLOWS.items()
        if guest in fused and host in inputs.stages and fused[guest] == fused.get(host, host)
    )


def _followed(inputs: _Inputs, group: Sequence[WorkItem], guest: str, host: str) -> float:
    """
    Seconds until ``guest`` ends when it follows ``host`` item by item in one job: ``host`` on the
    GPUs in the order the step scripts run it, ``guest`` one item at a time on the CPUs
    (``contract.followed_seconds``).
    """
    return float(
        step_contract().followed_seconds(
            [i.est_seconds for i in group],
            _durations(inputs, group, host),
            _durations(inputs, group, guest),
            _gpus_running(inputs, host),
        )
    )


def _follow_pieces(inputs: _Inputs, group: list[WorkItem]) -> tuple[int, dict[str, float]]:
    """
    Into how many pieces (2 to ``MAX_FOLLOW_PIECES``, see :func:`_split`) to cut each item of
    ``group`` so that a following stage ends the shard's jobs at least ``MIN_FOLLOW_GAIN`` sooner
    (the fastest such cut), or 1; and the stage seconds of the group so cut. Depends on the items'
    specs and sizes alone, so a whole shard keeps its pieces when designs are added.
    """
    seconds = _stage_seconds(inputs, group)
    following = _following(inputs)
    plain = sum(_job_seconds(seconds, inputs.fused).values())
    # Pieces shorten what the following stage runs after its host; less than the gain is no use.
    if not following or sum(seconds[guest] for guest, _ in following) < MIN_FOLLOW_GAIN * plain:
        return 1, seconds
    best = (plain, 1, seconds)
    for pieces in range(2, MAX_FOLLOW_PIECES + 1):
        cut = _pieces(inputs, group, pieces)
        if len(cut) == len(group):
            break
        timed = _stage_seconds(inputs, cut)
        chain = sum(_job_seconds(timed, inputs.fused).values())
        if chain < best[0]:
            best = (chain, pieces, timed)
    if best[0] <= (1 - MIN_FOLLOW_GAIN) * plain:
        return best[1], best[2]
    return 1, seconds


def _pieces(inputs: _Inputs, group: Sequence[WorkItem], pieces: int) -> list[WorkItem]:
    return [piece for item in group for piece in _split(inputs, item, pieces)] if pieces > 1 else list(group)


def _split(inputs: _Inputs, item: WorkItem, pieces: int) -> list[WorkItem]:
    """``item`` in ``pieces`` pieces of whole batches (fewer where a piece would run under
    ``MIN_PIECE_LOADS`` model loads)."""
    size = _batch_ceil(item.count / pieces, inputs.batch)
    if size >= item.count or size * item.est_seconds / item.count < MIN_PIECE_LOADS * _model_load(inputs):
        return [item]
    return _in_pieces(item, size)


def _plan_of(
    inputs: _Inputs,
    shards: list[Shard],
    stage_seconds: dict[str, dict[str, float]],
    filtering_jobs: Sequence[tuple[str, ...]] | None = None,
) -> Plan:
    """The plan of ``shards`` with its estimate (one filtering job per spec unless packed)."""
    filter_ids = {b.spec: f"f{i:04d}" for i, b in enumerate(inputs.specs)}
    jobs = tuple(filtering_jobs or ((b.spec,) for b in inputs.specs))
    estimate, _ = _estimate(inputs, shards, stage_seconds, filter_ids=filter_ids, filtering_jobs=jobs)
    return Plan(
        shards=tuple(shards),
        estimate=estimate,
        resources=inputs.resources,
        bundles={b.spec: b for b in inputs.specs},
        num_designs=inputs.n,
        width=inputs.width,
        stage_seconds=stage_seconds,
        filter_ids=filter_ids,
        fused=dict(inputs.fused),
        filtering_jobs=jobs,
    )


def _within_limits(stage_seconds: Mapping[str, Mapping[str, float]], inputs: _Inputs) -> bool:
    """Every job runs under its share of the stage's max runtime and costs what a failure may."""
    overhead = inputs.model.provisioning_seconds
    for seconds in stage_seconds.values():
        for stage, job in _job_seconds(seconds, inputs.fused).items():
            res = inputs.resources[stage]
            if job > MAX_RUNTIME_FRACTION * res.max_runtime_seconds:
                return False
            if (overhead + job) / 3600 * res.instance_type.price_per_hour > inputs.max_job_usd:
                return False
    return True


_Cut = tuple[list[Shard], dict[str, dict[str, float]]]


def _cut_of(inputs: _Inputs, hours: float, cache: dict[Any, _Cut]) -> _Cut:
    """
    The shards of ``inputs`` at a granularity of ``hours`` and their stage seconds, computed once
    for every fusing whose GPU stages run on the same GPUs (the cut and the times are the same).
    """
    key = (
        hours,
        inputs.gpus,
        inputs.slots,
        tuple(inputs.resources[inputs.fused.get(s, s)].instance_type.gpus for s in inputs.stages),
        tuple((spec, tuple(times.values())) for spec, times in sorted(inputs.per_design.items())),
        _following(inputs),
    )
    if key not in cache:
        cache[key] = _shards(inputs, _groups(inputs, hours * 3600))
    return cache[key]


def _auto_plan(inputs: _Inputs, cache: dict[Any, _Cut]) -> tuple[Plan, float]:
    """
    The fastest plan over the granularities of ``AUTO_TARGET_HOURS`` that keep every job within its
    limits (the shortest granularity when none does); within ``AUTO_MAKESPAN_TOLERANCE`` of the
    fastest, the cheapest. Granularities that cut the same shards are estimated once.

    :return: the plan and its granularity (hours).
    """
    plans: list[tuple[Plan, float]] = []
    seen: set[tuple[tuple[WorkItem, ...], ...]] = set()
    for hours in AUTO_TARGET_HOURS:
        shards, stage_seconds = _cut_of(inputs, hours, cache)
        cut = tuple(shard.items for shard in shards)
        if cut not in seen and _within_limits(stage_seconds, inputs):
            seen.add(cut)
            plans.append((_plan_of(inputs, shards, stage_seconds), hours))
    if not plans:
        hours = AUTO_TARGET_HOURS[0]
        return _plan_of(inputs, *_cut_of(inputs, hours, cache)), hours
    best = _fastest_then_cheapest([plan for plan, _ in plans])
    return best, next(h for plan, h in plans if plan is best)


def plan_campaign(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    catalog: Catalog | None = None,
    *,
    num_designs: int | None = None,
    target_hours: float | str | None = None,
    max_shards: int | None = None,
    presets: Mapping[str, Any] | None = None,
    time_model: StageTimeModel | None = None,
    designs: Mapping[str, int] | None = None,
    starts: Mapping[str, int] | None = None,
    width: int | None = None,
) -> Plan:
    """
    Cut a campaign into shards and estimate its time and cost.

    A shard is one job per stage on an instance, one work item per GPU. At a granularity of
    ``target_hours``, its longest stage runs about that long when the campaign's work fills every
    GPU of the pool at that size; with less work, shards are made smaller so that every job slot of
    the pool gets one, but never so small that a shard job runs less than ``MIN_JOB_PROVISIONINGS``
    times the provisioning overhead (nor below one diffusion batch per item). Each spec is cut from
    design 0 into whole shards; its tail and the specs smaller than a shard are packed longest first
    onto the least loaded GPU. The shard count never exceeds ``max_shards`` (at most 1000: Airflow
    maps at most 1024 task instances); reaching it makes shards longer than the target. Shard ids
    go longest first, the order in which the pools start them.

    With ``target_hours`` ``auto`` the granularity is the one of ``AUTO_TARGET_HOURS`` whose plan
    ends first (then costs least), among those whose jobs stay within ``MAX_RUNTIME_FRACTION`` of
    their stage's max runtime and cost at most ``sharding.max_job_usd`` each. With ``stages.fuse``
    ``auto`` each fusing of ``AUTO_FUSE`` is planned so, and the one that ends first (then costs
    least) is kept; ``Plan.choices`` says what each automatic setting chose and against what.

    :param campaign: the campaign.
    :param bundles: its spec bundles (all valid).
    :param catalog: the instance catalog (default: packaged).
    :param num_designs: designs per spec (default: the campaign's).
    :param target_hours: granularity in hours, or ``auto`` (default: the campaign's).
    :param max_shards: shard cap (default: the campaign's).
    :param presets: scaling presets (default: packaged).
    :param time_model: stage time model (default: the campaign's, see :func:`campaign_time_model`).
    :param designs: designs of each spec where it differs from ``num_designs``.
    :param starts: each spec's first design index (a next round continues where the last stopped).
    :param width: digits of design indices (default: from the largest spec's designs); the rounds of
        one campaign run keep the first round's.
    :raises CampaignError: when a bundle has errors or there is nothing to plan.
    """
    base = num_designs if num_designs is not None else campaign.design.num_designs
    counts = {b.spec: (designs or {}).get(b.spec, base) for b in bundles}
    n = max(counts.values(), default=base)
    specs = _checked_specs(campaign, bundles, min(counts.values(), default=base))
    target = target_hours if target_hours is not None else campaign.sharding.target_hours
    cap = min(max_shards if max_shards is not None else campaign.sharding.max_shards, MAX_SHARDS)
    resources = resolve_resources(campaign, sum(counts.values()), catalog or load_catalog(), presets)
    model = time_model or campaign_time_model(campaign)
    inputs = _inputs(
        campaign,
        specs,
        n,
        resources=resources,
        model=model,
        cap=cap,
        counts=counts,
        starts=starts,
        width=width,
    )
    cache: dict[Any, _Cut] = {}
    options: list[tuple[Plan, float]] = []
    for fuse in _fusings(campaign, inputs.stages):
        mine = dataclasses.replace(inputs, fused=fused_hosts(inputs.stages, fuse)) if fuse else inputs
        if target == "auto":
            plan, hours = _auto_plan(mine, cache)
        else:
            hours = float(target)
            plan = _plan_of(mine, *_cut_of(mine, hours, cache))
        options.append((_packed(mine, plan), hours))
    best = _fastest_then_cheapest([plan for plan, _ in options])
    hours = next(h for plan, h in options if plan is best)
    return dataclasses.replace(best, choices=_choices(campaign, best, hours, [p for p, _ in options]))


def _fusings(campaign: Campaign, stages: Sequence[str]) -> list[tuple[str, ...]]:
    """The fusings to plan: the campaign's, or with ``auto`` each of ``AUTO_FUSE`` that differs."""
    fuse = campaign.stages.fuse
    if fuse != "auto":
        return [tuple(fuse)]
    result: list[tuple[str, ...]] = []
    seen: list[dict[str, str]] = []
    for option in AUTO_FUSE:
        hosts = fused_hosts(stages, option)
        if hosts not in seen:
            seen.append(hosts)
            result.append(tuple(s for s in option if s in hosts))
    return result


def _fusing_label(fused: Mapping[str, str]) -> str:
    return ", ".join(f"{guest} in {host}" for guest, host in fused.items()) or "none"


def _choices(campaign: Campaign, plan: Plan, hours: float, fusings: Sequence[Plan]) -> dict[str, str]:
    """What each ``auto`` setting of ``campaign`` chose for ``plan``, and against what."""
    choices: dict[str, str] = {}
    if campaign.sharding.target_hours == "auto":
        tried = ", ".join(f"{h:g}" for h in AUTO_TARGET_HOURS)
        choices["sharding.target_hours"] = (
            f"{hours:g} h: the fastest, then cheapest, of {tried} h within the jobs' runtime and cost limits"
        )
    if campaign.stages.fuse == "auto":
        compared = "; ".join(
            f"{_fusing_label(p.fused)} {p.estimate.makespan_hours:.2f} h ${p.estimate.cost_usd:,.0f}"
            for p in fusings
        )
        choices["stages.fuse"] = f"{_fusing_label(plan.fused)}: the fastest, then cheapest, of {compared}"
    if campaign.sharding.pack_filtering == "auto" and len(plan.filter_ids) > 1:
        jobs, specs = len(plan.filtering_jobs), len(plan.filter_ids)
        what = "one job per spec" if jobs == specs else f"{specs} specs in {jobs} jobs"
        choices["sharding.pack_filtering"] = f"{what}: the fastest, then cheapest, of the packings tried"
    return choices


@dataclass(frozen=True)
class PlanOption:
    """
    One way to run a campaign and what it takes.

    :param label: what differs from the campaign, e.g. ``preset=large`` or ``campaign as written``.
    :param overrides: the dotted settings that make this option from the campaign.
    :param gpu_instance_type: the instance type of the folding stage.
    :param gpus: GPUs that may run at once (folding's pool).
    :param shards: shards of the plan.
    :param makespan_hours: estimated makespan.
    :param cost_usd: estimated on-demand cost.
    """

    label: str
    overrides: dict[str, Any]
    gpu_instance_type: str
    gpus: int
    shards: int
    makespan_hours: float
    cost_usd: float


def option_overrides(presets: Iterable[str], gpu_types: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """
    The settings to compare: the campaign as written, each preset, and each preset with its GPU
    stages on each of ``gpu_types``.

    :param presets: preset names.
    :param gpu_types: GPU instance types to try on every preset.
    """
    options: list[tuple[str, dict[str, Any]]] = [("campaign as written", {})]
    for preset in presets:
        options.append((f"preset={preset}", {"scaling.preset": preset}))
        for gpu_type in gpu_types:
            stages = {f"scaling.{s}.instance_type": gpu_type for s in GPU_STAGES}
            options.append((f"preset={preset} gpu={gpu_type}", {"scaling.preset": preset, **stages}))
    return options


def fallback_overrides(campaign: Campaign) -> list[tuple[str, dict[str, Any]]]:
    """
    The campaign as it may run when jobs start on fallback types: the k-th option puts every stage
    that has fallbacks on its k-th one (its last when it has fewer). Empty without fallbacks.

    :param campaign: the campaign.
    """
    lists = {s: campaign.scaling.stage(s).fallback_instance_types for s in STAGES}
    lists = {s: names for s, names in lists.items() if names}
    options = []
    for k in range(max((len(names) for names in lists.values()), default=0)):
        overrides: dict[str, Any] = {}
        for stage, names in lists.items():
            overrides[f"scaling.{stage}.instance_type"] = names[min(k, len(names) - 1)]
            overrides[f"scaling.{stage}.fallback_instance_types"] = []
        options.append((f"fallback {k + 1}", overrides))
    return options


@dataclass(frozen=True)
class FallbackEstimate:
    """
    A plan's shards as they would run when their jobs start on fallback types.

    :param label: which fallback (``fallback 1``...).
    :param estimate: time and cost of the same shards on those types.
    :param over_runtime: jobs that would pass their stage's max runtime there (and be stopped).
    """

    label: str
    estimate: Estimate
    over_runtime: int


def fallback_estimates(
    plan: Plan, campaign: Campaign, catalog: Catalog | None = None
) -> list[FallbackEstimate]:
    """
    Estimate the shards of ``plan`` on each option of :func:`fallback_overrides`.

    :param plan: the plan (made with the stages' own types).
    :param campaign: its campaign.
    :param catalog: the instance catalog (default: packaged).
    """
    result = []
    for label, overrides in fallback_overrides(campaign):
        other = campaign.with_overrides(overrides)
        moved = resolve_resources(other, plan.num_designs * len(plan.bundles), catalog or load_catalog())
        # A job that started on a fallback still holds the slot of its stage's own pool.
        own = plan.resources
        resources = {
            stage: dataclasses.replace(
                res, pool_type=own[stage].pool, max_parallel_jobs=own[stage].max_parallel_jobs
            )
            for stage, res in moved.items()
        }
        specs = list(plan.bundles.values())
        model = campaign_time_model(campaign)
        inputs = _inputs(
            other,
            specs,
            plan.num_designs,
            resources=resources,
            model=model,
            cap=MAX_SHARDS,
            fuse=tuple(plan.fused),
        )
        shards, seconds = _shards(inputs, [list(s.items) for s in plan.shards])
        over = sum(
            1
            for jobs in seconds.values()
            for stage, job in jobs.items()
            if job > resources[stage].max_runtime_seconds
        )
        result.append(FallbackEstimate(label, _plan_of(inputs, shards, seconds).estimate, over))
    return result


def compare_options(
    campaign: Campaign,
    bundles: Sequence[SpecBundle],
    options: Sequence[tuple[str, dict[str, Any]]],
    catalog: Catalog | None = None,
) -> list[PlanOption]:
    """
    Plan ``campaign`` under each option and return their makespans and costs, fastest first.

    :param campaign: the campaign.
    :param bundles: its spec bundles.
    :param options: labels and dotted overrides, from :func:`option_overrides`.
    :param catalog: the instance catalog (default: packaged).
    :raises CampaignError: when an option is not a valid campaign (naming the setting).
    """
    result = []
    for label, overrides in options:
        plan = plan_campaign(campaign.with_overrides(overrides), bundles, catalog)
        folding = plan.resources["folding"]
        result.append(
            PlanOption(
                label=label,
                overrides=overrides,
                gpu_instance_type=folding.instance_type.name,
                gpus=folding.max_parallel_jobs * folding.instance_type.gpus,
                shards=len(plan.shards),
                makespan_hours=plan.estimate.makespan_hours,
                cost_usd=plan.estimate.cost_usd,
            )
        )
    return sorted(result, key=lambda o: (o.makespan_hours, o.cost_usd, o.label))


# The presets ``plan --deadline`` and the ``deadline_hours`` param compare.
OPTION_PRESETS = ("small", "medium", "large", "xlarge")


def cheapest_within(
    campaign: Campaign, bundles: Sequence[SpecBundle], deadline_hours: float, catalog: Catalog | None = None
) -> PlanOption | None:
    """
    The cheapest of the campaign as written and each preset of ``OPTION_PRESETS`` whose estimate
    ends within ``deadline_hours`` (None when none does).

    :param campaign: the campaign.
    :param bundles: its spec bundles.
    :param deadline_hours: the latest makespan.
    :param catalog: the instance catalog (default: packaged).
    """
    options = compare_options(campaign, bundles, option_overrides(OPTION_PRESETS, []), catalog)
    return choose_option(options, deadline_hours=deadline_hours)


def choose_option(
    options: Sequence[PlanOption], *, deadline_hours: float | None = None, budget_usd: float | None = None
) -> PlanOption | None:
    """
    The cheapest option that meets the deadline (and the budget), or with a budget alone the
    fastest within it; None when no option qualifies.

    :param options: from :func:`compare_options`.
    :param deadline_hours: the latest makespan.
    :param budget_usd: the most it may cost.
    """
    fits = [
        o
        for o in options
        if (deadline_hours is None or o.makespan_hours <= deadline_hours)
        and (budget_usd is None or o.cost_usd <= budget_usd)
    ]
    if not fits:
        return None
    if deadline_hours is not None:
        return min(fits, key=lambda o: (o.cost_usd, o.makespan_hours, o.label))
    return min(fits, key=lambda o: (o.makespan_hours, o.cost_usd, o.label))


def _simulate(
    jobs: Mapping[tuple[int, str], float],
    after: Mapping[tuple[int, str], Sequence[tuple[int, str]]],
    waiting: Mapping[tuple[int, str], int],
    pool: Mapping[tuple[int, str], str],
    slots: Mapping[str, int],
) -> dict[tuple[int, str], tuple[float, float]]:
    """
    List-schedule jobs on shared pools; return each job's (start, end).

    A job is ready when the jobs before it ended; a freed slot of a pool goes to its ready job of
    the earliest stage (the DAG's default ``downstream`` priority), then the one ready first, then
    the lowest shard id. Jobs are keyed by (stage rank, shard or filter id).

    :param jobs: duration of every job.
    :param after: the jobs each job releases.
    :param waiting: how many jobs each job waits for.
    :param pool: each job's pool.
    :param slots: each pool's size.
    """
    left = dict(waiting)
    ready: dict[str, list[tuple[int, float, str, tuple[int, str]]]] = {name: [] for name in slots}
    for job, count in left.items():
        if count == 0:
            heapq.heappush(ready[pool[job]], (job[0], 0.0, job[1], job))
    free = dict(slots)
    running: list[tuple[float, tuple[int, str]]] = []
    times: dict[tuple[int, str], tuple[float, float]] = {}
    now = 0.0
    while True:
        for name, queue in ready.items():
            while free[name] > 0 and queue:
                job = heapq.heappop(queue)[3]
                free[name] -= 1
                times[job] = (now, now + jobs[job])
                heapq.heappush(running, (now + jobs[job], job))
        if not running:
            return times
        now, job = heapq.heappop(running)
        free[pool[job]] += 1
        for nxt in after.get(job, ()):
            left[nxt] -= 1
            if left[nxt] == 0:
                heapq.heappush(ready[pool[nxt]], (nxt[0], now, nxt[1], nxt))


def _job_seconds(seconds: Mapping[str, float], fused: Mapping[str, str]) -> dict[str, float]:
    """
    Seconds of each job of a shard (provisioning excluded): a host's job also runs its fused
    stages; a fused stage has no job of its own.

    :param seconds: per stage, the shard's estimated seconds of that stage's work.
    :param fused: fused stage -> host stage.
    """
    jobs = {stage: value for stage, value in seconds.items() if stage not in fused}
    for guest, host in fused.items():
        if guest in seconds:
            jobs[host] += seconds[guest]
    return jobs


_Job = tuple[int, str]


def _estimate(
    inputs: _Inputs,
    shards: Sequence[Shard],
    stage_seconds: Mapping[str, Mapping[str, float]],
    *,
    filter_ids: Mapping[str, str],
    filtering_jobs: Sequence[tuple[str, ...]],
) -> tuple[Estimate, dict[str, float]]:
    """
    List-schedule the plan's jobs and sum them up.

    :return: the estimate, and per spec the second its last analysis ends (its filtering may start).
    """
    stages, resources, model = inputs.stages, inputs.resources, inputs.model
    per_design, fused = inputs.per_design, inputs.fused
    overhead = model.provisioning_seconds
    all_stages = [*stages, "filtering"]
    slots = _pools(resources, all_stages)
    jobs: dict[_Job, float] = {}
    billed: dict[str, float] = dict.fromkeys(all_stages, 0.0)
    after: dict[_Job, list[_Job]] = {}
    waiting: dict[_Job, int] = {}
    pool: dict[_Job, str] = {}
    for shard in shards:
        own = _job_seconds(stage_seconds[shard.id], fused)
        for rank, stage in enumerate(stages):
            job = (rank, shard.id)
            # A fused stage's task finds the commit its host's job wrote: no job of its own.
            jobs[job] = overhead + own[stage] if stage in own else 0.0
            billed[stage] += (overhead if stage in own else 0.0) + stage_seconds[shard.id][stage]
            # The DAG task of a fused stage still takes a slot of its own stage's pool, briefly.
            pool[job] = resources[stage].pool
            waiting[job] = 1 if rank else 0
            if rank:
                after.setdefault((rank - 1, shard.id), []).append(job)
    last = len(stages) - 1
    filtered = _filtered(inputs)
    filter_seconds = {spec: overhead + model.filtering_seconds(filtered[spec]) for spec in filter_ids}
    holders: dict[str, list[str]] = {spec: [] for spec in filter_ids}
    for shard in shards:
        for spec in {item.spec for item in shard.items}:
            holders[spec].append(shard.id)
    for index, specs in enumerate(filtering_jobs):
        job = (len(stages), f"{index:06d}")
        jobs[job] = overhead + sum(model.filtering_seconds(filtered[spec]) for spec in specs)
        billed["filtering"] += jobs[job]
        pool[job] = resources["filtering"].pool
        needed = sorted({shard_id for spec in specs for shard_id in holders[spec]})
        waiting[job] = len(needed)
        for shard_id in needed:
            after.setdefault((last, shard_id), []).append(job)
    times = _simulate(jobs, after, waiting, pool, slots)

    per_stage: dict[str, StageEstimate] = {}
    for rank, stage in enumerate(all_stages):
        mine = [job for job in jobs if job[0] == rank]
        starts = [times[job][0] for job in mine]
        ends = [times[job][1] for job in mine]
        res = resources[fused.get(stage, stage)]
        count = sum(1 for job in mine if jobs[job] > 0)
        span = (max(ends) - min(starts)) if mine else 0.0
        per_stage[stage] = _stage_estimate(stage, res, billed[stage], count, span)
    makespan = max(end for _, end in times.values())

    # What no plan can beat: per pool, its work over its GPUs (or instances) plus one provisioning;
    # and one design's chain of jobs through every stage and its spec's filtering.
    work: dict[str, float] = dict.fromkeys(slots, 0.0)
    # A stage following its host in the same job runs on the CPUs beside the host's GPU work.
    following = {guest for guest, _ in _following(inputs)}
    for stage in stages:
        if stage in following:
            continue
        name = resources[fused.get(stage, stage)].pool
        work[name] += sum(inputs.counts[spec] * per_design[spec][stage] for spec in filter_ids)
    work[resources["filtering"].pool] += sum(model.filtering_seconds(filtered[s]) for s in filter_ids)
    lower = max(overhead + work[name] / (slots[name] * max(1, _gpus_of(resources, name))) for name in slots)
    chain = sum(
        (0.0 if stage in fused else overhead) + min(per_design[spec][stage] for spec in filter_ids)
        for stage in stages
    )
    lower = max(lower, chain + min(filter_seconds.values()))
    ready = {
        spec: max((times[(last, shard_id)][1] for shard_id in holders[spec]), default=0.0)
        for spec in filter_ids
    }
    estimate = Estimate(
        stages=per_stage,
        makespan_hours=makespan / 3600,
        lower_bound_hours=lower / 3600,
        gpu_hours=sum(s.gpu_hours for s in per_stage.values()),
        cost_usd=sum(s.cost_usd for s in per_stage.values()),
        figures=model.figures(),
    )
    return estimate, ready


def _filtered(inputs: _Inputs) -> dict[str, int]:
    """Per spec, the designs its filtering reads: every round's so far, this one's included."""
    return {spec: inputs.starts.get(spec, 0) + count for spec, count in inputs.counts.items()}


def _filtering_packs(inputs: _Inputs, ready: Mapping[str, float], hours: float) -> list[tuple[str, ...]]:
    """
    Specs packed into filtering jobs of at most ``hours`` of filtering work (and within the
    filtering stage's runtime limit), in the order their analysis ends.

    :param inputs: the plan's inputs.
    :param ready: per spec, when its filtering may start (from :func:`_estimate`).
    :param hours: the most filtering work of one job.
    """
    limit = min(hours * 3600, MAX_RUNTIME_FRACTION * inputs.resources["filtering"].max_runtime_seconds)
    filtered = _filtered(inputs)
    packs: list[tuple[str, ...]] = []
    current: list[str] = []
    work = 0.0
    for spec in sorted(ready, key=lambda s: (ready[s], s)):
        seconds = inputs.model.filtering_seconds(filtered[spec])
        if current and work + seconds > limit:
            packs.append(tuple(current))
            current, work = [], 0.0
        current.append(spec)
        work += seconds
    if current:
        packs.append(tuple(current))
    return packs


def _fastest_then_cheapest(plans: Sequence[Plan]) -> Plan:
    """Of ``plans``, the cheapest within ``AUTO_MAKESPAN_TOLERANCE`` of the fastest."""
    fastest = min(p.estimate.makespan_hours for p in plans)
    near = [p for p in plans if p.estimate.makespan_hours <= fastest * (1 + AUTO_MAKESPAN_TOLERANCE)]
    return min(near, key=lambda p: (p.estimate.cost_usd, p.estimate.makespan_hours))


def _packed(inputs: _Inputs, plan: Plan) -> Plan:
    """
    The plan's filtering packed as ``sharding.pack_filtering`` says: with ``auto`` each size of
    ``FILTER_PACK_HOURS`` is estimated against one job per spec, the fastest then cheapest kept;
    with ``true`` the same without one job per spec; with ``false`` one job per spec.
    """
    if not inputs.pack_filtering or len(plan.filter_ids) < 2:
        return plan
    shards = list(plan.shards)
    _, ready = _estimate(
        inputs, shards, plan.stage_seconds, filter_ids=plan.filter_ids, filtering_jobs=plan.filtering_jobs
    )
    # ``true`` packs whatever the estimate says; ``auto`` keeps one job per spec when it is best.
    forced = inputs.pack_filtering is True
    plans = [] if forced else [plan]
    seen = set() if forced else {plan.filtering_jobs}
    candidates = [_filtering_packs(inputs, ready, h) for h in (*FILTER_PACK_HOURS, *_pool_pack_hours(inputs))]
    candidates += [_ending_packs(inputs, ready, tail) for tail in FILTER_TAIL_SPECS]
    for candidate in candidates:
        packs = tuple(candidate)
        if packs not in seen:
            seen.add(packs)
            plans.append(_plan_of(inputs, shards, plan.stage_seconds, packs))
    return _fastest_then_cheapest(plans or [plan])


def _ending_packs(inputs: _Inputs, ready: Mapping[str, float], tail: float) -> list[tuple[str, ...]]:
    """
    Specs packed so that every filtering job ends together: about ``tail`` times the largest spec's
    filtering after the last spec may start (and its provisioning), the specs ready later in the
    smaller jobs. Packs run within the filtering stage's runtime limit.

    :param inputs: the plan's inputs.
    :param ready: per spec, when its filtering may start (from :func:`_estimate`).
    :param tail: the filtering work of the last job, in largest specs' filtering.
    """
    filtered = _filtered(inputs)
    seconds = {spec: inputs.model.filtering_seconds(filtered[spec]) for spec in ready}
    limit = MAX_RUNTIME_FRACTION * inputs.resources["filtering"].max_runtime_seconds
    end = max(ready.values()) + tail * max(seconds.values())
    packs: list[tuple[str, ...]] = []
    current: list[str] = []
    start = work = 0.0
    for spec in sorted(ready, key=lambda s: (-ready[s], s)):
        if current and (start + work + seconds[spec] > end or work + seconds[spec] > limit):
            packs.append(tuple(reversed(current)))
            current = []
        if not current:
            start, work = ready[spec], 0.0
        current.append(spec)
        work += seconds[spec]
    if current:
        packs.append(tuple(reversed(current)))
    return list(reversed(packs))


def _pool_pack_hours(inputs: _Inputs) -> list[float]:
    """Pack sizes that spread the filtering work over one and two waves of the filtering pool."""
    filtered = _filtered(inputs)
    work = sum(inputs.model.filtering_seconds(filtered[spec]) for spec in inputs.counts)
    slots = _pools(inputs.resources, ["filtering"])[inputs.resources["filtering"].pool]
    # A pack closes before it passes its size: a little room keeps the count of packs at the waves'.
    return [1.001 * work / (waves * slots) / 3600 + 1e-9 for waves in (1, 2)]


def _gpus_of(resources: Mapping[str, StageResources], pool: str) -> int:
    """GPUs of an instance of the stages in ``pool`` (0 for CPU pools; a fallback has as many)."""
    return next(r.instance_type.gpus for r in resources.values() if r.pool == pool)


def _stage_estimate(stage: str, res: StageResources, busy: float, jobs: int, span: float) -> StageEstimate:
    hours = busy / 3600
    return StageEstimate(
        stage=stage,
        instance_type=res.instance_type.name,
        jobs=jobs,
        gpu_hours=hours * res.instance_type.gpus,
        instance_hours=hours,
        makespan_hours=span / 3600,
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

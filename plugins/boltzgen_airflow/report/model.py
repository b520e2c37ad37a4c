"""
The campaign report: one self-contained HTML page per run, plus CSVs.

Pure Python, no Airflow: the DAG's report task builds the inputs and calls
:func:`build_report` then :func:`write_report`. The page is viewable offline: plots are
matplotlib (Agg) PNGs embedded as ``data:`` URIs, CSS is inline, and a Content-Security-Policy
forbids every external load.

Inputs
------
``manifest`` is the run manifest's JSON document (``run.json``; see
:class:`boltzgen_airflow.run.manifest.RunManifest`)::

    {"campaign": str, "run_id": str, "dag_id": str, "started_at": iso8601, "finished_at": iso8601,
     "status": "complete" | "partial" | "failed", "results_prefix": "s3://...",
     "estimate": {"makespan_hours", "lower_bound_hours", "gpu_hours", "instance_hours", "cost_usd",
                  "stages": {stage: {"instance_hours", "cost_usd", ...}}},
     "actual": {"instance_hours", "cost_usd", "wall_hours",
                "stages": {stage: {"instance_hours", "cost_usd", "jobs"}}},
     "specs": [{"spec", "status", "shards_total", "shards_committed", "missing_shards": [str],
                "designs_expected", "designs_produced", "final_designs"}],
     "shards": [{"shard", "spec" | "specs", "stages": {stage: {"status", "job_name", "seconds",
                 "designs_expected", "designs_produced"}}}]}

Shard stage ``status`` is one of :data:`SHARD_STATUSES`. ``campaign``, ``run_id`` and ``status``
are required; every other key may be missing and shows as a dash.

``spec_results`` maps a spec name (as in ``manifest["specs"][i]["spec"]``) to a
:class:`SpecResult`: the rows of BoltzGen's ``final_ranked_designs/all_designs_metrics.csv`` and
``final_designs_metrics_<budget>.csv``. Columns are BoltzGen 0.3.2's (``id``, ``final_rank``,
``quality_score``, ``pass_filters``, ``num_filters_passed``, ``designed_sequence``,
``design_to_target_iptm``, ``filter_rmsd``, ...); optional columns may be missing and fall back
to their older names (``bb_rmsd``, ``design_iptm``, ``min_interaction_pae``, ...).

Outputs
-------
:func:`write_report` writes ``index.html``, ``top_designs.csv`` (every final design of every
spec, best first), ``shard_status.csv`` (one row per shard and stage) and ``cost.csv``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boltzgen_airflow.exceptions import ReportInputError
from boltzgen_airflow.stages import STAGES

RUN_STATUSES = ("complete", "partial", "failed")
SHARD_STATUSES = ("committed", "cached", "failed", "skipped", "missing")
PROBLEM_STATUSES = frozenset({"failed", "missing"})

STRUCTURES_PER_SPEC = 5
"""Top designs per spec whose structure the report embeds (each a few kB to a few hundred kB)."""
_RANKED_CIF_RE = re.compile(r"^rank\d+_")
SEQUENCE_PREVIEW = 24
"""Designed sequences longer than this are cut in tables; the full sequence is in the title."""


@dataclass(frozen=True)
class SpecResult:
    """
    BoltzGen's filtering output for one spec.

    :param all_designs: rows of ``all_designs_metrics.csv`` (every ranked design).
    :param final_designs: rows of ``final_designs_metrics_<budget>.csv`` (the selected designs).
    :param budget: the filtering budget, when known.
    :param source: where the rows came from, for error messages.
    :param structures: design id -> mmCIF text of the final designs' structures, where present.
    """

    all_designs: Sequence[Mapping[str, str]]
    final_designs: Sequence[Mapping[str, str]] = ()
    budget: int | None = None
    source: str = "<memory>"
    structures: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_files(cls, all_designs_csv: Path, final_designs_csv: Path | None = None) -> SpecResult:
        """
        Read BoltzGen's metric CSVs.

        :param all_designs_csv: path of ``all_designs_metrics.csv``.
        :param final_designs_csv: path of ``final_designs_metrics_<budget>.csv``, if any.
        """
        budget = None
        final: list[dict[str, str]] = []
        if final_designs_csv is not None:
            final = read_metrics_csv(final_designs_csv)
            match = re.fullmatch(r"final_designs_metrics_(\d+)\.csv", final_designs_csv.name)
            budget = int(match.group(1)) if match else None
        return cls(read_metrics_csv(all_designs_csv), final, budget, str(all_designs_csv.parent))

    @classmethod
    def from_directory(cls, directory: Path) -> SpecResult:
        """
        Read a ``final_ranked_designs/`` folder.

        :param directory: the folder holding ``all_designs_metrics.csv``.
        """
        finals = sorted(directory.glob("final_designs_metrics_*.csv"))
        if len(finals) > 1:
            names = ", ".join(path.name for path in finals)
            raise ReportInputError(f"{directory}: more than one final designs CSV ({names})")
        result = cls.from_files(directory / "all_designs_metrics.csv", finals[0] if finals else None)
        # BoltzGen names the final structures final_<budget>_designs/rank<i>_<id>.cif.
        structures = {
            _RANKED_CIF_RE.sub("", path.stem): path.read_text(encoding="utf-8", errors="replace")
            for path in sorted(directory.glob("final_*_designs/rank*_*.cif"))
        }
        return replace(result, structures=structures)


@dataclass(frozen=True)
class Threshold:
    """
    A filter threshold drawn on a metric's histogram.

    :param value: the cut-off.
    :param lower_is_better: a design passes when its value is <= ``value`` (else >=).
    """

    value: float
    lower_is_better: bool = True

    def passes(self, x: float) -> bool:
        """Whether ``x`` passes, as BoltzGen's filter decides it."""
        return x <= self.value if self.lower_is_better else x >= self.value

    def label(self) -> str:
        """The rule as text, e.g. ``≤ 2.5``."""
        return f"{'≤' if self.lower_is_better else '≥'} {self.value:g}"


def default_thresholds(refolding_rmsd_threshold: float = 2.5) -> dict[str, Threshold]:
    """
    BoltzGen 0.3.2's hard filters, by metric column.

    :param refolding_rmsd_threshold: the RMSD cut-off (BoltzGen uses 2.0 for peptides).
    """
    rmsd = Threshold(refolding_rmsd_threshold)
    thresholds = {
        "filter_rmsd": rmsd,
        "bb_rmsd": rmsd,
        "filter_rmsd_design": rmsd,
        "designfolding-filter_rmsd": rmsd,
        "designfolding-bb_rmsd": rmsd,
    }
    for residue in ("ALA", "GLY", "GLU", "LEU", "VAL"):
        thresholds[f"{residue}_fraction"] = Threshold(0.3)
    return thresholds


# --- the report model ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetricColumn:
    """A metric shown in the tables and plots, with the BoltzGen columns that may hold it."""

    key: str
    label: str
    short: str
    candidates: tuple[str, ...]
    digits: int


METRICS: tuple[MetricColumn, ...] = (
    MetricColumn("iptm", "ipTM (design→target)", "ipTM", ("design_to_target_iptm", "design_iptm", "iptm"), 3),
    MetricColumn("ptm", "pTM (design)", "pTM", ("design_ptm", "ptm"), 3),
    MetricColumn(
        "pae", "min PAE (design→target)", "min PAE", ("min_design_to_target_pae", "min_interaction_pae"), 2
    ),
    MetricColumn("rmsd", "RMSD (refolded)", "RMSD", ("filter_rmsd", "bb_rmsd"), 2),
    MetricColumn(
        "designfolding_rmsd",
        "RMSD (design refolded alone)",
        "RMSD alone",
        ("designfolding-filter_rmsd", "designfolding-bb_rmsd"),
        2,
    ),
    MetricColumn("hbonds", "H-bonds (refolded)", "H-bonds", ("plip_hbonds_refolded", "plip_hbonds"), 0),
    MetricColumn(
        "saltbridges",
        "Salt bridges (refolded)",
        "Salt br.",
        ("plip_saltbridge_refolded", "plip_saltbridge"),
        0,
    ),
    MetricColumn("delta_sasa", "ΔSASA (Å²)", "ΔSASA", ("delta_sasa_refolded", "delta_sasa_original"), 0),
)
TABLE_METRICS = ("iptm", "ptm", "pae", "rmsd", "hbonds", "delta_sasa")
HISTOGRAM_METRICS = ("iptm", "ptm", "pae", "rmsd", "designfolding_rmsd", "hbonds", "delta_sasa")
SEQUENCE_COLUMNS = ("designed_sequence", "sequence", "designed_chain_sequence")
RANK_COLUMNS = ("final_rank", "rank")


@dataclass(frozen=True)
class DesignRow:
    """One design as the tables show it."""

    spec: str
    rank: int | None
    id: str
    sequence: str
    quality_score: float | None
    passed_filters: bool | None
    metrics: Mapping[str, float | None]


@dataclass(frozen=True)
class SpecSummary:
    """One spec's progress and results."""

    spec: str
    status: str
    shards_total: int | None
    shards_committed: int | None
    missing_shards: tuple[str, ...]
    designs_expected: int | None
    designs_produced: int | None
    final_designs: int | None
    designs_ranked: int | None
    designs_passing: int | None
    budget: int | None
    has_results: bool


@dataclass(frozen=True)
class CostRow:
    """Estimated against actual use for one stage, or the total."""

    stage: str
    est_instance_hours: float | None
    act_instance_hours: float | None
    est_cost_usd: float | None
    act_cost_usd: float | None
    jobs: int | None


@dataclass(frozen=True)
class ShardCell:
    """One stage of one shard."""

    stage: str
    status: str
    job_name: str
    seconds: float | None
    designs_expected: int | None
    designs_produced: int | None


@dataclass(frozen=True)
class ShardRow:
    """One shard across the stages, in :attr:`Report.stages` order (None: the stage has no entry)."""

    shard: str
    specs: tuple[str, ...]
    cells: tuple[ShardCell | None, ...]


@dataclass(frozen=True)
class Problem:
    """A shard stage that failed or produced nothing."""

    shard: str
    specs: tuple[str, ...]
    stage: str
    status: str
    job_name: str


@dataclass(frozen=True)
class Distribution:
    """One metric's values over every ranked design, per spec, with its threshold if any."""

    key: str
    label: str
    column: str
    threshold: Threshold | None
    values: Mapping[str, tuple[float, ...]]

    @property
    def total(self) -> int:
        """How many designs have a value."""
        return sum(len(values) for values in self.values.values())

    @property
    def passing(self) -> int | None:
        """How many designs pass the threshold (None without one)."""
        if self.threshold is None:
            return None
        threshold = self.threshold
        return sum(threshold.passes(x) for values in self.values.values() for x in values)


@dataclass(frozen=True)
class SpecRoundsRow:
    """One spec over its campaign run's rounds: what it made, what passed, its spend, why it stopped."""

    spec: str
    rounds: int
    made: int
    passing: int
    pass_rate: float | None
    spend_usd: float | None
    stopped: str


@dataclass(frozen=True)
class RoundsSummary:
    """The campaign run a run is a round of (the manifest's ``rounds``)."""

    round: int
    campaign_run_id: str
    until_passing: int | None
    max_rounds: int
    max_cost_usd: float | None
    spent_usd: float | None
    reason: str
    specs: tuple[SpecRoundsRow, ...]


def _rounds(manifest: Mapping[str, Any]) -> RoundsSummary | None:
    """The manifest's ``rounds``, or None for a run without one."""
    entry = _mapping(manifest.get("rounds"), "manifest.rounds")
    if not entry:
        return None
    rows = []
    for i, item in enumerate(_list(entry.get("specs"), "manifest.rounds.specs")):
        where = f"manifest.rounds.specs[{i}]"
        row = _mapping(item, where)
        rows.append(
            SpecRoundsRow(
                spec=_text(row.get("spec"), f"{where}.spec", required=True),
                rounds=int(_number(row.get("rounds"), f"{where}.rounds") or 0),
                made=int(_number(row.get("made"), f"{where}.made") or 0),
                passing=int(_number(row.get("passing"), f"{where}.passing") or 0),
                pass_rate=_number(row.get("pass_rate"), f"{where}.pass_rate"),
                spend_usd=_number(row.get("spend_usd"), f"{where}.spend_usd"),
                stopped=_text(row.get("stopped"), f"{where}.stopped"),
            )
        )
    until = _number(entry.get("until_passing"), "manifest.rounds.until_passing")
    return RoundsSummary(
        round=int(_number(entry.get("round"), "manifest.rounds.round") or 1),
        campaign_run_id=_text(entry.get("campaign_run_id"), "manifest.rounds.campaign_run_id"),
        until_passing=None if until is None else int(until),
        max_rounds=int(_number(entry.get("max_rounds"), "manifest.rounds.max_rounds") or 1),
        max_cost_usd=_number(entry.get("max_cost_usd"), "manifest.rounds.max_cost_usd"),
        spent_usd=_number(entry.get("spent_usd"), "manifest.rounds.spent_usd"),
        reason=_text(entry.get("reason"), "manifest.rounds.reason"),
        specs=tuple(rows),
    )


@dataclass(frozen=True)
class Report:
    """Everything the page shows, computed from the manifest and the metrics."""

    campaign: str
    run_id: str
    dag_id: str
    status: str
    started_at: str
    finished_at: str
    wall_hours: float | None
    results_prefix: str
    estimate: Mapping[str, float | None]
    actual: Mapping[str, float | None]
    cost_rows: tuple[CostRow, ...]
    specs: tuple[SpecSummary, ...]
    top_designs: Mapping[str, tuple[DesignRow, ...]]
    final_designs: Mapping[str, tuple[DesignRow, ...]]
    distributions: tuple[Distribution, ...]
    stages: tuple[str, ...]
    shard_rows: tuple[ShardRow, ...]
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()
    rounds: RoundsSummary | None = None
    top_n: int = 10
    structures: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    table_metrics: tuple[MetricColumn, ...] = field(
        default_factory=lambda: tuple(m for m in METRICS if m.key in TABLE_METRICS)
    )

    @property
    def designs_expected(self) -> int:
        """Designs planned over all specs."""
        return sum(spec.designs_expected or 0 for spec in self.specs)

    @property
    def designs_produced(self) -> int:
        """Designs produced over all specs."""
        return sum(spec.designs_produced or 0 for spec in self.specs)

    @property
    def final_designs_total(self) -> int:
        """Final (selected) designs over all specs."""
        return sum(spec.final_designs or 0 for spec in self.specs)


# --- reading and checking inputs ----------------------------------------------------------


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    """
    Read one of BoltzGen's metric CSVs; it must have an ``id`` column.

    :param path: the CSV file.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "id" not in reader.fieldnames:
                raise ReportInputError(f"{path}: no 'id' column in the header")
            return [dict(row) for row in reader]
    except FileNotFoundError:
        raise ReportInputError(f"{path}: metrics file not found") from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ReportInputError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ReportInputError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def _number(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportInputError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        return None
    return float(value)


def _integer(value: Any, where: str) -> int | None:
    number = _number(value, where)
    if number is None:
        return None
    if not number.is_integer():
        raise ReportInputError(f"{where}: expected a whole number, got {value!r}")
    return int(number)


def _text(value: Any, where: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise ReportInputError(f"{where}: required")
        return ""
    if not isinstance(value, str):
        raise ReportInputError(f"{where}: expected a string, got {value!r}")
    return value


def _csv_float(row: Mapping[str, str], column: str, where: str) -> float | None:
    raw = (row.get(column) or "").strip()
    if raw == "" or raw.lower() in {"nan", "none", "null"}:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ReportInputError(f"{where}: column {column!r}: not a number: {raw!r}") from None
    return value if math.isfinite(value) else None


def _csv_bool(row: Mapping[str, str], column: str) -> bool | None:
    raw = (row.get(column) or "").strip().lower()
    if raw in {"true", "1", "1.0"}:
        return True
    if raw in {"false", "0", "0.0"}:
        return False
    return None


def _column(rows: Sequence[Mapping[str, str]], candidates: Iterable[str]) -> str | None:
    """The first candidate column present in the rows' header."""
    if not rows:
        return None
    header = rows[0].keys()
    return next((c for c in candidates if c in header), None)


# --- building -----------------------------------------------------------------------------


def _design_rows(spec: str, rows: Sequence[Mapping[str, str]], source: str) -> tuple[DesignRow, ...]:
    """Turn metric rows into design rows, best first (by final_rank, else quality_score, else file order)."""
    columns = {m.key: _column(rows, m.candidates) for m in METRICS}
    rank_column = _column(rows, RANK_COLUMNS)
    sequence_column = _column(rows, SEQUENCE_COLUMNS)
    designs = []
    for line, row in enumerate(rows, start=2):
        where = f"{source}: line {line}"
        ident = (row.get("id") or "").strip()
        if not ident:
            raise ReportInputError(f"{where}: empty 'id'")
        rank = _csv_float(row, rank_column, where) if rank_column else None
        metrics = {key: _csv_float(row, col, where) if col else None for key, col in columns.items()}
        designs.append(
            DesignRow(
                spec=spec,
                rank=int(rank) if rank is not None else None,
                id=ident,
                sequence=(row.get(sequence_column) or "") if sequence_column else "",
                quality_score=_csv_float(row, "quality_score", where),
                passed_filters=_csv_bool(row, "pass_filters"),
                metrics=metrics,
            )
        )
    if rank_column:
        designs.sort(key=lambda d: (d.rank is None, d.rank or 0))
    elif _column(rows, ("quality_score",)):
        designs.sort(key=lambda d: (d.quality_score is None, -(d.quality_score or 0.0)))
    return tuple(designs)


def design_rows(spec: str, rows: Sequence[Mapping[str, str]], source: str) -> tuple[DesignRow, ...]:
    """
    Read BoltzGen metric rows as design rows, best first (the campaign view pages through these).

    :param spec: the spec name.
    :param rows: rows of ``all_designs_metrics.csv`` or ``final_designs_metrics_<budget>.csv``.
    :param source: where the rows came from, for error messages.
    """
    return _design_rows(spec, rows, source)


def _cost_rows(estimate: Mapping[str, Any], actual: Mapping[str, Any]) -> tuple[CostRow, ...]:
    est_stages = _mapping(estimate.get("stages"), "manifest.estimate.stages")
    act_stages = _mapping(actual.get("stages"), "manifest.actual.stages")
    names = [s for s in STAGES if s in est_stages or s in act_stages]
    names += [s for s in [*est_stages, *act_stages] if s not in names]
    rows = []
    for stage in dict.fromkeys(names):
        est = _mapping(est_stages.get(stage), f"manifest.estimate.stages.{stage}")
        act = _mapping(act_stages.get(stage), f"manifest.actual.stages.{stage}")
        rows.append(
            CostRow(
                stage=stage,
                est_instance_hours=_number(
                    est.get("instance_hours"), f"manifest.estimate.stages.{stage}.instance_hours"
                ),
                act_instance_hours=_number(
                    act.get("instance_hours"), f"manifest.actual.stages.{stage}.instance_hours"
                ),
                est_cost_usd=_number(est.get("cost_usd"), f"manifest.estimate.stages.{stage}.cost_usd"),
                act_cost_usd=_number(act.get("cost_usd"), f"manifest.actual.stages.{stage}.cost_usd"),
                jobs=_integer(act.get("jobs"), f"manifest.actual.stages.{stage}.jobs"),
            )
        )
    jobs = [row.jobs for row in rows if row.jobs is not None]
    rows.append(
        CostRow(
            stage="total",
            est_instance_hours=_number(estimate.get("instance_hours"), "manifest.estimate.instance_hours"),
            act_instance_hours=_number(actual.get("instance_hours"), "manifest.actual.instance_hours"),
            est_cost_usd=_number(estimate.get("cost_usd"), "manifest.estimate.cost_usd"),
            act_cost_usd=_number(actual.get("cost_usd"), "manifest.actual.cost_usd"),
            jobs=sum(jobs) if jobs else None,
        )
    )
    return tuple(rows)


def _shards(
    manifest: Mapping[str, Any],
) -> tuple[tuple[str, ...], tuple[ShardRow, ...], tuple[Problem, ...]]:
    entries = _list(manifest.get("shards"), "manifest.shards")
    parsed: list[tuple[str, tuple[str, ...], dict[str, ShardCell]]] = []
    seen_stages: list[str] = []
    for i, raw_entry in enumerate(entries):
        where = f"manifest.shards[{i}]"
        entry = _mapping(raw_entry, where)
        shard = _text(entry.get("shard"), f"{where}.shard", required=True)
        if "specs" in entry:
            specs = tuple(
                _text(s, f"{where}.specs", required=True) for s in _list(entry["specs"], f"{where}.specs")
            )
        else:
            specs = (_text(entry.get("spec"), f"{where}.spec"),) if entry.get("spec") else ()
        cells = {}
        for stage, raw_info in _mapping(entry.get("stages"), f"{where}.stages").items():
            at = f"{where}.stages.{stage}"
            info = _mapping(raw_info, at)
            status = _text(info.get("status"), f"{at}.status", required=True)
            if status not in SHARD_STATUSES:
                raise ReportInputError(f"{at}.status: {status!r} is not one of {', '.join(SHARD_STATUSES)}")
            cells[stage] = ShardCell(
                stage=stage,
                status=status,
                job_name=_text(info.get("job_name"), f"{at}.job_name"),
                seconds=_number(info.get("seconds"), f"{at}.seconds"),
                designs_expected=_integer(info.get("designs_expected"), f"{at}.designs_expected"),
                designs_produced=_integer(info.get("designs_produced"), f"{at}.designs_produced"),
            )
            if stage not in seen_stages:
                seen_stages.append(stage)
        parsed.append((shard, specs, cells))
    stages = tuple([s for s in STAGES if s in seen_stages] + [s for s in seen_stages if s not in STAGES])
    rows = tuple(
        ShardRow(shard, specs, tuple(cells.get(s) for s in stages)) for shard, specs, cells in parsed
    )
    problems = tuple(
        Problem(row.shard, row.specs, cell.stage, cell.status, cell.job_name)
        for row in rows
        for cell in row.cells
        if cell is not None and cell.status in PROBLEM_STATUSES
    )
    return stages, rows, problems


def _wall_hours(manifest: Mapping[str, Any], actual: Mapping[str, Any]) -> float | None:
    wall = _number(actual.get("wall_hours"), "manifest.actual.wall_hours")
    if wall is not None:
        return wall
    started, finished = manifest.get("started_at"), manifest.get("finished_at")
    if not (isinstance(started, str) and isinstance(finished, str)):
        return None
    moments = []
    for key, value in (("started_at", started), ("finished_at", finished)):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ReportInputError(f"manifest.{key}: not an ISO 8601 time: {value!r}") from None
        # A time without a zone is taken as UTC so that mixed inputs still subtract.
        moments.append(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    delta = moments[1] - moments[0]
    return delta.total_seconds() / 3600


def _distributions(
    design_rows: Mapping[str, tuple[DesignRow, ...]],
    columns: Mapping[str, str],
    thresholds: Mapping[str, Threshold],
) -> tuple[Distribution, ...]:
    distributions = []
    for metric in METRICS:
        column = columns.get(metric.key)
        if metric.key not in HISTOGRAM_METRICS or column is None:
            continue
        values = {
            spec: tuple(v for d in rows if (v := d.metrics.get(metric.key)) is not None)
            for spec, rows in design_rows.items()
        }
        if not any(values.values()):
            continue
        distributions.append(Distribution(metric.key, metric.label, column, thresholds.get(column), values))
    return tuple(distributions)


def build_report(
    manifest: Mapping[str, Any],
    spec_results: Mapping[str, SpecResult],
    *,
    thresholds: Mapping[str, Threshold] | None = None,
    top_n: int = 10,
) -> Report:
    """
    Compute what the report shows.

    :param manifest: the run manifest's JSON document
        (:meth:`~boltzgen_airflow.run.manifest.RunManifest.to_json`).
    :param spec_results: BoltzGen filtering output per spec name; specs without results are
        reported as such.
    :param thresholds: filter thresholds by metric column, drawn on the histograms;
        defaults to :func:`default_thresholds`.
    :param top_n: designs per spec in the page's tables (the CSV holds every final design).
    """
    manifest = _mapping(manifest, "manifest")
    thresholds = default_thresholds() if thresholds is None else dict(thresholds)
    if top_n < 1:
        raise ReportInputError(f"top_n: must be at least 1, got {top_n}")
    status = _text(manifest.get("status"), "manifest.status", required=True)
    if status not in RUN_STATUSES:
        raise ReportInputError(f"manifest.status: {status!r} is not one of {', '.join(RUN_STATUSES)}")
    estimate = _mapping(manifest.get("estimate"), "manifest.estimate")
    actual = _mapping(manifest.get("actual"), "manifest.actual")

    notes: list[str] = []
    entries = [
        _mapping(e, f"manifest.specs[{i}]")
        for i, e in enumerate(_list(manifest.get("specs"), "manifest.specs"))
    ]
    names = [_text(e.get("spec"), f"manifest.specs[{i}].spec", required=True) for i, e in enumerate(entries)]
    unknown = sorted(set(spec_results) - set(names))
    if unknown:
        raise ReportInputError(f"spec_results: specs not in manifest.specs: {', '.join(unknown)}")

    all_rows: dict[str, tuple[DesignRow, ...]] = {}
    final_rows: dict[str, tuple[DesignRow, ...]] = {}
    columns: dict[str, str] = {}
    summaries = []
    for i, (name, entry) in enumerate(zip(names, entries, strict=True)):
        where = f"manifest.specs[{i}]"
        result = spec_results.get(name)
        final_count = _integer(entry.get("final_designs"), f"{where}.final_designs")
        ranked = passing = None
        if result is not None:
            all_rows[name] = _design_rows(
                name, result.all_designs, f"{result.source}/all_designs_metrics.csv"
            )
            final_rows[name] = _design_rows(name, result.final_designs, f"{result.source}/final designs")
            for metric in METRICS:
                column = _column(result.all_designs, metric.candidates)
                if column and metric.key not in columns:
                    columns[metric.key] = column
            ranked = len(all_rows[name])
            flags = [d.passed_filters for d in all_rows[name] if d.passed_filters is not None]
            passing = sum(flags) if flags else None
            if final_count is None:
                final_count = len(final_rows[name])
            elif final_count != len(final_rows[name]):
                notes.append(
                    f"{name}: the manifest counts {final_count} final designs, "
                    f"the final designs CSV holds {len(final_rows[name])}"
                )
        summaries.append(
            SpecSummary(
                spec=name,
                status=_text(entry.get("status"), f"{where}.status"),
                shards_total=_integer(entry.get("shards_total"), f"{where}.shards_total"),
                shards_committed=_integer(entry.get("shards_committed"), f"{where}.shards_committed"),
                missing_shards=tuple(
                    _text(s, f"{where}.missing_shards", required=True)
                    for s in _list(entry.get("missing_shards"), f"{where}.missing_shards")
                ),
                designs_expected=_integer(entry.get("designs_expected"), f"{where}.designs_expected"),
                designs_produced=_integer(entry.get("designs_produced"), f"{where}.designs_produced"),
                final_designs=final_count,
                designs_ranked=ranked,
                designs_passing=passing,
                budget=result.budget if result else None,
                has_results=result is not None,
            )
        )

    stages, shard_rows, problems = _shards(manifest)
    return Report(
        campaign=_text(manifest.get("campaign"), "manifest.campaign", required=True),
        run_id=_text(manifest.get("run_id"), "manifest.run_id", required=True),
        dag_id=_text(manifest.get("dag_id"), "manifest.dag_id"),
        status=status,
        started_at=_text(manifest.get("started_at"), "manifest.started_at"),
        finished_at=_text(manifest.get("finished_at"), "manifest.finished_at"),
        wall_hours=_wall_hours(manifest, actual),
        results_prefix=_text(manifest.get("results_prefix"), "manifest.results_prefix"),
        estimate={
            key: _number(estimate.get(key), f"manifest.estimate.{key}")
            for key in ("makespan_hours", "lower_bound_hours", "gpu_hours", "instance_hours", "cost_usd")
        },
        actual={
            key: _number(actual.get(key), f"manifest.actual.{key}") for key in ("instance_hours", "cost_usd")
        },
        cost_rows=_cost_rows(estimate, actual),
        specs=tuple(summaries),
        top_designs={spec: rows[:top_n] for spec, rows in final_rows.items()},
        final_designs=final_rows,
        distributions=_distributions(all_rows, columns, thresholds),
        stages=stages,
        shard_rows=shard_rows,
        problems=problems,
        notes=tuple(notes),
        rounds=_rounds(manifest),
        top_n=top_n,
        structures={
            spec: {
                d.id: result.structures[d.id]
                for d in final_rows.get(spec, ())[:STRUCTURES_PER_SPEC]
                if d.id in result.structures
            }
            for spec, result in spec_results.items()
        },
    )

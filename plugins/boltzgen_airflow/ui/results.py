"""
What the campaign view reads from S3: the run manifest, the metric tables and the structures.

One :class:`RunReader` per request, over a boto3 S3 client from the campaign's Airflow connection.
Only documented files are read (docs/architecture.md, "The commit, the filtering inputs and the run
folder"): ``run.json``, ``shards.json``, the analysis commits and what ``report`` published under
``results/`` and ``report/``. Parsed metric tables are kept in a small cache keyed by the object's
ETag, so paging through thousands of designs reads each CSV once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.exceptions import ReportInputError
from boltzgen_airflow.report.model import (
    METRICS,
    DesignRow,
    MetricColumn,
    Threshold,
    default_thresholds,
    design_rows,
)
from boltzgen_airflow.storage.layout import Layout

FINAL_DIR = "final_ranked_designs"
ALL_DESIGNS_CSV = "all_designs_metrics.csv"
_FINAL_CSV_RE = re.compile(r"final_designs_metrics_(\d+)\.csv\Z")
_DESIGN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\Z")
_SPEC_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,700}\.ya?ml\Z")
_FILE_RE = re.compile(r"^(report|results)/[A-Za-z0-9_.\-/]{1,800}\Z")
SORT_KEYS = ("rank", "id", "quality_score", *(m.key for m in METRICS))
MAX_PAGE = 500
HISTOGRAM_BINS = 20


class ResultsNotFound(LookupError):
    """The run, spec, design or file asked for is not in S3 (yet)."""


class BadQuery(ValueError):
    """A query parameter names no column, or a value is out of range."""


@dataclass(frozen=True)
class DesignTable:
    """
    One spec's designs as BoltzGen's filtering ranked them.

    :param spec: the spec name (``vanilla_protein/1g13prot.yaml``).
    :param designs: every ranked design, best first.
    :param final_ids: the ids of the selected (final) designs.
    :param budget: the filtering budget, when the final designs CSV names it.
    :param columns: metric key -> the BoltzGen column that holds it.
    """

    spec: str
    designs: tuple[DesignRow, ...]
    final_ids: frozenset[str]
    budget: int | None
    columns: Mapping[str, str]


@dataclass(frozen=True)
class DesignPage:
    """One page of a :class:`DesignTable` after filtering and sorting."""

    total: int
    matching: int
    offset: int
    rows: tuple[DesignRow, ...]


@dataclass(frozen=True)
class DesignQuery:
    """
    How to cut a page out of a design table.

    :param sort: a key of :data:`SORT_KEYS`.
    :param descending: largest first.
    :param offset: rows skipped.
    :param limit: rows returned (1 to :data:`MAX_PAGE`).
    :param final_only: only the selected designs.
    :param passing: only designs that pass (True) or fail (False) the filters.
    :param text: a substring of the id or designed sequence (case-insensitive).
    :param metric: a metric key the ``low``/``high`` range applies to.
    """

    sort: str = "rank"
    descending: bool = False
    offset: int = 0
    limit: int = 50
    final_only: bool = False
    passing: bool | None = None
    text: str = ""
    metric: str | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise BadQuery(f"sort: {self.sort!r} is not one of {', '.join(SORT_KEYS)}")
        if not 1 <= self.limit <= MAX_PAGE:
            raise BadQuery(f"limit: must be 1 to {MAX_PAGE}, got {self.limit}")
        if self.offset < 0:
            raise BadQuery(f"offset: must be at least 0, got {self.offset}")
        if self.metric is not None and self.metric not in {m.key for m in METRICS}:
            raise BadQuery(f"metric: {self.metric!r} is not one of {', '.join(m.key for m in METRICS)}")
        if len(self.text) > 200:
            raise BadQuery("q: at most 200 characters")


def _sort_value(design: DesignRow, key: str) -> Any:
    if key == "id":
        return design.id
    if key == "rank":
        return design.rank
    if key == "quality_score":
        return design.quality_score
    return design.metrics.get(key)


def page_of(table: DesignTable, query: DesignQuery) -> DesignPage:
    """
    Filter, sort and cut one page of a design table.

    :param table: the spec's designs.
    :param query: what to show.
    """
    text = query.text.strip().lower()
    rows: list[DesignRow] = []
    for design in table.designs:
        if query.final_only and design.id not in table.final_ids:
            continue
        if query.passing is not None and design.passed_filters is not query.passing:
            continue
        if text and text not in design.id.lower() and text not in design.sequence.lower():
            continue
        if query.metric is not None:
            value = design.metrics.get(query.metric)
            if value is None or (query.low is not None and value < query.low):
                continue
            if query.high is not None and value > query.high:
                continue
        rows.append(design)
    present = [d for d in rows if _sort_value(d, query.sort) is not None]
    absent = [d for d in rows if _sort_value(d, query.sort) is None]
    present.sort(key=lambda d: _sort_value(d, query.sort), reverse=query.descending)
    ordered = present + absent  # designs without the value last, whichever the direction
    return DesignPage(
        total=len(table.designs),
        matching=len(ordered),
        offset=query.offset,
        rows=tuple(ordered[query.offset : query.offset + query.limit]),
    )


@dataclass(frozen=True)
class Histogram:
    """One metric's distribution over a spec's designs, with its filter threshold."""

    metric: MetricColumn
    column: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    threshold: Threshold | None
    passing: int | None


def histograms(table: DesignTable, thresholds: Mapping[str, Threshold]) -> list[Histogram]:
    """
    The distribution of every metric the table holds.

    :param table: the spec's designs.
    :param thresholds: BoltzGen column -> filter threshold.
    """
    result = []
    for metric in METRICS:
        column = table.columns.get(metric.key)
        values = [v for d in table.designs if (v := d.metrics.get(metric.key)) is not None]
        if column is None or not values:
            continue
        threshold = thresholds.get(column)
        low, high = min(values), max(values)
        if threshold is not None:
            low, high = min(low, threshold.value), max(high, threshold.value)
        if math.isclose(low, high):
            low, high = low - 0.5, high + 0.5
        width = (high - low) / HISTOGRAM_BINS
        counts = [0] * HISTOGRAM_BINS
        for value in values:
            counts[min(HISTOGRAM_BINS - 1, int((value - low) / width))] += 1
        result.append(
            Histogram(
                metric=metric,
                column=column,
                edges=tuple(low + width * i for i in range(HISTOGRAM_BINS + 1)),
                counts=tuple(counts),
                threshold=threshold,
                passing=sum(threshold.passes(v) for v in values) if threshold else None,
            )
        )
    return result


class _TableCache:
    """The last few parsed tables, by (bucket, key, ETag)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, ...], DesignTable] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], load: Callable[[], DesignTable]) -> DesignTable:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        table = load()
        with self._lock:
            self._items[key] = table
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return table


TABLES = _TableCache(64)


def spec_folder(spec: str) -> str:
    """
    The folder of a spec's results under ``results/`` (the name without ``.yaml``).

    :param spec: a spec name as the run manifest lists it (``vanilla_protein/1g13prot.yaml``).
    :raises ResultsNotFound: for a name no run can have (``..``, an absolute path, odd characters).
    """
    if not _SPEC_RE.match(spec) or ".." in spec.split("/"):
        raise ResultsNotFound(f"{spec!r} is not a spec name")
    return PurePosixPath(spec).with_suffix("").as_posix()


def _rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def _no_such_key(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


class RunReader:
    """
    Read one campaign's runs from S3.

    :param client: a boto3 S3 client (from the campaign's Airflow connection).
    :param campaign: the campaign.
    """

    def __init__(self, client: Any, campaign: Campaign) -> None:
        self.client = client
        self.campaign = campaign
        self.layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
        refold = campaign.design.refolding_rmsd_threshold
        self.thresholds = default_thresholds(refold) if refold else default_thresholds()

    # -- plain objects --------------------------------------------------------------------------

    def _get(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.layout.bucket, Key=key)["Body"].read())
        except Exception as err:
            if _no_such_key(err):
                raise ResultsNotFound(f"s3://{self.layout.bucket}/{key} does not exist") from None
            raise

    def _json(self, key: str) -> Any:
        return json.loads(self._get(key))

    def _list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, relative to it."""
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.layout.bucket, Prefix=prefix):
            keys.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
        return keys

    def run_prefix(self, run_id: str) -> str:
        """:param run_id: the Airflow run id; the run's folder."""
        return self.layout.run_prefix(self.campaign.name, run_id)

    # -- the run -------------------------------------------------------------------------------

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        """
        The run manifest (``run.json``), or None before the report task wrote it.

        :param run_id: the Airflow run id.
        """
        try:
            document = self._json(self.layout.run_manifest_key(self.campaign.name, run_id))
        except ResultsNotFound:
            return None
        if not isinstance(document, dict):
            raise ReportInputError(f"{self.campaign.name}/{run_id}: run.json is not an object")
        return document

    def file_key(self, run_id: str, path: str) -> str:
        """
        The key of a published file of the run (``report/index.html``, ``results/<spec>/...``).

        :param run_id: the Airflow run id.
        :param path: the path relative to the run folder.
        :raises ResultsNotFound: for a path outside ``report/`` and ``results/``.
        """
        if not _FILE_RE.match(path) or ".." in path.split("/") or "//" in path:
            raise ResultsNotFound(f"{path!r} is not a file of the run")
        return self.run_prefix(run_id) + path

    def read_file(self, run_id: str, path: str) -> bytes:
        """
        A published file of the run.

        :param run_id: the Airflow run id.
        :param path: the path relative to the run folder (see :meth:`file_key`).
        """
        return self._get(self.file_key(run_id, path))

    def result_files(self, run_id: str, spec: str) -> list[str]:
        """
        The CSVs of a spec's final ranking, relative to the run folder.

        :param run_id: the Airflow run id.
        :param spec: the spec name.
        """
        base = f"results/{spec_folder(spec)}/{FINAL_DIR}/"
        names = self._list(self.run_prefix(run_id) + base)
        return [base + n for n in sorted(names) if "/" not in n and n.endswith(".csv")]

    # -- designs -------------------------------------------------------------------------------

    def designs(self, run_id: str, spec: str) -> DesignTable:
        """
        A spec's ranked designs (every design, and which are final).

        :param run_id: the Airflow run id.
        :param spec: the spec name, as in the run manifest.
        :raises ResultsNotFound: when the spec has no published results.
        """
        files = self.result_files(run_id, spec)
        all_csv = next((f for f in files if f.endswith("/" + ALL_DESIGNS_CSV)), None)
        if all_csv is None:
            raise ResultsNotFound(f"{spec}: no {ALL_DESIGNS_CSV} in run {run_id}")
        finals = [f for f in files if _FINAL_CSV_RE.search(f)]
        key = self.run_prefix(run_id) + all_csv
        head = self.client.head_object(Bucket=self.layout.bucket, Key=key)
        cache_key = (self.layout.bucket, key, str(head.get("ETag")), *finals)

        def load() -> DesignTable:
            all_rows = _rows(self._get(key))
            final_rows = _rows(self.read_file(run_id, finals[0])) if finals else []
            match = _FINAL_CSV_RE.search(finals[0]) if finals else None
            header = all_rows[0].keys() if all_rows else ()
            columns = {
                m.key: column
                for m in METRICS
                if (column := next((c for c in m.candidates if c in header), None))
            }
            return DesignTable(
                spec=spec,
                designs=design_rows(spec, all_rows, key),
                final_ids=frozenset(row.get("id", "") for row in final_rows),
                budget=int(match.group(1)) if match else None,
                columns=columns,
            )

        return TABLES.get(cache_key, load)

    # -- structures ----------------------------------------------------------------------------

    def structure_key(self, run_id: str, spec: str, design_id: str) -> str:
        """
        Where a design's structure is: the final or top-ranked CIF of the results, else the
        refolded CIF in the analysis attempt of the design's shard.

        :param run_id: the Airflow run id.
        :param spec: the spec name.
        :param design_id: the design id (``1g13prot_03``).
        :raises ResultsNotFound: when no CIF of the design exists.
        """
        if not _DESIGN_ID_RE.match(design_id):
            raise ResultsNotFound(f"{design_id!r} is not a design id")
        base = f"{self.run_prefix(run_id)}results/{spec_folder(spec)}/{FINAL_DIR}/"
        name = re.compile(rf"^[^/]+/rank\d+_{re.escape(design_id)}\.cif\Z")
        ranked = [k for k in self._list(base) if name.match(k)]
        if ranked:
            return base + sorted(ranked)[0]
        for attempt in self._analysis_attempts(run_id, spec):
            found = self._design_cifs(attempt).get(design_id)
            if found:
                return found
        raise ResultsNotFound(f"{spec}: no structure of design {design_id} in run {run_id}")

    def _analysis_attempts(self, run_id: str, spec: str) -> list[str]:
        try:
            shards = self._json(self.layout.shards_key(self.campaign.name, run_id)).get("shards", [])
        except ResultsNotFound:
            return []
        attempts = []
        for shard in shards:
            analysis = shard.get("stages", {}).get("analysis")
            if spec not in shard.get("specs", []) or not analysis:
                continue
            try:
                commit = self._json(analysis["commit_key"])
            except ResultsNotFound:
                continue
            attempts.append(str(commit["attempt_prefix"]))
        return attempts

    def _design_cifs(self, attempt: str) -> dict[str, str]:
        """Design id -> key of its refolded CIF (else its designed CIF) in one attempt."""
        found: dict[str, tuple[int, str]] = {}
        for rel in self._list(attempt):
            parts = rel.split("/")
            if not rel.endswith(".cif") or len(parts) < 3:
                continue
            # <item>/intermediate_designs*/refold_cif/<id>.cif beats <item>/intermediate_designs*/<id>.cif
            rank = (
                0 if parts[-2] == "refold_cif" else 1 if parts[-2].startswith("intermediate_designs") else 2
            )
            if rank == 2:
                continue
            ident = parts[-1][: -len(".cif")]
            if ident not in found or rank < found[ident][0]:
                found[ident] = (rank, attempt + rel)
        return {ident: key for ident, (_, key) in found.items()}

    def structure(self, run_id: str, spec: str, design_id: str) -> tuple[str, bytes]:
        """
        A design's CIF.

        :param run_id: the Airflow run id.
        :param spec: the spec name.
        :param design_id: the design id.
        :return: the file name and its bytes.
        """
        key = self.structure_key(run_id, spec, design_id)
        return key.rsplit("/", 1)[-1], self._get(key)

    # -- summaries -----------------------------------------------------------------------------

    def spec_names(self, manifest: Mapping[str, Any]) -> list[str]:
        """:param manifest: a run manifest; the names of its specs."""
        return [str(entry.get("spec")) for entry in manifest.get("specs", []) if entry.get("spec")]


def run_summary(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    The figures of a run shown in the runs table (designs made, final; hours and cost).

    :param manifest: the run manifest, or None before the report wrote it.
    """
    if manifest is None:
        return {"published": False}
    specs: Sequence[Mapping[str, Any]] = manifest.get("specs", [])
    estimate, actual = manifest.get("estimate", {}), manifest.get("actual", {})
    return {
        "published": True,
        "status": manifest.get("status"),
        "specs": len(specs),
        "designs_expected": sum(int(s.get("designs_expected") or 0) for s in specs),
        "designs_produced": sum(int(s.get("designs_produced") or 0) for s in specs),
        "final_designs": sum(int(s.get("final_designs") or 0) for s in specs),
        "estimated_hours": estimate.get("instance_hours"),
        "actual_hours": actual.get("instance_hours"),
        "estimated_cost_usd": estimate.get("cost_usd"),
        "actual_cost_usd": actual.get("cost_usd"),
    }

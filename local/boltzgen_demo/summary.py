"""What the demo prints at the end: top designs per spec and how much of the run came from the cache."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = ("design_to_target_iptm", "design_ptm", "min_design_to_target_pae", "filter_rmsd")
_FINAL_GLOB = "final_ranked_designs/final_designs_metrics_*.csv"


@dataclass(frozen=True)
class SpecDesigns:
    """
    The final designs of one spec.

    :param spec: the spec's path under the results folder, e.g. ``vanilla_protein/1g13prot``.
    :param csv_path: the final metrics CSV.
    :param rows: its rows, best first.
    """

    spec: str
    csv_path: Path
    rows: list[dict[str, str]]


def find_final_designs(results: Path) -> list[SpecDesigns]:
    """
    Read every spec's final metrics CSV under a run's results folder.

    :param results: the ``results/`` folder copied out of S3.
    """
    found = []
    for path in sorted(results.glob(f"**/{_FINAL_GLOB}")):
        spec = path.parent.parent.relative_to(results).as_posix()
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        rows.sort(key=lambda r: _number(r.get("final_rank")) or math.inf)
        found.append(SpecDesigns(spec, path, rows))
    return found


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return None if number is None or math.isnan(number) else number


def _cell(value: str | None) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.3f}"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    # Rank and id read left to right; metric columns align on the decimal point.
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def format_top_designs(specs: Sequence[SpecDesigns], top: int = 3) -> str:
    """
    A fixed-width table per spec: rank, design id and the key metrics.

    :param specs: what :func:`find_final_designs` returned.
    :param top: designs shown per spec.
    """
    if not specs:
        return "no final designs found"
    headers = ("rank", "id", "iptm(d-t)", "ptm(d)", "min pae(d-t)", "filter rmsd")
    lines: list[str] = []
    for spec in specs:
        rows = [
            (r.get("final_rank", "?"), r.get("id", "?"), *(_cell(r.get(m)) for m in METRICS))
            for r in spec.rows[:top]
        ]
        widths = [max(len(h), *(len(str(row[i])) for row in rows)) if rows else len(h)
                  for i, h in enumerate(headers)]  # fmt: skip
        lines.append(f"{spec.spec}  ({len(spec.rows)} final designs)")
        for cells in (headers, *rows):
            lines.append("  " + _row(cells, widths))
        if not rows:
            lines.append("  (none passed)")
    return "\n".join(lines)


@dataclass(frozen=True)
class CacheUse:
    """
    How the stages of a run were satisfied.

    :param ran: stage outputs committed by jobs of this run.
    :param cached: stage outputs committed by an earlier run and reused.
    :param failed: stages without a commit.
    """

    ran: int
    cached: int
    failed: int

    @property
    def total(self) -> int:
        """Every stage the run needed."""
        return self.ran + self.cached + self.failed


def cache_use(manifest: Mapping[str, Any]) -> CacheUse:
    """
    Count the shard stages of a run manifest (``run.json``) by how they were satisfied.

    :param manifest: the run manifest.
    """
    ran = cached = failed = 0
    for shard in manifest.get("shards", []):
        for stage in shard.get("stages", {}).values():
            status = stage.get("status")
            if status == "committed":
                ran += 1
            elif status == "cached":
                cached += 1
            elif status == "failed":
                failed += 1
    return CacheUse(ran, cached, failed)


def format_cache_use(use: CacheUse) -> str:
    """
    One sentence on the cache, e.g. ``36 of 36 shard stages were cache hits: no job ran for them``.

    :param use: what :func:`cache_use` returned.
    """
    if use.total == 0:
        return "the run has no shard stages"
    text = f"{use.cached} of {use.total} shard stages were cache hits"
    if use.cached == use.total:
        return text + " (committed in S3 by an earlier run): no job ran for them"
    text += f", {use.ran} ran as SageMaker jobs"
    if use.failed:
        text += f", {use.failed} failed"
    return text

"""Analysis stage (CPU): metrics per design and the aggregate CSVs BoltzGen filtering reads.

Runs ``boltzgen execute --steps analysis`` on configs written by the design stage's
``boltzgen configure``: ``boltzgen run`` would call torch.cuda.get_device_capability() and fail on
this CPU instance. CUDA is hidden from the children so nothing tries a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import stepcommon as sc


def analysed_ids(design_dir: Path) -> list[str]:
    """Designs with both metrics files (what Analyze aggregates)."""
    metrics = design_dir / "metrics_tmp"
    data = {p.name[len("data_") : -len(".npz")] for p in metrics.glob("data_*.npz")}
    values = {p.name[len("metrics_") : -len(".npz")] for p in metrics.glob("metrics_*.npz")}
    return sorted(data & values)


def analyse(ctx: sc.StageContext, item: dict[str, Any], gpu: str | None = None) -> None:
    """``boltzgen execute --steps analysis`` on one item already in this stage's output (CUDA hidden)."""
    out = ctx.result / sc.item_dirname(item)
    sc.check_moldir(out / "config" / "analysis.yaml")
    sc.boltzgen(ctx, item, ["execute", str(out), "--steps", "analysis"], gpu=gpu, log_name="analysis.log")


def run(ctx: sc.StageContext) -> sc.StageOutcome:
    """Copy the folded designs, then analyse each item in turn (Analyze uses every core itself)."""
    items = ctx.work["items"]
    sc.copy_upstream(sc.upstream_dir(ctx), ctx.result, items)
    cpu = sc.StageContext(ctx.work, ctx.result, ctx.deadline, sc.Gpus((), ctx.gpus.model))
    sc.fan_out(cpu, items, lambda item, gpu: analyse(cpu, item, gpu))
    ctx.exit_codes, ctx.timings, ctx.oom_detected = cpu.exit_codes, cpu.timings, cpu.oom_detected
    return outcome(ctx)


def follow(ctx: sc.StageContext, item: dict[str, Any]) -> None:
    """Copy one item the folding in this job has just finished, and analyse it (``sc.Follower``)."""
    sc.copy_upstream(sc.upstream_dir(ctx), ctx.result, [item])
    analyse(ctx, item)


def outcome(ctx: sc.StageContext) -> sc.StageOutcome:
    """The designs analysed in this stage's output."""
    folder = sc.designs_folder(ctx.work)
    items = ctx.work["items"]
    ids = sorted(i for it in items for i in analysed_ids(ctx.result / sc.item_dirname(it) / folder))
    return sc.StageOutcome(sc.expected_designs(ctx.work), ids)


if __name__ == "__main__":
    sys.exit(sc.main("analysis", run))

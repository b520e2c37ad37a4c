"""Inverse folding stage: sequences for the shard's backbones, continuing from the design stage."""

from __future__ import annotations

import sys
from typing import Any

import stepcommon as sc


def run(ctx: sc.StageContext) -> sc.StageOutcome:
    """Copy the designs, then ``boltzgen execute --steps inverse_folding`` per item on the GPUs."""
    items = ctx.work["items"]
    bg = ctx.work.get("boltzgen", {})
    sc.copy_upstream(sc.upstream_dir(ctx), ctx.result, items)
    if bg.get("skip_inverse_folding"):
        # Nothing to run: later steps read intermediate_designs/ directly.
        ids = sorted(
            p.stem for it in items for p in sc.design_files(ctx.result / sc.item_dirname(it) / sc.DESIGN_DIR)
        )
        return sc.StageOutcome(sum(it["count"] for it in items), ids)
    if not ctx.gpus.ids:
        raise sc.StepError(
            "inverse_folding needs a GPU and none was found (nvidia-smi -L, CUDA_VISIBLE_DEVICES)"
        )

    def job(item: dict[str, Any], gpu: str | None) -> None:
        out = ctx.result / sc.item_dirname(item)
        sc.boltzgen(
            ctx,
            item,
            ["execute", str(out), "--steps", "inverse_folding"],
            gpu=gpu,
            log_name="inverse_folding.log",
        )

    sc.fan_out(ctx, items, job)
    per_design = int(bg.get("inverse_fold_num_sequences") or 1)
    ids = sorted(
        p.stem
        for it in items
        for p in sc.design_files(ctx.result / sc.item_dirname(it) / sc.INVERSE_FOLDED_DIR)
    )
    return sc.StageOutcome(sum(it["count"] for it in items) * per_design, ids)


if __name__ == "__main__":
    sys.exit(sc.main("inverse_folding", run))

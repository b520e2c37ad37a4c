"""Folding stage: refold design + target, and (per protocol) the design alone and affinity."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import stepcommon as sc

#: Steps of this stage by protocol (BinderDesignPipeline adds design_folding and affinity only here).
EXTRA_STEPS = {
    "protein-anything": ["design_folding"],
    "protein-small_molecule": ["design_folding", "affinity"],
}
#: Where each step leaves one file per design, relative to the design folder.
OUTPUTS = {"folding": "fold_out_npz", "design_folding": "fold_out_design_npz", "affinity": "affinity_out_npz"}


def stage_steps(protocol: str) -> list[str]:
    """The BoltzGen steps the folding stage runs for ``protocol``."""
    return ["folding", *EXTRA_STEPS.get(protocol, [])]


def folded_ids(design_dir: Path, steps: list[str]) -> list[str]:
    """Designs that have the output of every step (a skipped OOM batch leaves a gap)."""
    return [
        p.stem
        for p in sc.design_files(design_dir)
        if all((design_dir / OUTPUTS[s] / f"{p.stem}.npz").is_file() for s in steps)
    ]


def run(ctx: sc.StageContext) -> sc.StageOutcome:
    """Copy the inverse-folded designs, then ``boltzgen execute --steps folding ...`` per item."""
    items = ctx.work["items"]
    sc.copy_upstream(sc.upstream_dir(ctx), ctx.result, items)
    if not ctx.gpus.ids:
        raise sc.StepError("folding needs a GPU and none was found (nvidia-smi -L, CUDA_VISIBLE_DEVICES)")
    steps = stage_steps(ctx.work["protocol"])

    def job(item: dict[str, Any], gpu: str | None) -> None:
        out = ctx.result / sc.item_dirname(item)
        sc.boltzgen(ctx, item, ["execute", str(out), "--steps", *steps], gpu=gpu, log_name="folding.log")

    sc.fan_out(ctx, items, job)
    folder = sc.designs_folder(ctx.work)
    ids = sorted(i for it in items for i in folded_ids(ctx.result / sc.item_dirname(it) / folder, steps))
    return sc.StageOutcome(sc.expected_designs(ctx.work), ids)


if __name__ == "__main__":
    sys.exit(sc.main("folding", run))

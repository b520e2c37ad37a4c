"""Design stage: configure every BoltzGen step per work item, run diffusion, renumber designs globally.

Items are spread over the GPUs by ``est_seconds`` (LPT), one process per GPU
(``CUDA_VISIBLE_DEVICES=i``, ``--devices 1``): Lightning DDP over several GPUs is unreliable for design.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import stepcommon as sc


def configure_args(work: dict[str, Any], item: dict[str, Any], spec: Path, out: Path) -> list[str]:
    """``boltzgen configure`` arguments for one item: every step, with this campaign's options.

    :param work: the work file.
    :param item: the work item.
    :param spec: the spec file in the specs input.
    :param out: the item's BoltzGen output folder.
    """
    bg = work.get("boltzgen", {})
    batch = int(bg.get("diffusion_batch_size") or 1)
    args = [
        "configure", str(spec), "--output", str(out), "--protocol", work["protocol"],
        "--num_designs", str(item["count"]),
        # Explicit: BoltzGen's default depends on num_designs, so shards would differ.
        "--diffusion_batch_size", str(batch),
        "--devices", "1",
        "--inverse_fold_num_sequences", str(int(bg.get("inverse_fold_num_sequences") or 1)),
    ]  # fmt: skip
    if bg.get("skip_inverse_folding"):
        args.append("--skip_inverse_folding")
    flt = work.get("filtering") or {}
    if flt.get("budget"):
        args += ["--budget", str(int(flt["budget"]))]
    # Analysis skips designs whose metrics exist: a retried analysis resumes, and filtering can
    # aggregate the union of several shards' metrics without recomputing them. Last, so that a
    # campaign's step_config cannot turn it off (BoltzGen keeps the last value of a key).
    return args + sc.step_config_args(work) + ["--config", "analysis", "data.skip_existing=true"]


def renumber(design_dir: Path, item: dict[str, Any], batch: int) -> list[str]:
    """Rename BoltzGen's per-run ids ``<stem>_<local>`` to global ``<stem>_<start + local>``.

    BoltzGen has no seed: every shard writes ``<stem>_0...``, so without this shards collide.
    Later steps take a design's id from its file name (FromGeneratedDataModule uses ``path.stem``,
    analysis stores that id in ``metrics_tmp``), and the mmCIF block is named ``model``, so renaming
    the files renames the design. Designs beyond ``count`` (num_designs rounded up to the batch)
    are removed so items never overlap.

    :return: the global ids kept, sorted.
    """
    stem = sc.spec_stem(item)
    total = -(-item["count"] // batch) * batch
    pattern = re.compile(rf"^{re.escape(stem)}(?:_(\d+))?(\.cif|\.npz|_native\.cif|_native\.pdb)$")
    staging = design_dir.with_name(design_dir.name + ".renumber")
    if staging.exists():
        shutil.rmtree(staging)
    design_dir.rename(staging)
    design_dir.mkdir()
    kept: set[str] = set()
    for path in sorted(staging.iterdir()):
        m = pattern.match(path.name)
        if not m:
            path.rename(design_dir / path.name)  # molecules_out_dir and other companions
            continue
        if m.group(1) is None and total > 1:
            raise sc.StepError(f"unexpected design file {path.name} in {design_dir}")
        local = int(m.group(1) or 0)
        if local >= item["count"]:
            path.unlink()
            continue
        new_id = sc.design_id(item, item["start"] + local)
        path.rename(design_dir / f"{new_id}{m.group(2)}")
        if m.group(2) == ".cif":
            kept.add(new_id)
    shutil.rmtree(staging)
    return sorted(kept)


def run(ctx: sc.StageContext) -> sc.StageOutcome:
    """Configure and design every item; renumber; count what was produced."""
    if not ctx.gpus.ids:
        raise sc.StepError("design needs a GPU and none was found (nvidia-smi -L, CUDA_VISIBLE_DEVICES)")
    specs = sc.input_dir("specs")
    batch = int(ctx.work.get("boltzgen", {}).get("diffusion_batch_size") or 1)
    produced: dict[str, list[str]] = {}

    def job(item: dict[str, Any], gpu: str | None) -> None:
        spec = specs / item["spec"]
        if not spec.is_file():
            raise sc.StepError(f"spec {item['spec']} not found under the specs input {specs}")
        out = ctx.result / sc.item_dirname(item)
        sc.boltzgen(ctx, item, configure_args(ctx.work, item, spec, out), gpu=gpu, log_name="configure.log")
        sc.boltzgen(ctx, item, ["execute", str(out), "--steps", "design"], gpu=gpu, log_name="design.log")
        produced[sc.item_dirname(item)] = renumber(out / sc.DESIGN_DIR, item, batch)

    sc.fan_out(ctx, ctx.work["items"], job)
    ids = sorted(i for ids in produced.values() for i in ids)
    return sc.StageOutcome(designs_expected=sum(it["count"] for it in ctx.work["items"]), design_ids=ids)


if __name__ == "__main__":
    sys.exit(sc.main("design", run))

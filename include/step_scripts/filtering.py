"""Filtering stage (CPU, one job per spec): BoltzGen filtering once over every shard's designs.

Input layout: ``input/analysis/`` holds each committed analysis attempt of the spec in its own
sub-folder (the ManifestFile keeps keys relative to ``<prefix>/cache/``); a shard's root is
the folder holding its ``_manifest.json``. Design ids are already globally unique, so the union is a
plain one: design, refolded and metrics files of every shard are linked into one BoltzGen design
folder, then ``boltzgen execute --steps analysis filtering`` runs there. Analysis was configured
with ``data.skip_existing=true``, so it computes nothing and only aggregates the union's metrics
(ids sorted, exactly as one run over all designs would), and filtering ranks and selects once.
``boltzgen merge`` is not used: it prefixes every id with a slug of its source folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import contract
import stepcommon as sc

UNION_SUBDIRS = ("refold_cif", "refold_design_cif", "metrics_tmp", "molecules_out_dir")


def filter_overrides(work: dict[str, Any], design_dir: Path, outdir: Path) -> dict[str, Any]:
    """Top-level keys of BoltzGen's filtering config set from work.json ``filtering``."""
    flt = work.get("filtering") or {}
    budget = flt.get("budget")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise sc.StepError(f"filtering.budget must be a positive integer, got {budget!r}")
    values: dict[str, Any] = {"design_dir": str(design_dir), "outdir": str(outdir), "budget": budget}
    if flt.get("alpha") is not None:
        values["alpha"] = float(flt["alpha"])
    if flt.get("filter_biased") is not None:
        values["filter_biased"] = bool(flt["filter_biased"])
    if flt.get("refolding_rmsd_threshold") is not None:
        values["refolding_rmsd_threshold"] = float(flt["refolding_rmsd_threshold"])
    if flt.get("metrics_override"):
        values["metrics_override"] = {
            k: (None if v is None else float(v)) for k, v in flt["metrics_override"].items()
        }
    try:
        if flt.get("additional_filters"):
            values["additional_filters"] = contract.parse_additional_filters(list(flt["additional_filters"]))
        if flt.get("size_buckets"):
            values["size_buckets"] = contract.parse_size_buckets(list(flt["size_buckets"]))
    except ValueError as exc:
        raise sc.StepError(f"filtering: {exc}") from None
    return values


def shard_item_dirs(analysis_root: Path, spec_name: str) -> list[tuple[Path, Path]]:
    """Every (shard root, item folder) of ``spec_name`` among the analysis attempts."""
    found = []
    for manifest_path in sorted(analysis_root.rglob(sc.MANIFEST_NAME)):
        root = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("stage") != "analysis":
            raise sc.StepError(f"{manifest_path}: not an analysis result (stage {manifest.get('stage')!r})")
        for item in manifest.get("items", []):
            if item.get("spec_name") == spec_name:
                folder = root / sc.item_dirname(item)
                if not folder.is_dir():
                    raise sc.StepError(f"{root}: analysis result lacks item folder {folder.name}")
                found.append((root, folder))
    return found


def build_union(sources: list[tuple[Path, Path]], folder: str, union: Path) -> list[str]:
    """Link every shard's designs into ``union/<folder>``; ids must not repeat."""
    dest = union / folder
    seen: dict[str, Path] = {}
    for _, item_dir in sources:
        src = item_dir / folder
        if not (src / "aggregate_metrics_analyze.csv").is_file():
            raise sc.StepError(f"{src}: no aggregate_metrics_analyze.csv (analysis did not finish)")
        for path in sorted(src.iterdir()):
            if path.is_file() and path.suffix in (".cif", ".npz"):
                if path.suffix == ".cif" and path.stem in seen:
                    raise sc.StepError(f"design id {path.stem} is in both {seen[path.stem]} and {src}")
                if path.suffix == ".cif":
                    seen[path.stem] = src
                sc.link_or_copy(path, dest / path.name)
        for sub in UNION_SUBDIRS:
            if (src / sub).is_dir():
                for path in sorted((src / sub).iterdir()):
                    if path.is_file():
                        sc.link_or_copy(path, dest / sub / path.name)
    return sorted(seen)


def design_lengths(sources: list[tuple[Path, Path]], folder: str) -> list[int]:
    """Lengths of the distinct designed sequences of every shard, the designs BoltzGen selects among."""
    sequences: set[str] = set()
    for _, item_dir in sources:
        with (item_dir / folder / "aggregate_metrics_analyze.csv").open(newline="") as fh:
            sequences.update(row["designed_sequence"] for row in csv.DictReader(fh))
    return [len(s) for s in sequences]


def check_buckets(overrides: dict[str, Any], lengths: list[int]) -> None:
    """Fail before BoltzGen runs where the size buckets cannot fill the budget (BoltzGen would crash)."""
    try:
        contract.check_size_buckets_fill(overrides.get("size_buckets") or [], overrides["budget"], lengths)
    except ValueError as exc:
        raise sc.StepError(f"filtering.{exc}") from None


def run(ctx: sc.StageContext) -> sc.StageOutcome:
    """Union the spec's analysed shards and run BoltzGen filtering once over them."""
    items = ctx.work["items"]
    spec_names = {it["spec_name"] for it in items}
    if len(spec_names) != 1:
        raise sc.StepError(f"a filtering job covers one spec, work lists {sorted(spec_names)}")
    spec_name = spec_names.pop()
    sources = shard_item_dirs(sc.input_dir("analysis"), spec_name)
    if not sources:
        raise sc.StepError(f"no analysis result of {spec_name} under {sc.input_dir('analysis')}")
    root0, item0 = sources[0]
    folder = sc.designs_folder(ctx.work)
    old_paths = json.loads((root0 / sc.PATHS_NAME).read_text())
    old_item = f"{old_paths['result']}/{item0.name}"

    union = sc.scratch_dir() / "union"
    if union.exists():
        shutil.rmtree(union)
    ids = build_union(sources, folder, union)
    (union / "config").mkdir(parents=True)
    # Configs of the first shard, pointed at the union; filtering options come from this job's work.
    analysis_cfg = (item0 / "config" / "analysis.yaml").read_text()
    filtering_cfg = (item0 / "config" / "filtering.yaml").read_text()
    (union / "config" / "analysis.yaml").write_text(
        sc.set_top_level_keys(analysis_cfg.replace(old_item, str(union)), {"design_dir": str(union / folder)})
    )
    overrides = filter_overrides(ctx.work, union / folder, ctx.result)
    check_buckets(overrides, design_lengths(sources, folder))
    (union / "config" / "filtering.yaml").write_text(sc.set_top_level_keys(filtering_cfg, overrides))
    sc.check_moldir(union / "config" / "analysis.yaml")
    steps = {"steps": [{"name": s, "config_file": f"config/{s}.yaml"} for s in ("analysis", "filtering")]}
    (union / "steps.yaml").write_text(json.dumps(steps, indent=1) + "\n")

    cpu = sc.StageContext(ctx.work, ctx.result, ctx.deadline, sc.Gpus((), None))
    log_item = dict(items[0], start=0, count=len(ids))
    sc.boltzgen(
        cpu,
        log_item,
        ["execute", str(union), "--steps", "analysis", "filtering"],
        gpu=None,
        log_name="filtering.log",
    )
    ctx.exit_codes, ctx.timings = cpu.exit_codes, cpu.timings
    shutil.copytree(union / "config", ctx.result / "config", dirs_exist_ok=True)

    budget = overrides["budget"]
    final_csv = ctx.result / "final_ranked_designs" / f"final_designs_metrics_{budget}.csv"
    if not final_csv.is_file():
        raise sc.StepError(f"boltzgen filtering wrote no {final_csv.name}")
    with final_csv.open(newline="") as fh:
        selected = sorted(row["id"] for row in csv.DictReader(fh))
    shutil.rmtree(union, ignore_errors=True)
    return sc.StageOutcome(designs_expected=min(budget, len(ids)) if ids else budget, design_ids=selected)


if __name__ == "__main__":
    sys.exit(sc.main("filtering", run))

"""`boltzgen configure`: per-step YAML configs and steps.yaml, as BinderDesignPipeline writes them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

STEP_NAMES = [
    "design", "inverse_folding", "design_folding", "folding", "affinity", "analysis", "filtering",
]  # fmt: skip

PROTOCOL_CONFIGS: dict[str, dict[str, list[str]]] = {
    "protein-anything": {},
    "peptide-anything": {
        "analysis": ["largest_hydrophobic=false", "largest_hydrophobic_refolded=false"],
        "filtering": ["filter_cysteine=true", "alpha=0.01", "refolding_rmsd_threshold=2"],
    },
    "protein-small_molecule": {
        "analysis": ["affinity_metrics=true"],
        "filtering": ["use_affinity=true"],
    },
    "nanobody-anything": {
        "analysis": ["largest_hydrophobic=false", "largest_hydrophobic_refolded=false"],
        "filtering": ["filter_cysteine=true"],
    },
    "antibody-anything": {
        "analysis": ["largest_hydrophobic=false", "largest_hydrophobic_refolded=false"],
        "filtering": ["filter_cysteine=true"],
    },
    "protein-redesign": {
        "folding": ["data.design_mask_templates=true"],
        "analysis": ["use_design_mask_for_target=true"],
        "filtering": [
            "metrics_override={design_to_target_iptm: null, neg_min_design_to_target_pae: null, "
            "design_ptm: null, plip_hbonds_refolded: null, plip_saltbridge_refolded: null, "
            "delta_sasa_refolded: null, plip_hbonds: null, plip_saltbridge: null, "
            "delta_sasa_original: null, design_residue_iptm: 1, iptm: 2, ptm: 3, "
            "neg_filter_rmsd_design: 4}"
        ],
    },
}

FILTERING_DEFAULTS: dict[str, Any] = {
    "_target_": "boltzgen.task.filter.filter.Filter",
    "budget": 30, "top_budget": 10, "use_affinity": False, "filter_cysteine": False,
    "from_inverse_folded": False, "filter_bindingsite": False, "modality": "peptide",
    "peptide_type": "linear", "alpha": 0.001, "random_state": 0, "metrics_override": None,
    "num_liability_plots": 0, "plot_seq_logos": False,
}  # fmt: skip

GPU_STEPS = {"design", "inverse_folding", "folding", "design_folding", "affinity"}


def set_dotted(config: dict[str, Any], dotted: str) -> None:
    """Apply one Hydra dot-list override ``a.b=value`` (value parsed as YAML, like OmegaConf)."""
    if "=" not in dotted:
        raise ValueError(f"Invalid override {dotted!r}: expected key=value")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _predict(output: str, devices: int, use_kernels: bool, moldir: str, checkpoint: str) -> dict[str, Any]:
    return {
        "_target_": "boltzgen.task.predict.predict.Predict",
        "output": output,
        "checkpoint": checkpoint,
        "trainer": {"accelerator": "gpu", "devices": devices, "precision": "bf16-mixed"},
        "override": {"use_kernels": use_kernels},
        "data": {"cfg": {"moldir": moldir}},
    }


def build_steps(
    args: argparse.Namespace, use_kernels: bool, devices: int
) -> list[tuple[str, dict[str, Any]]]:
    """The resolved config of every step, in pipeline order (same rules as BinderDesignPipeline)."""
    out = Path(args.output).absolute()
    moldir = str(args.moldir)
    protocol = args.protocol
    extra: dict[str, list[str]] = {s: list(v) for s, v in PROTOCOL_CONFIGS[protocol].items()}
    for group in args.config or []:
        if len(group) < 2:
            raise ValueError(f"Invalid config: {group}. Expected format: <step_name> <arg1>=<value1> ...")
        if group[0] not in STEP_NAMES:
            raise ValueError(f"Invalid step name: {group[0]}. Available steps: {STEP_NAMES}")
        extra.setdefault(group[0], []).extend(group[1:])

    batch = args.diffusion_batch_size or (1 if args.num_designs < 100 else 10)
    steps: list[tuple[str, dict[str, Any]]] = []
    design_dir = out / "intermediate_designs"
    cfg = _predict(str(design_dir), devices, use_kernels, moldir, "boltzgen1_diverse.ckpt")
    cfg["diffusion_samples"] = batch
    cfg["data"]["num_workers"] = args.num_workers
    cfg["data"]["cfg"].update(
        yaml_path=[str(Path(s).absolute()) for s in args.design_spec],
        multiplicity=math.ceil(args.num_designs / batch),
        skip_existing=bool(args.reuse),
        output_dir=str(design_dir),
    )
    steps.append(("design", cfg))

    if not args.skip_inverse_folding:
        avoid = args.inverse_fold_avoid
        if avoid is None:
            avoid = "C" if protocol in ("peptide-anything", "nanobody-anything", "antibody-anything") else ""
        if_dir = out / "intermediate_designs_inverse_folded"
        cfg = _predict(str(if_dir), devices, use_kernels, moldir, "boltzgen1_ifold.ckpt")
        cfg["data"].update(
            design_dir=str(design_dir), skip_existing=bool(args.reuse), skip_existing_kind="inverse_fold"
        )
        cfg["data"]["cfg"]["multiplicity"] = args.inverse_fold_num_sequences
        cfg["override"]["inverse_fold_args"] = {"inverse_fold_restriction": list(avoid)}
        steps.append(("inverse_folding", cfg))
        design_dir = if_dir

    def fold_like(kind: str, checkpoint: str) -> dict[str, Any]:
        c = _predict(str(design_dir), devices, use_kernels, moldir, checkpoint)
        c["data"].update(design_dir=str(design_dir), skip_existing=bool(args.reuse), skip_existing_kind=kind)
        c["writer"] = {"design_dir": "${data.design_dir}"}
        return c

    steps.append(("folding", fold_like("folded", "boltz2_conf_final.ckpt")))
    designfolding = protocol in ("protein-anything", "protein-small_molecule")
    if designfolding:
        cfg = fold_like("design_folded", "boltz2_conf_final.ckpt")
        cfg["writer"]["designfolding"] = True
        cfg["data"]["cfg"]["return_designfolding"] = True
        steps.append(("design_folding", cfg))
    affinity = protocol == "protein-small_molecule"
    if affinity:
        steps.append(("affinity", fold_like("affinity", "boltz2_aff.ckpt")))

    analysis: dict[str, Any] = {
        "_target_": "boltzgen.task.analyze.analyze.Analyze",
        "name": "analyze",
        "design_dir": str(design_dir),
        "num_processes": 32,
        "affinity_metrics": False,
        "largest_hydrophobic": False,
        "largest_hydrophobic_refolded": True,
        "designfolding_metrics": designfolding,
        "delta_sasa_original": bool(args.skip_inverse_folding),
        "allatom_fold_metrics": bool(args.skip_inverse_folding),
        "data": {
            "_target_": "boltzgen.task.predict.data_from_generated.FromGeneratedDataModule",
            "design_dir": "${design_dir}",
            "skip_existing": bool(args.reuse),
            "skip_existing_kind": "analyzed",
            "cfg": {"moldir": moldir},
        },
    }
    steps.append(("analysis", analysis))

    filtering = dict(FILTERING_DEFAULTS)
    filtering.update(
        design_dir=str(design_dir),
        outdir=str(out),
        from_inverse_folded=not args.skip_inverse_folding,
        use_affinity=affinity,
        filter_designfolding=designfolding,
        budget=args.budget,
    )
    if args.alpha is not None:
        filtering["alpha"] = args.alpha
    if args.filter_biased is not None:
        filtering["filter_biased"] = args.filter_biased == "true"
    if args.refolding_rmsd_threshold is not None:
        filtering["refolding_rmsd_threshold"] = args.refolding_rmsd_threshold
    if args.metrics_override:
        filtering["metrics_override"] = parse_metrics_override(args.metrics_override)
    if args.additional_filters:
        filtering["additional_filters"] = parse_additional_filters(args.additional_filters)
    if args.size_buckets:
        filtering["size_buckets"] = parse_size_buckets(args.size_buckets)
    steps.append(("filtering", filtering))

    by_name = dict(steps)
    for step, overrides in extra.items():
        if step in by_name:
            for dotted in overrides:
                set_dotted(by_name[step], dotted)
    return steps


def parse_metrics_override(values: list[str]) -> dict[str, float | None]:
    """``metric=weight`` pairs; ``none`` removes the metric."""
    out: dict[str, float | None] = {}
    for item in values:
        if "=" not in item:
            raise ValueError(f"Invalid metrics_override format: '{item}'. Use 'metric_name=weight' format.")
        key, value = item.split("=", 1)
        out[key] = None if value == "" or value.lower() == "none" else float(value)
    return out


def parse_additional_filters(values: list[str]) -> list[dict[str, Any]]:
    """``feature>threshold`` / ``feature<threshold`` into BoltzGen's filter dicts."""
    out = []
    for item in values:
        op = ">" if ">" in item else "<" if "<" in item else None
        if op is None:
            raise ValueError(
                f"Invalid additional_filters format: '{item}'. "
                "Use 'feature>threshold' or 'feature<threshold' format."
            )
        feature, threshold = item.split(op, 1)
        out.append({"feature": feature, "threshold": float(threshold), "lower_is_better": op == "<"})
    return out


def parse_size_buckets(values: list[str]) -> list[dict[str, int]]:
    """``min-max:count`` into BoltzGen's size bucket dicts."""
    out = []
    for item in values:
        try:
            rng, count = item.split(":", 1)
            lo, hi = rng.split("-", 1)
            out.append({"num_designs": int(count), "min": int(lo), "max": int(hi)})
        except ValueError:
            raise ValueError(f"Invalid size_buckets format: '{item}'. Use 'min-max:count' format.") from None
    return out


def write_configs(output: Path, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Write config/<step>.yaml and steps.yaml; an existing config/ becomes previous-config-N."""
    config_dir = output / "config"
    if config_dir.exists():
        counter = 1
        while config_dir.with_name(f"previous-config-{counter}").exists():
            counter += 1
        prev = config_dir.with_name(f"previous-config-{counter}")
        print(f"Renaming existing config directory to {prev}")
        config_dir.rename(prev)
    config_dir.mkdir(parents=True)
    info = []
    for name, cfg in steps:
        path = config_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, default_flow_style=False, sort_keys=False))
        info.append({"name": name, "config_file": str(path.relative_to(output))})
    (output / "steps.yaml").write_text(
        yaml.safe_dump({"steps": info}, default_flow_style=False, sort_keys=False)
    )
    print(f"Configuration complete. Configs written to {config_dir}")
    print(f"Steps manifest written to {output / 'steps.yaml'}")

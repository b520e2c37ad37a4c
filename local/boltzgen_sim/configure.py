"""`boltzgen configure`: per-step YAML configs and steps.yaml, as BinderDesignPipeline writes them."""

from __future__ import annotations

import argparse
import copy
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import yaml

from boltzgen_sim.structures import ONE_TO_THREE

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

#: BoltzGen's default artifacts (``--design_checkpoints`` ... ``--moldir``), as its CLI names them.
DESIGN_CHECKPOINTS = [
    "huggingface:boltzgen/boltzgen-1:boltzgen1_diverse.ckpt",
    "huggingface:boltzgen/boltzgen-1:boltzgen1_adherence.ckpt",
]
ARTIFACTS: dict[str, str] = {
    "inverse_fold": "huggingface:boltzgen/boltzgen-1:boltzgen1_ifold.ckpt",
    "folding": "huggingface:boltzgen/boltzgen-1:boltz2_conf_final.ckpt",
    "affinity": "huggingface:boltzgen/boltzgen-1:boltz2_aff.ckpt",
    "moldir": "huggingface:boltzgen/inference-data:mols.zip",
}  # fmt: skip

#: resources/config/analysis.yaml of BoltzGen 0.3.2 (the keys Analyze and its data module take).
ANALYSIS_DEFAULTS: dict[str, Any] = {
    "_target_": "boltzgen.task.analyze.analyze.Analyze",
    "name": "analyze", "design_dir": None, "debug": False, "num_processes": 32,
    "affinity_metrics": False, "backbone_fold_metrics": True, "noncovalents_original": True,
    "noncovalents_refolded": True, "delta_sasa_original": True, "delta_sasa_refolded": True,
    "largest_hydrophobic": False, "largest_hydrophobic_refolded": True, "run_clustering": False,
    "liability_analysis": True, "liability_modality": "peptide", "liability_peptide_type": "linear",
    "diversity_original": False, "diversity_refolded": False, "diversity_per_target_original": False,
    "diversity_per_target_refolded": False, "novelty_original": False, "novelty_refolded": False,
    "novelty_per_target_original": False, "novelty_per_target_refolded": False,
    "ss_conditioning_metrics": False, "sequence_recovery": False, "native": False,
    "compute_lddts": False,
    "data": {
        "_target_": "boltzgen.task.predict.data_from_generated.FromGeneratedDataModule",
        "cfg": {
            "_target_": "boltzgen.task.predict.data_from_generated.DataConfig",
            "tokenizer": {"_target_": "boltzgen.data.tokenize.tokenizer.Tokenizer",
                          "atomize_modified_residues": False},
            "featurizer": {"_target_": "boltzgen.data.feature.featurizer.Featurizer"},
            "suffix": ".cif", "suffix_metadata": ".npz", "suffix_native": "_native.cif",
            "samples_per_target": 1000000000000000, "num_targets": 10000000000000,
            "moldir": None, "batch_size": 1, "num_workers": 4, "pin_memory": True,
            "disulfide_prob": 1.0, "disulfide_on": True,
        },
        "design_dir": "${design_dir}", "target_templates": False, "return_native": "${native}",
        "fail_if_no_designs": True, "skip_existing": False,
    },
}  # fmt: skip

FILTERING_DEFAULTS: dict[str, Any] = {
    "_target_": "boltzgen.task.filter.filter.Filter",
    "budget": 30, "top_budget": 10, "use_affinity": False, "filter_cysteine": False,
    "from_inverse_folded": False, "filter_bindingsite": False, "modality": "peptide",
    "peptide_type": "linear", "alpha": 0.001, "random_state": 0, "metrics_override": None,
    "num_liability_plots": 0, "plot_seq_logos": False,
}  # fmt: skip

#: Structures sampled per design by folding and design folding (BoltzGen's folding configs).
FOLD_SAMPLES = 5
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


def hub_cache(cache: Path | None) -> Path:
    """The Hugging Face hub cache ``hf_hub_download`` uses: ``--cache``, HF_HUB_CACHE, HF_HOME/hub."""
    if cache is not None:
        return Path(cache)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def resolve_artifact(artifact: str, repo_type: str, cache: Path | None) -> Path:
    """Where BoltzGen's ``get_artifact_path`` finds ``artifact``: a local path or ``huggingface:repo:file``.

    A hub artifact resolves to its snapshot in the cache (revision from ``refs/main``), where
    ``hf_hub_download`` would leave it.
    """
    if not artifact.startswith("huggingface:"):
        return Path(artifact)
    try:
        _, repo_id, filename = artifact.split(":")
    except ValueError:
        raise ValueError(
            f"Invalid artifact: {artifact}. Expected format: huggingface:<repo_id>:<filename>"
        ) from None
    folder = hub_cache(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else "main"
    path = folder / "snapshots" / revision / filename
    if not path.exists():
        # The download, simulated: an empty stand-in (no refs/main, so a real hub lookup ignores it).
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".zip":
            zipfile.ZipFile(path, "w").close()
        else:
            path.touch()
        print(f"Simulated download of {artifact} to {path}")
    return path


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
    out = Path(args.output)
    cache = getattr(args, "cache", None)

    def artifact(value: str | None, default: str) -> str:
        return str(resolve_artifact(value or default, "model", cache))

    moldir = str(resolve_artifact(args.moldir, "dataset", cache))
    print(f"Using dataset artifact: {moldir}")
    design_checkpoints = [artifact(c, c) for c in (args.design_checkpoints or DESIGN_CHECKPOINTS)]
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
    cfg = _predict(str(design_dir), devices, use_kernels, moldir, design_checkpoints[0])
    cfg["diffusion_samples"] = batch
    cfg["data"]["num_workers"] = args.num_workers
    cfg["data"]["cfg"].update(
        yaml_path=[str(s) for s in args.design_spec],
        multiplicity=math.ceil(args.num_designs / batch),
        skip_existing=bool(args.reuse),
        output_dir="${output}",
    )
    steps.append(("design", cfg))

    if not args.skip_inverse_folding:
        avoid = args.inverse_fold_avoid
        if avoid is None:
            avoid = "C" if protocol in ("peptide-anything", "nanobody-anything", "antibody-anything") else ""
        if_dir = out / "intermediate_designs_inverse_folded"
        cfg = _predict(
            str(if_dir),
            devices,
            use_kernels,
            moldir,
            artifact(args.inverse_fold_checkpoint, ARTIFACTS["inverse_fold"]),
        )
        cfg["data"].update(
            design_dir=str(design_dir), skip_existing=bool(args.reuse), skip_existing_kind="inverse_fold"
        )
        cfg["data"]["cfg"]["multiplicity"] = args.inverse_fold_num_sequences
        cfg["override"]["inverse_fold_args"] = {"inverse_fold_restriction": [ONE_TO_THREE[a] for a in avoid]}
        cfg["trainer"]["precision"] = 32
        steps.append(("inverse_folding", cfg))
        design_dir = if_dir

    def fold_like(kind: str, checkpoint: str) -> dict[str, Any]:
        c = _predict(str(design_dir), devices, use_kernels, moldir, checkpoint)
        c["data"].update(design_dir=str(design_dir), skip_existing=bool(args.reuse), skip_existing_kind=kind)
        c["writer"] = {"design_dir": "${data.design_dir}"}
        return c

    folding_checkpoint = artifact(args.folding_checkpoint, ARTIFACTS["folding"])
    cfg = fold_like("folded", folding_checkpoint)
    cfg["diffusion_samples"] = FOLD_SAMPLES
    steps.append(("folding", cfg))
    designfolding = protocol in ("protein-anything", "protein-small_molecule")
    if designfolding:
        cfg = fold_like("design_folded", folding_checkpoint)
        cfg["diffusion_samples"] = FOLD_SAMPLES
        cfg["writer"]["designfolding"] = True
        cfg["data"]["cfg"]["return_designfolding"] = True
        steps.append(("design_folding", cfg))
    affinity = protocol == "protein-small_molecule"
    if affinity:
        steps.append(
            ("affinity", fold_like("affinity", artifact(args.affinity_checkpoint, ARTIFACTS["affinity"])))
        )

    analysis = copy.deepcopy(ANALYSIS_DEFAULTS)
    analysis.update(
        design_dir=str(design_dir),
        designfolding_metrics=designfolding,
        delta_sasa_original=bool(args.skip_inverse_folding),
        noncovalents_original=bool(args.skip_inverse_folding),
        allatom_fold_metrics=bool(args.skip_inverse_folding),
    )
    analysis["data"].update(skip_existing=bool(args.reuse), skip_existing_kind="analyzed")
    analysis["data"]["cfg"]["moldir"] = moldir
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

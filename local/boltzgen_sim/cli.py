"""`boltzgen-sim`: the `boltzgen` 0.3.2 command line, simulated (no GPU, no weights)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from boltzgen_sim import __version__
from boltzgen_sim.configure import PROTOCOL_CONFIGS, STEP_NAMES, build_steps, write_configs
from boltzgen_sim.knobs import HELP, Knobs
from boltzgen_sim.specs import SpecError, parse_spec

#: What torch raises from torch.cuda.get_device_capability() on a host without an NVIDIA driver.
NO_GPU_ERROR = (
    "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU "
    "and installed a driver from http://www.nvidia.com/Download/index.aspx"
)
#: What Lightning raises when a GPU trainer starts on a host without GPUs.
NO_GPU_TRAINER_ERROR = (
    "lightning_fabric.utilities.exceptions.MisconfigurationException: No supported gpu backend found!"
)

GPU_STEPS = {"design", "inverse_folding", "folding", "design_folding", "affinity"}


def step_runner(name: str) -> Callable[[dict[str, Any], Knobs], None]:
    """The simulated task of a step (imported late: numpy and pandas make `--version` slow)."""
    if name == "filtering":
        from boltzgen_sim.filtering import run_filtering

        return run_filtering
    from boltzgen_sim import steps

    runners: dict[str, Callable[[dict[str, Any], Knobs], None]] = {
        "design": steps.run_design,
        "inverse_folding": steps.run_inverse_folding,
        "folding": steps.run_folding,
        "design_folding": steps.run_design_folding,
        "affinity": steps.run_affinity,
        "analysis": steps.run_analysis,
    }
    return runners[name]


class HostError(RuntimeError):
    """The host lacks what the real command needs (a GPU)."""


def _configure_args(p: argparse.ArgumentParser, output_required: bool) -> None:
    g = p.add_argument_group("general configuration")
    g.add_argument("--protocol", choices=list(PROTOCOL_CONFIGS), default="protein-anything")
    g.add_argument("--output", type=Path, required=output_required)
    g.add_argument("--config", nargs="+", action="append")
    g.add_argument("--devices", type=int)
    g.add_argument("--num_workers", type=int, default=1)
    g.add_argument("--config_dir", type=Path)
    g.add_argument("--use_kernels", choices=["auto", "true", "false"], default="auto")
    g.add_argument("--moldir", type=str, default="huggingface:boltzgen/inference-data:mols.zip")
    g.add_argument("--reuse", action="store_true")
    g = p.add_argument_group("design")
    g.add_argument("--num_designs", type=int, default=10000)
    g.add_argument("--diffusion_batch_size", type=int, default=None)
    g.add_argument("--design_checkpoints", type=str, nargs="+")
    g.add_argument("--step_scale", type=str)
    g.add_argument("--noise_scale", type=str)
    g = p.add_argument_group("inverse folding")
    g.add_argument("--skip_inverse_folding", action="store_true")
    g.add_argument("--inverse_fold_num_sequences", type=int, default=1)
    g.add_argument("--inverse_fold_checkpoint", type=str)
    g.add_argument("--inverse_fold_avoid", type=str, default=None)
    g.add_argument("--only_inverse_fold", action="store_true")
    g = p.add_argument_group("folding and affinity prediction")
    g.add_argument("--folding_checkpoint", type=str)
    g.add_argument("--affinity_checkpoint", type=str)
    g = p.add_argument_group("filtering")
    g.add_argument("--budget", type=int, default=30)
    g.add_argument("--alpha", type=float, default=None)
    g.add_argument("--filter_biased", choices=["true", "false"], default="true")
    g.add_argument("--metrics_override", nargs="+", default=None)
    g.add_argument("--additional_filters", nargs="+", default=None)
    g.add_argument("--size_buckets", nargs="+", default=None)
    g.add_argument("--refolding_rmsd_threshold", type=float, default=None)


def _download_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data download options")
    g.add_argument("--force_download", action="store_true", default=False)
    g.add_argument("--models_token", type=str, default=None)
    g.add_argument("--cache", type=Path, default=None)


def _execute_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution options")
    g.add_argument("--no_subprocess", dest="subprocess", action="store_false", default=True)
    g.add_argument("--steps", nargs="+", choices=STEP_NAMES)


def build_parser() -> argparse.ArgumentParser:
    """The same sub-commands and options as ``boltzgen`` 0.3.2."""
    parser = argparse.ArgumentParser(
        prog="boltzgen",
        description="Boltzgen command line interface (simulated: boltzgen-sim)",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--version", action="version", version=f"boltzgen {__version__} (simulated by boltzgen-sim)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="Run the binder design pipeline (simulated)",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("design_spec", nargs="+", type=Path)
    _configure_args(run, output_required=False)
    _execute_args(run)
    _download_args(run)
    conf = sub.add_parser("configure", help="Create configuration files for later execution")
    conf.add_argument("design_spec", nargs="+", type=Path)
    conf.add_argument("--steps", nargs="+", choices=STEP_NAMES)
    _configure_args(conf, output_required=True)
    _download_args(conf)
    exe = sub.add_parser("execute", help="Run pipeline from pre-generated configuration files")
    exe.add_argument("output", type=Path)
    _execute_args(exe)
    down = sub.add_parser("download", help="Download boltzgen model weights and supporting assets")
    down.add_argument("artifacts", nargs="+")
    _download_args(down)
    check = sub.add_parser("check", help="Validate design specification files")
    check.add_argument("design_spec", nargs="+", type=Path)
    check.add_argument("--output", type=Path)
    check.add_argument("--moldir", type=str)
    _download_args(check)
    merge = sub.add_parser("merge", help="Combine finished pipeline outputs into a single directory")
    merge.add_argument("sources", nargs="+", type=Path)
    merge.add_argument("--output", type=Path, required=True)
    merge.add_argument("--overwrite", action="store_true")
    return parser


def _device_capability(knobs: Knobs) -> tuple[int, int]:
    # BinderDesignPipeline calls torch.cuda.get_device_capability() unconditionally.
    if knobs.gpus <= 0:
        raise HostError(NO_GPU_ERROR)
    return (8, 0)


def configure_command(args: argparse.Namespace, knobs: Knobs) -> None:
    """Check the specs and write the per-step configs."""
    output: Path = args.output
    if output.exists() and not output.is_dir():
        raise ValueError(f"Output path exists and is not a directory: {output}")
    output.mkdir(parents=True, exist_ok=True)
    for spec in args.design_spec:
        print(f"************** Checking design spec: {spec} **************")
        info = parse_spec(spec)
        print(f"Total designed residues: {info.design_min}..{info.design_max}")
    capability = _device_capability(knobs)
    use_kernels = {"auto": capability[0] >= 8, "true": True, "false": False}[args.use_kernels]
    print(f"Using kernels: {use_kernels} [device capability: {capability}]")
    devices = args.devices if args.devices is not None else knobs.gpus
    print(f"Using {devices} devices")
    steps = build_steps(args, use_kernels, devices)
    if getattr(args, "steps", None):
        steps = [s for s in steps if s[0] in args.steps]
    for i, (name, _) in enumerate(steps):
        print(f"[{i + 1}] {name:25s}")
    write_configs(output.absolute(), steps)


def execute_command(args: argparse.Namespace, knobs: Knobs) -> None:
    """Run the configured steps in order, like ``boltzgen execute``."""
    out: Path = args.output
    if not out.is_dir():
        raise FileNotFoundError(f"Configuration directory not found: {out}")
    steps_yaml = out / "steps.yaml"
    if not steps_yaml.exists():
        raise FileNotFoundError(f"Steps manifest not found: {steps_yaml}. Run 'boltzgen configure' first.")
    data = yaml.safe_load(steps_yaml.read_text())
    if not isinstance(data, dict) or "steps" not in data:
        raise ValueError(f"Invalid steps.yaml format in {steps_yaml}")
    enabled = set(args.steps) if args.steps else None
    resolved = []
    for info in data["steps"]:
        if enabled is not None and info["name"] not in enabled:
            continue
        path = out / info["config_file"]
        if not path.exists():
            raise FileNotFoundError(f"Config file not found: {path}")
        resolved.append((info["name"], path))
    if not resolved:
        print(
            f"No matching steps found for: {', '.join(sorted(enabled or []))}"
            if enabled
            else f"No steps found in {steps_yaml}"
        )
        return
    for index, (name, path) in enumerate(resolved, start=1):
        print("**************************************************")
        print(f"Pipeline step {index} of {len(resolved)}: {name}")
        start = time.time()
        cfg = yaml.safe_load(path.read_text())
        if name in GPU_STEPS and cfg.get("trainer", {}).get("accelerator") == "gpu" and knobs.gpus <= 0:
            raise HostError(NO_GPU_TRAINER_ERROR)
        step_runner(name)(cfg, knobs)
        print(f"✓ Step {name} completed successfully in {time.time() - start:.1f}s")


def check_command(args: argparse.Namespace) -> None:
    """Validate specs; write a small structure per spec when ``--output`` is given."""
    import numpy as np

    from boltzgen_sim.structures import designed_chain, write_cif

    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
    for spec in args.design_spec:
        info = parse_spec(spec)
        print(f"Total designed residues: {info.design_max}")
        target = args.output / f"{spec.stem}.cif" if args.output else Path(f"{spec.stem}.cif")
        trace = np.stack(
            [np.zeros(info.design_max), np.zeros(info.design_max), 3.8 * np.arange(info.design_max)], 1
        )
        write_cif(target, [designed_chain(info.design_chain, "G" * info.design_max, trace), *info.targets])
        print(f"Design specification visualization is written to {target}")


def merge_command(args: argparse.Namespace) -> None:
    """Union of finished outputs; ids get a slug of each source's folder name, as in BoltzGen."""
    import pandas as pd

    dest = args.output.expanduser().resolve()
    roots = []
    for src in args.sources:
        root = Path(src).expanduser().resolve()
        if root == dest:
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"Source directory not found: {root}")
        roots.append(root)
    dest.mkdir(parents=True, exist_ok=True)
    tags = {
        r: re.sub(r"[^0-9A-Za-z]+", "-", r.name).strip("-").lower() or f"run{i + 1}"
        for i, r in enumerate(roots)
    }
    total = 0
    for dir_name in ("intermediate_designs_inverse_folded", "intermediate_designs"):
        frames, seqs, dest_dir = [], [], dest / dir_name
        for root in roots:
            src = root / dir_name
            csv = src / "aggregate_metrics_analyze.csv"
            if not csv.exists():
                continue
            df = pd.read_csv(csv)
            mapping = {str(i): f"{tags[root]}_{i}" for i in df["id"].astype(str)}
            df["id"] = df["id"].astype(str).map(mapping)
            df["file_name"] = df["id"] + ".cif"
            frames.append(df)
            seq = pd.read_pickle(src / "ca_coords_sequences.pkl.gz")  # noqa: S301 (BoltzGen's own output)
            seq = seq[seq["id"].astype(str).isin(mapping)].copy()
            seq["id"] = seq["id"].astype(str).map(mapping)
            seqs.append(seq)
            for old, new in mapping.items():
                for sub in ("", "refold_cif/", "refold_design_cif/"):
                    if (src / f"{sub}{old}.cif").exists():
                        (dest_dir / sub).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src / f"{sub}{old}.cif", dest_dir / f"{sub}{new}.cif")
                if (src / f"{old}.npz").exists():
                    shutil.copy2(src / f"{old}.npz", dest_dir / f"{new}.npz")
        if frames:
            merged = pd.concat(frames, ignore_index=True)
            merged.to_csv(dest_dir / "aggregate_metrics_analyze.csv", index=False)
            pd.concat(seqs, ignore_index=True).to_pickle(
                dest_dir / "ca_coords_sequences.pkl.gz", compression="gzip"
            )
            total += len(merged)
            print(f"- merged {len(merged)} designs into {dest_dir}")
    print("No designs found to merge." if total == 0 else f"Total designs available for filtering: {total}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``boltzgen-sim`` (and of the ``boltzgen`` shim)."""
    args = build_parser().parse_args(argv)
    knobs = Knobs.from_env()
    try:
        if args.command == "run":
            if not args.output:
                print("No output directory specified. Exiting.")
                return 0
            print("\n=== Configuring pipeline ===")
            configure_command(args, knobs)
            print("\n=== Executing pipeline ===")
            execute_command(args, knobs)
        elif args.command == "configure":
            configure_command(args, knobs)
        elif args.command == "execute":
            execute_command(args, knobs)
        elif args.command == "check":
            check_command(args)
        elif args.command == "merge":
            merge_command(args)
        elif args.command == "download":
            print("Simulated: nothing to download.")
    except HostError as exc:
        sys.stdout.flush()
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f'  File "boltzgen/cli/boltzgen.py", in {args.command}_command', file=sys.stderr)
        print(str(exc), file=sys.stderr)
        return 1
    except (SpecError, FileNotFoundError, ValueError, RuntimeError, KeyError, AssertionError):
        sys.stdout.flush()
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

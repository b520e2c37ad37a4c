"""The real BoltzGen 0.3.2 as a judge: run with the BoltzGen venv's Python, answers in JSON on stdout.

    python oracle.py argv FILE            parse every argv (one JSON list a line) with BoltzGen's parser
    python oracle.py filters JSON         BoltzGen's parse_additional_filters/size_buckets/metrics_override
    python oracle.py read ROOT MOLDIR     BoltzGen's readers over every file the simulator wrote
    python oracle.py configure FILE       real ``boltzgen configure`` for every argv of FILE, on this CPU host
    python oracle.py select JSON          Filter.select_lazy_greedy (BoltzGen's selection) per case
    python oracle.py fold-inputs ROOT MOLDIR  every folding npz under ROOT against the batch BoltzGen's
                                          folding data module builds from the same design (what its
                                          writer saves)

Only the GPU is replaced, for ``configure``: ``torch.cuda.get_device_capability()`` answers (8, 0)
as an A100 would (BoltzGen calls it unconditionally and this host has no GPU). Everything else is
BoltzGen's own code.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any


def argv_command(path: str) -> dict[str, Any]:
    from boltzgen.cli.boltzgen import build_parser

    parser = build_parser()
    results = []
    for line in Path(path).read_text().splitlines():
        argv = json.loads(line)
        try:
            args = parser.parse_args(argv)
            results.append({"argv": argv, "ok": True, "command": args.command})
        except SystemExit as exc:
            results.append({"argv": argv, "ok": False, "error": f"exit {exc.code}"})
    return {"results": results}


def filters_command(raw: str) -> dict[str, Any]:
    from boltzgen.cli import boltzgen as cli

    out: dict[str, list[Any]] = {}
    for name, values in json.loads(raw).items():
        parse = getattr(cli, f"parse_{name}")
        out[name] = []
        for value in values:
            try:
                out[name].append({"value": value, "parsed": parse([value])})
            except ValueError as exc:
                out[name].append({"value": value, "error": str(exc)})
    return out


def _load_npz(path: Path) -> dict[str, Any]:
    """As Analyze.aggregate_metrics loads metrics_tmp files."""
    import numpy as np
    import torch

    data = np.load(path, allow_pickle=True)
    return {k: v.item() if v.shape == () else torch.tensor(v) for k, v in data.items()}


def _read_structure(path: Path, canonicals: dict[str, Any], moldir: str) -> Any:
    """As FromGeneratedDataset.get_feat: parse the mmCIF, then tokenize it."""
    from boltzgen.data.parse import mmcif
    from boltzgen.data.tokenize.tokenizer import Tokenizer

    structure = mmcif.parse_mmcif(path, dict(canonicals), moldir=moldir, use_original_res_idx=False).data
    return Tokenizer().tokenize(structure)


def _check_fold(path: Path, tokens: Any, design_tokens: int | None, design_only: bool) -> None:
    import numpy as np
    from boltzgen.data import const

    folded = np.load(path)
    keys = ["res_type", "coords"]
    if design_only:
        keys += [
            "input_coords",
            "token_index",
            "atom_resolved_mask",
            "atom_to_token",
            "mol_type",
            "backbone_mask",
        ]
    missing = [k for k in keys if k not in folded]
    if missing:
        raise KeyError(f"{path}: no {missing}")
    res_type = folded["res_type"].squeeze()
    names = [const.tokens[i] for i in res_type.argmax(-1)]
    expected = [str(n) for n in tokens.tokens["res_name"]]
    if design_only and design_tokens is not None:
        expected = expected[:design_tokens]
    if names != expected:
        raise ValueError(f"{path}: res_type {names[:5]}... is not the structure's {expected[:5]}...")
    if folded["coords"].shape[-1] != 3:
        raise ValueError(f"{path}: coords shape {folded['coords'].shape}")


def read_command(root: str, moldir: str) -> dict[str, Any]:
    """Every mmCIF and npz under ``root``, read as BoltzGen reads it; failures listed."""
    import numpy as np
    from boltzgen.data import const
    from boltzgen.data.mol import load_canonicals

    canonicals = load_canonicals(moldir)
    counts: dict[str, int] = {}
    failures: list[str] = []

    def check(kind: str, path: Path, fn: Any) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        try:
            fn()
        except Exception as exc:
            failures.append(f"{kind} {path}: {type(exc).__name__}: {exc}")

    tokenized: dict[Path, Any] = {}
    for path in sorted(Path(root).rglob("*.cif")):
        if "final_ranked_designs" in path.parts:
            continue

        def parse(path: Path = path) -> None:
            tokenized[path] = _read_structure(path, canonicals, moldir)
            meta = path.with_suffix(".npz")
            if meta.is_file():
                mask = np.load(meta)["design_mask"]
                if len(mask) != len(tokenized[path].tokens):
                    raise ValueError(
                        f"design_mask has {len(mask)} values for {len(tokenized[path].tokens)} tokens"
                    )

        check("cif", path, parse)
    for path in sorted(Path(root).rglob("*.npz")):
        parent = path.parent.name
        if parent == "metrics_tmp" and path.name.startswith("data_"):

            def data(path: Path = path) -> None:
                d = _load_npz(path)
                sequence = "".join(const.prot_token_to_letter[const.tokens[t]] for t in d["design_seq"])
                for key in ("target_id", "sample_id", "ca_coords", "ca_coords_refolded"):
                    d[key]
                if len(sequence) != len(d["ca_coords"]):
                    raise ValueError("design_seq and ca_coords differ in length")

            check("analysis data npz", path, data)
        elif parent == "metrics_tmp":
            check("analysis metrics npz", path, lambda path=path: _load_npz(path))
        elif parent in (const.folding_dirname, const.folding_design_dirname):
            design = path.parent.parent / f"{path.stem}.cif"
            design_tokens = None
            meta = design.with_suffix(".npz")
            if meta.is_file():
                design_tokens = int(np.load(meta)["design_mask"].astype(bool).sum())
            check(
                parent,
                path,
                lambda path=path, design=design, n=design_tokens, parent=parent: _check_fold(
                    path, tokenized[design], n, parent == const.folding_design_dirname
                ),
            )
        elif parent == const.affinity_dirname:
            check(parent, path, lambda path=path: np.load(path)["affinity_probability_binary1"])
        elif path.with_suffix(".cif").is_file():
            keys = ("design_mask", "mol_type", "ss_type", "binding_type")
            check("design npz", path, lambda path=path, keys=keys: [np.load(path)[k] for k in keys])
    for path in sorted(Path(root).rglob("ca_coords_sequences.pkl.gz")):
        import pandas as pd

        check("pkl", path, lambda path=path: pd.read_pickle(path)[["id", "sequence", "ca_coords"]])
    return {"counts": counts, "failures": failures}


#: The data module of real ``configure``'s folding.yaml (protein-anything), design_dir and moldir set per run.
FOLDING_DATA = {
    "_target_": "boltzgen.task.predict.data_from_generated.FromGeneratedDataModule",
    "cfg": {
        "_target_": "boltzgen.task.predict.data_from_generated.DataConfig",
        "tokenizer": {
            "_target_": "boltzgen.data.tokenize.tokenizer.Tokenizer", "atomize_modified_residues": False,
        },
        "featurizer": {"_target_": "boltzgen.data.feature.featurizer.Featurizer"},
        "suffix": ".cif", "suffix_metadata": ".npz", "suffix_native": "_native.cif",
        "samples_per_target": 10**15, "num_targets": 10**13, "batch_size": 1, "num_workers": 0,
        "pin_memory": False, "disulfide_prob": 1.0, "disulfide_on": True,
    },
    "target_templates": True, "return_native": False, "fail_if_no_designs": True, "output_dir": None,
    "skip_existing": False,
}  # fmt: skip
FOLD_FEATURES = (
    "res_type", "input_coords", "token_index", "atom_resolved_mask", "atom_to_token", "mol_type",
    "backbone_mask",
)  # fmt: skip


def _fold_batch(design_dir: Path, moldir: str, designfolding: bool) -> dict[str, Any]:
    """What Predict feeds FoldingWriter per design: the collated features, ``input_coords`` = coords."""
    import hydra
    import omegaconf
    from boltzgen.task.predict.data_from_generated import collate

    data = omegaconf.OmegaConf.create(FOLDING_DATA)
    data.design_dir = str(design_dir)
    data.cfg.moldir = moldir
    if designfolding:
        data.cfg.return_designfolding = True
    module = hydra.utils.instantiate(data)
    module.setup("predict")
    dataset = module.predict_set
    out = {}
    for path in dataset.generated_paths:
        batch = collate([dataset.get_sample(design_dir=design_dir, sample_id=path.stem)])
        batch["input_coords"] = batch["coords"]
        out[path.stem] = {k: batch[k].numpy() for k in FOLD_FEATURES}
    return out


def fold_inputs_command(root: str, moldir: str) -> dict[str, Any]:
    """Every folding npz under ``root`` against the features real folding starts from, array by array."""
    import numpy as np
    from boltzgen.data import const

    checked, failures = 0, []
    for folder in sorted({p.parent for p in Path(root).rglob(f"{const.folding_dirname}/*.npz")}):
        design_dir = folder.parent
        for sub, designfolding in ((const.folding_dirname, False), (const.folding_design_dirname, True)):
            if not (design_dir / sub).is_dir():
                continue
            expected = _fold_batch(design_dir, moldir, designfolding)
            for sample_id, arrays in expected.items():
                npz = design_dir / sub / f"{sample_id}.npz"
                folded = np.load(npz)
                checked += 1
                for key, want in arrays.items():
                    got = folded[key]
                    if got.shape != want.shape or got.dtype != want.dtype:
                        failures.append(
                            f"{npz} {key}: {got.dtype}{got.shape}, BoltzGen {want.dtype}{want.shape}"
                        )
                    elif not np.allclose(got, want, atol=1e-3):
                        failures.append(f"{npz} {key}: values differ from BoltzGen's")
                coords = folded["coords"]
                if coords.shape[1:] != arrays["input_coords"].shape[2:]:
                    failures.append(f"{npz} coords {coords.shape} for input {arrays['input_coords'].shape}")
                for key in ("iptm", "ptm", "design_to_target_iptm", "design_ptm"):
                    if folded[key].shape != coords.shape[:1]:
                        failures.append(f"{npz} {key} {folded[key].shape}: one value per sample expected")
    return {"checked": checked, "failures": failures}


def select_command(raw: str) -> dict[str, Any]:
    """Filter.select_lazy_greedy over each case's designs (one sequence of each length), or its error."""
    import numpy as np
    import pandas as pd
    from boltzgen.task.filter.filter import Filter

    out = []
    for case in json.loads(raw):
        task = Filter.__new__(Filter)  # only the selection's own attributes: no files are read
        task.alpha = case["alpha"]
        task.size_buckets = case["size_buckets"]
        task.df_m = pd.DataFrame({"sequence": ["A" * n for n in case["lengths"]]})
        try:
            picked = task.select_lazy_greedy(
                case["budget"], np.array(case["quality"]), lambda i, j: float(i == j)
            )
            out.append({"selected": [int(i) for i in picked]})
        except IndexError as exc:
            out.append({"error": f"IndexError: {exc}"})
    return {"results": out}


def configure_command(path: str) -> dict[str, Any]:
    """Real ``boltzgen configure`` for every argv of ``path`` (one JSON list a line), in turn."""
    import torch

    torch.cuda.get_device_capability = lambda *a, **k: (8, 0)  # the GPU: none on this host
    from boltzgen.cli.boltzgen import main

    done = 0
    for line in Path(path).read_text().splitlines():
        sys.argv = ["boltzgen", *json.loads(line)]
        main()
        done += 1
    return {"configured": done}


def main() -> int:
    command, *rest = sys.argv[1:]
    try:
        commands = {
            "argv": argv_command,
            "filters": filters_command,
            "read": read_command,
            "configure": configure_command,
            "fold-inputs": fold_inputs_command,
            "select": select_command,
        }
        result = commands[command](*rest)
    except Exception:
        traceback.print_exc()
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

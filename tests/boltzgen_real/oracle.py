"""The real BoltzGen 0.3.2 as a judge: run with the BoltzGen venv's Python, answers in JSON on stdout.

    python oracle.py argv FILE            parse every argv (one JSON list a line) with BoltzGen's parser
    python oracle.py filters JSON         BoltzGen's parse_additional_filters/size_buckets/metrics_override
    python oracle.py read ROOT MOLDIR     BoltzGen's readers over every file the simulator wrote
    python oracle.py configure FILE       real ``boltzgen configure`` for every argv of FILE, on this CPU host

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
        }
        result = commands[command](*rest)
    except Exception:
        traceback.print_exc()
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

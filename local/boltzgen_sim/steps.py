"""What `boltzgen execute` does per step, simulated: same files, same names, plausible numbers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from boltzgen_sim.knobs import Knobs, stable_seed
from boltzgen_sim.specs import parse_spec
from boltzgen_sim.structures import (
    Chain,
    ca_trace,
    designed_chain,
    read_chains,
    read_cif,
    token_ids,
    write_cif,
)

FOLDING_DIR = "fold_out_npz"
FOLDING_DESIGN_DIR = "fold_out_design_npz"
REFOLD_CIF_DIR = "refold_cif"
REFOLD_DESIGN_CIF_DIR = "refold_design_cif"
AFFINITY_DIR = "affinity_out_npz"
MOLECULES_DIR = "molecules_out_dir"
METRICS_DIR = "metrics_tmp"
TARGET_ID_RE = re.compile(r"^(?:(?:sample\d+_|batch\d+_|rank\d+_)+)?([^_]+)(?:_[^_]+)*?(?:_(?:gen))*$")
AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"
AA_NAMES = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
_BACKGROUND = np.array(
    [8.3, 5.5, 4.1, 5.5, 1.4, 3.9, 6.7, 7.1, 2.3, 5.9, 9.7, 5.8, 2.4, 3.9, 4.7, 6.6, 5.3, 1.1, 2.9, 6.9]
)
_HYDRO = dict(zip(AMINO_ACIDS, [1.8, -4.5, -3.5, -3.5, 2.5, -3.5, -3.5, -0.4, -3.2, 4.5, 3.8, -3.9,
                                1.9, 2.8, -1.6, -0.8, -0.7, -0.9, -1.3, 4.2], strict=True))  # fmt: skip


#: The latent quality of a design BOLTZGEN_SIM_PASS_RATE draws to pass (its negative: to fail).
PASSING_QUALITY = 3.0


class SimulatedCrash(RuntimeError):
    """A step failing as injected by the failure knobs."""


def rng_for(knobs: Knobs, *parts: object) -> np.random.Generator:
    """The generator of everything simulated about ``parts`` (e.g. a design id)."""
    return np.random.default_rng(stable_seed(knobs.seed, *parts))


def latent(knobs: Knobs, design_id: str) -> float:
    """The hidden quality of a design: every confidence metric is correlated with it."""
    drawn = knobs.drawn_to_pass(design_id)
    if drawn is not None:
        # Far from the filters' thresholds on either side, so the drawn share is the pass rate.
        return PASSING_QUALITY if drawn else -PASSING_QUALITY
    return float(rng_for(knobs, "quality", design_id).normal())


def _sleep(knobs: Knobs, step: str, residues: int, count: int = 1) -> None:
    seconds = knobs.seconds_per_design(step, residues) * count
    if seconds > 0:
        time.sleep(seconds)


def _check_fail(knobs: Knobs, step: str, design_id: str) -> None:
    if knobs.should_fail(step, design_id):
        raise SimulatedCrash(f"simulated failure in step {step} on design {design_id}")


def generated_paths(design_dir: Path) -> list[Path]:
    """Design structures of a folder, as FromGeneratedDataModule lists them."""
    if not design_dir.exists():
        raise AssertionError(f"Path does not exist design_dir: {design_dir}")
    paths = sorted(
        p for p in design_dir.iterdir()
        if p.suffix in {".cif", ".pdb"} and "_native.cif" not in p.name and "_metadata.npz" not in p.name
    )  # fmt: skip
    if not paths:
        raise ValueError(f"No designs found in {design_dir}")
    return paths


def _skip_existing(paths: list[Path], outputs: Any, kind: str) -> list[Path]:
    kept = [p for p in paths if not all(o.exists() for o in outputs(p))]
    print(f"[Info] Skipped already {kind} IDs. Number of files after filtering: {len(kept)}")
    return kept


# ---------------------------------------------------------------- design
def run_design(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Diffusion: ``multiplicity`` batches of ``diffusion_samples`` designs per spec, OOM batches skipped."""
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)
    (out / MOLECULES_DIR).mkdir(exist_ok=True)
    data = cfg["data"]["cfg"]
    batches = int(data["multiplicity"])
    samples = int(cfg.get("diffusion_samples", 1))
    total = batches * samples
    digits = len(str(total - 1))
    written = 0
    for spec_path in data["yaml_path"]:
        spec = parse_spec(Path(spec_path))
        for b in range(batches):
            names = [
                f"{spec.stem}_{b * samples + n:0{digits}d}" if total > 1 else spec.stem
                for n in range(samples)
            ]
            if data.get("skip_existing") and all((out / f"{n}.cif").exists() for n in names):
                continue
            for name in names:
                _check_fail(knobs, "design", name)
            if knobs.batch_ooms(spec.stem, b):
                print(f"| WARNING: ran out of memory, skipping batch, {b}")
                continue
            # One length per batch: BoltzGen samples the binder length once per trunk run.
            length = int(
                rng_for(knobs, "length", spec.stem, b).integers(spec.design_min, spec.design_max + 1)
            )
            targets = list(spec.targets)
            tokens = length + sum(len(c.residues) for c in targets)
            for name in names:
                coords = _beside(ca_trace(rng_for(knobs, "design", name), length), targets)
                write_cif(
                    out / f"{name}.cif", [designed_chain(spec.design_chain, "G" * length, coords), *targets]
                )
                # DesignWriter's metadata: one value per token, designed chain first.
                np.savez_compressed(
                    out / f"{name}.npz",
                    design_mask=np.arange(tokens) < length,
                    mol_type=np.zeros(tokens, dtype=np.int64),
                    ss_type=np.zeros(tokens, dtype=np.int64),
                    token_resolved_mask=np.ones(tokens, dtype=bool),
                    binding_type=np.zeros(tokens, dtype=np.int64),
                )
                written += 1
            _sleep(knobs, "design", length + spec.target_residues, samples)
    print(f"Wrote {written} designs to {out}")


def _beside(ca: np.ndarray, targets: list[Chain]) -> np.ndarray:
    """Move a design trace next to the targets (10 A from their centre), as a binder sits."""
    if not targets:
        return ca
    centre = np.concatenate([c.ca_coords() for c in targets if c.atoms]).mean(axis=0)
    return np.round(ca - ca.mean(axis=0) + centre + np.array([10.0, 0.0, 0.0]), 3)


def _with_design(
    chains: list[Chain], sequence: str | None = None, ca: np.ndarray | None = None
) -> list[Chain]:
    """``chains`` with the designed chain given a new sequence and/or CA trace."""
    out = []
    for chain in chains:
        if chain.designed:
            ca_now = chain.ca_coords() if ca is None else ca
            out.append(designed_chain(chain.name, sequence or chain.sequence, ca_now))
        else:
            out.append(chain)
    return out


def _target_tokens(design_npz: Path) -> int:
    mask = np.load(design_npz)["design_mask"]
    return int(len(mask) - mask.astype(bool).sum())


# ---------------------------------------------------------------- inverse folding
def _sequence(knobs: Knobs, design_id: str, length: int, avoid: list[str]) -> str:
    rng = rng_for(knobs, "sequence", design_id)
    weights = _BACKGROUND.copy()
    outlier = rng.random() < 0.15
    if outlier and knobs.drawn_to_pass(design_id) is not True:  # one the filter_biased caps catch
        weights[AMINO_ACIDS.index(rng.choice(list("AGELV")))] += 60.0
    for aa in avoid:
        letter = next((k for k, v in AA_NAMES.items() if aa in (v, k)), None)
        if letter:
            weights[AMINO_ACIDS.index(letter)] = 0.0
    return "".join(rng.choice(list(AMINO_ACIDS), size=length, p=weights / weights.sum()))


def run_inverse_folding(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Sequences for every backbone: ``multiplicity`` per design, restricted residues avoided."""
    design_dir = Path(cfg["data"]["design_dir"])
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)
    (out / MOLECULES_DIR).mkdir(exist_ok=True)
    multiplicity = int(cfg["data"]["cfg"].get("multiplicity", 1))
    avoid = cfg.get("override", {}).get("inverse_fold_args", {}).get("inverse_fold_restriction", []) or []
    digits = len(str(multiplicity - 1))
    paths = generated_paths(design_dir)
    if cfg["data"].get("skip_existing"):
        paths = _skip_existing(
            paths, lambda p: [out / f"{p.stem}.cif", out / f"{p.stem}.npz"], "inverse_fold"
        )
    for path in paths:
        _check_fail(knobs, "inverse_folding", path.stem)
        chains = read_chains(path)
        _, coords = read_cif(path)
        meta = dict(np.load(path.with_suffix(".npz")))
        for k in range(multiplicity):
            name = f"{path.stem}_{k:0{digits}d}" if multiplicity > 1 else path.stem
            sequence = _sequence(knobs, name, len(coords), list(avoid))
            write_cif(out / f"{name}.cif", _with_design(chains, sequence))
            np.savez_compressed(out / f"{name}.npz", **meta)
        _sleep(knobs, "inverse_folding", len(coords) + _target_tokens(path.with_suffix(".npz")), multiplicity)


# ---------------------------------------------------------------- folding, design folding, affinity
def _confidence(knobs: Knobs, design_id: str, kind: str) -> dict[str, float]:
    q = latent(knobs, design_id)
    rng = rng_for(knobs, kind, design_id)

    def squash(x: float) -> float:
        return float(1.0 / (1.0 + np.exp(-x)))

    iptm = squash(0.3 + 1.3 * q + rng.normal(0, 0.5))
    return {
        "iptm": iptm,
        "design_to_target_iptm": squash(0.2 + 1.3 * q + rng.normal(0, 0.5)),
        "design_iptm": squash(0.4 + 1.2 * q + rng.normal(0, 0.5)),
        "design_iiptm": squash(0.3 + 1.2 * q + rng.normal(0, 0.5)),
        "design_residue_iptm": squash(0.3 + 1.2 * q + rng.normal(0, 0.5)),
        "ptm": squash(0.8 + 0.9 * q + rng.normal(0, 0.4)),
        "design_ptm": squash(1.0 + 0.9 * q + rng.normal(0, 0.4)),
        "target_ptm": squash(1.5 + rng.normal(0, 0.3)),
        "min_design_to_target_pae": float(max(0.8, 3.0 + 10.0 * (1 - iptm) + rng.normal(0, 1.0))),
        "min_interaction_pae": float(max(0.8, 2.5 + 10.0 * (1 - iptm) + rng.normal(0, 1.0))),
        "bb_rmsd": float(np.exp(0.35 - 0.55 * q + rng.normal(0, 0.45))),
        "bb_rmsd_design": float(np.exp(0.1 - 0.5 * q + rng.normal(0, 0.45))),
        "rmsd": float(np.exp(0.6 - 0.5 * q + rng.normal(0, 0.45))),
        "rmsd_design": float(np.exp(0.4 - 0.5 * q + rng.normal(0, 0.45))),
    }


#: Atoms are padded to a multiple of the atom attention window, as BoltzGen's featurizer pads them.
ATOM_WINDOW = 32
#: Structures the folding model samples per design where folding.yaml does not say.
FOLD_SAMPLES = 5


def best_sample(confidence: Any) -> int:
    """The sample analysis scores, as BoltzGen's ``get_best_folding_sample`` picks it."""
    return int(np.argmax(0.8 * confidence["design_to_target_iptm"] + 0.2 * confidence["design_ptm"]))


def _fold(
    cfg: dict[str, Any], knobs: Knobs, step: str, *, npz_dir: str, cif_dir: str | None, kind: str
) -> None:
    design_dir = Path(cfg["data"]["design_dir"])
    (design_dir / npz_dir).mkdir(parents=True, exist_ok=True)
    if cif_dir:
        (design_dir / cif_dir).mkdir(parents=True, exist_ok=True)
    paths = generated_paths(design_dir)
    if cfg["data"].get("skip_existing"):
        # As FromGeneratedDataModule: design folding counts as done once refold_design_cif/<id>.cif exists.
        done_dir, suffix = (REFOLD_DESIGN_CIF_DIR, ".cif") if kind == "design_folded" else (npz_dir, ".npz")
        paths = _skip_existing(paths, lambda p: [design_dir / done_dir / f"{p.stem}{suffix}"], kind)
    design_only = step == "design_folding"
    samples = int(cfg.get("diffusion_samples", FOLD_SAMPLES))
    for path in paths:
        _check_fail(knobs, step, path.stem)
        chains = [c for c in read_chains(path) if c.designed or not design_only]
        _, coords = read_cif(path)
        confs, refolds = [], []
        for k in range(samples):
            # Sample 0 keeps the draws of one-sample folding; the others are further samples.
            tag = step if k == 0 else f"{step}#{k}"
            conf = _confidence(knobs, path.stem, tag)
            rng = rng_for(knobs, "refold", tag, path.stem)
            moved = np.round(coords + rng.normal(0, conf["bb_rmsd"] / np.sqrt(3), size=coords.shape), 3)
            confs.append(conf)
            refolds.append(_with_design(chains, ca=moved))
        # The featurizer centres the input on its resolved atoms; the model predicts in that frame.
        centre = np.array([a.xyz for c in chains for res in c.atoms for a in res]).mean(axis=0)
        refolds = [[c.moved(-centre) for c in chains_k] for chains_k in refolds]
        # Confidences per sample as BoltzGen's FoldingWriter keeps them; RMSDs are computed by analysis.
        arrays: dict[str, Any] = {
            k: np.array([c[k] for c in confs], np.float32) for k in confs[0] if "rmsd" not in k
        }
        arrays.update(fold_arrays(chains, refolds))
        np.savez_compressed(design_dir / npz_dir / f"{path.stem}.npz", **arrays)
        if cif_dir:
            # The writer's structure is its own best sample: 0.8 iptm + 0.2 ptm.
            best = int(np.argmax(0.8 * arrays["iptm"] + 0.2 * arrays["ptm"]))
            write_cif(design_dir / cif_dir / f"{path.stem}.cif", refolds[best])
        _sleep(knobs, step, len(coords))


def fold_arrays(inputs: list[Chain], refolds: list[list[Chain]]) -> dict[str, np.ndarray]:
    """The feature arrays of a folding result, as BoltzGen's FoldingWriter saves them (batch of one).

    Tokens are residues in chain order; atoms are every residue's reference atoms (those missing
    from the file unresolved), padded to a multiple of ``ATOM_WINDOW``. ``input_coords`` is
    ``(1, 1, atoms, 3)`` (batch, conformer), centred on the resolved atoms as the featurizer
    centres them (unresolved atoms at the origin before centring, padding at zero); ``coords``
    one structure per sample, where the model places every atom (unresolved ones beside their
    residue's CA).
    """
    from boltzgen_sim.structures import BACKBONE, TOKEN_IDS

    residues = [(res, atoms) for c in inputs for res, atoms in zip(c.residues, c.full_atoms(), strict=True)]
    tokens = len(residues)
    atoms = sum(len(a) for _, a in residues)
    padded = -(-atoms // ATOM_WINDOW) * ATOM_WINDOW
    res_type = np.zeros((1, tokens, len(TOKEN_IDS)), dtype=np.int64)
    res_type[0, np.arange(tokens), [TOKEN_IDS.get(r, TOKEN_IDS["UNK"]) for r, _ in residues]] = 1
    owner = np.concatenate([np.full(len(a), i) for i, (_, a) in enumerate(residues)])
    atom_to_token = np.zeros((1, padded, tokens), dtype=bool)
    atom_to_token[0, np.arange(atoms), owner] = True
    names = [name for _, res_atoms in residues for name, _ in res_atoms]
    backbone = np.zeros((1, padded), dtype=np.float64)
    backbone[0, :atoms] = [name in BACKBONE for name in names]
    resolved = np.zeros((1, padded), dtype=bool)
    resolved[0, :atoms] = [xyz is not None for _, res_atoms in residues for _, xyz in res_atoms]
    raw = np.array([xyz or (0.0, 0.0, 0.0) for _, res_atoms in residues for _, xyz in res_atoms])
    input_xyz = np.zeros((1, 1, padded, 3), dtype=np.float32)
    input_xyz[0, 0, :atoms] = raw - raw[resolved[0, :atoms]].mean(axis=0)
    out_xyz = np.zeros((len(refolds), padded, 3), dtype=np.float32)
    for k, chains in enumerate(refolds):
        out_xyz[k, :atoms] = _placed(chains)
    return {
        "coords": out_xyz,
        "res_type": res_type,
        "input_coords": input_xyz,
        "token_index": np.arange(tokens, dtype=np.int64)[None],
        "atom_resolved_mask": resolved,
        "atom_to_token": atom_to_token,
        "mol_type": np.zeros((1, tokens), dtype=np.int64),
        "backbone_mask": backbone,
    }


def _placed(chains: list[Chain]) -> list[tuple[float, float, float]]:
    """Every reference atom of ``chains`` placed: its own position, else 1.5 A beyond the CA per atom."""
    out = []
    for chain in chains:
        for res_atoms in chain.full_atoms():
            ca = np.array(next(xyz for name, xyz in res_atoms if name == "CA"))
            for n, (_, xyz) in enumerate(res_atoms):
                out.append(xyz if xyz is not None else tuple(ca + np.array([0.0, 0.0, 1.5 * (n - 3)])))
    return out


def run_folding(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Refold design + target: fold_out_npz/<id>.npz and refold_cif/<id>.cif."""
    _fold(cfg, knobs, "folding", npz_dir=FOLDING_DIR, cif_dir=REFOLD_CIF_DIR, kind="folded")


def run_design_folding(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Refold the design alone: fold_out_design_npz/ and refold_design_cif/."""
    _fold(
        cfg,
        knobs,
        "design_folding",
        npz_dir=FOLDING_DESIGN_DIR,
        cif_dir=REFOLD_DESIGN_CIF_DIR,
        kind="design_folded",
    )


def run_affinity(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Affinity prediction: affinity_out_npz/<id>.npz."""
    design_dir = Path(cfg["data"]["design_dir"])
    (design_dir / AFFINITY_DIR).mkdir(parents=True, exist_ok=True)
    for path in generated_paths(design_dir):
        _check_fail(knobs, "affinity", path.stem)
        q = latent(knobs, path.stem)
        rng = rng_for(knobs, "affinity", path.stem)
        prob = float(1.0 / (1.0 + np.exp(-(0.8 * q + rng.normal(0, 0.7)))))
        np.savez_compressed(
            design_dir / AFFINITY_DIR / f"{path.stem}.npz",
            affinity_probability_binary1=np.float32(prob),
            affinity_pred_value1=np.float32(-1.5 * q + rng.normal(0, 0.8)),
        )
        _sleep(knobs, "affinity", 100)


# ---------------------------------------------------------------- analysis
CONFIDENCE_KEYS = {
    "iptm", "design_to_target_iptm", "design_iptm", "design_iiptm", "design_residue_iptm", "ptm",
    "design_ptm", "target_ptm", "min_design_to_target_pae", "min_interaction_pae",
}  # fmt: skip


def _rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of ``b`` onto ``a`` after optimal superposition (Kabsch)."""
    a0, b0 = a - a.mean(axis=0), b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((b0 @ rot - a0) ** 2).sum(axis=1).mean()))


def fold_rmsds(folded: Any, design_tokens: int) -> dict[str, float]:
    """Refolding RMSDs of the best sample of a folding npz, from the same arrays analysis reads.

    ``bb_`` over resolved backbone atoms, ``rmsd`` over every resolved atom; ``_design`` over the
    designed tokens (the first ``design_tokens``) only.
    """
    new = folded["coords"][best_sample(folded)]
    ref = folded["input_coords"].reshape(-1, *new.shape)[0]
    atom_to_token = folded["atom_to_token"].reshape(len(new), -1)
    resolved = folded["atom_resolved_mask"].reshape(-1).astype(bool)
    backbone = folded["backbone_mask"].reshape(-1).astype(bool) & resolved
    design = atom_to_token.any(-1) & (atom_to_token.argmax(-1) < design_tokens)
    return {
        "bb_rmsd": _rmsd(ref[backbone], new[backbone]),
        "bb_rmsd_design": _rmsd(ref[backbone & design], new[backbone & design]),
        "rmsd": _rmsd(ref[resolved], new[resolved]),
        "rmsd_design": _rmsd(ref[design & resolved], new[design & resolved]),
    }


def refolded_ca(folded: Any, design_tokens: int) -> np.ndarray:
    """CA coordinates of the designed residues in the best sample (analysis' ``ca_coords_refolded``)."""
    new = folded["coords"][best_sample(folded)]
    atom_to_token = folded["atom_to_token"].reshape(len(new), -1)
    design = atom_to_token.any(-1) & (atom_to_token.argmax(-1) < design_tokens)
    backbone = folded["backbone_mask"].reshape(-1).astype(bool)
    return np.asarray(new[design & backbone].reshape(-1, 4, 3)[:, 1], dtype=np.float32)


def _wanted_rmsds(cfg: dict[str, Any], rmsds: dict[str, float]) -> dict[str, float]:
    """The RMSDs analysis.yaml asks for: backbone ones (``bb_``) and/or all-atom ones."""
    backbone, allatom = cfg.get("backbone_fold_metrics", True), cfg.get("allatom_fold_metrics", True)
    return {k: v for k, v in rmsds.items() if (backbone if k.startswith("bb_") else allatom)}


def _metrics(
    knobs: Knobs, design_id: str, design_dir: Path, cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    path = design_dir / f"{design_id}.cif"
    sequence, coords = read_cif(path)
    fold = design_dir / FOLDING_DIR / f"{design_id}.npz"
    if not fold.exists():
        print(f"Skipping {path}. No refolding result {fold}.")
        return None
    folded = np.load(fold)
    design_tokens = int(np.load(path.with_suffix(".npz"))["design_mask"].sum())
    best = best_sample(folded)
    conf = {k: float(v.reshape(-1)[best]) for k, v in folded.items() if k in CONFIDENCE_KEYS}
    conf.update(_wanted_rmsds(cfg, fold_rmsds(folded, design_tokens)))
    q = latent(knobs, design_id)
    rng = rng_for(knobs, "analysis", design_id)
    n = len(sequence)
    row: dict[str, Any] = {
        "id": design_id,
        "file_name": path.name,
        "designed_sequence": sequence,
        "designed_chain_sequence": sequence,
        "num_design": n,
    }
    for aa in AMINO_ACIDS:
        row[f"{AA_NAMES[aa]}_fraction"] = sequence.count(aa) / n
    row["UNK_fraction"] = sequence.count("X") / n
    helix = float(np.clip(0.55 + 0.15 * rng.normal(), 0, 1))
    sheet = float(np.clip(0.15 + 0.1 * rng.normal(), 0, 1 - helix))
    row.update(loop=1 - helix - sheet, helix=helix, sheet=sheet)
    row["liability_score"] = float(max(0.0, 2 + 3 * rng.normal() - q))
    row.update(conf)
    design_fold = design_dir / FOLDING_DESIGN_DIR / f"{design_id}.npz"
    if cfg.get("designfolding_metrics") and design_fold.exists():
        d = _wanted_rmsds(cfg, fold_rmsds(np.load(design_fold), n))
        row.update({f"designfolding-{k}": v for k, v in d.items() if k in ("bb_rmsd", "rmsd")})
    contacts = max(1.0, n / 8.0 * (1 + 0.4 * q))
    sasa_refolded = float(max(50.0, 35 * contacts * 4 + 150 * rng.normal()))
    sasa_original = float(max(50.0, sasa_refolded + 80 * rng.normal()))
    counts = [int(rng.poisson(contacts / k)) for k in (2, 6, 2, 6)]
    patch = float(max(0.0, 80 + 40 * rng.normal()))
    # Each group of metrics only where analysis.yaml asks for it, as Analyze computes them.
    if cfg.get("delta_sasa_refolded", True):
        row["delta_sasa_refolded"] = sasa_refolded
    if cfg.get("delta_sasa_original", True):
        row["delta_sasa_original"] = sasa_original
    if cfg.get("noncovalents_refolded", True):
        row["plip_hbonds_refolded"], row["plip_saltbridge_refolded"] = counts[0], counts[1]
    if cfg.get("noncovalents_original", True):
        row["plip_hbonds"], row["plip_saltbridge"] = counts[2], counts[3]
    row["design_hydrophobicity"] = float(np.mean([_HYDRO.get(a, 0.0) for a in sequence]))
    row["design_chain_hydrophobicity"] = row["design_hydrophobicity"]
    if cfg.get("largest_hydrophobic_refolded", True):
        row["design_largest_hydrophobic_patch_refolded"] = patch
    affinity = design_dir / AFFINITY_DIR / f"{design_id}.npz"
    if cfg.get("affinity_metrics") and affinity.exists():
        row.update({k: float(v) for k, v in np.load(affinity).items()})
    target = TARGET_ID_RE.match(design_id)
    # Analyze.compute_metrics' data_<id>.npz: the designed residues' token ids and CA traces.
    data = {
        "target_id": target.group(1) if target else design_id,
        "sample_id": design_id,
        "design_seq": token_ids(sequence),
        "ca_coords": coords.astype(np.float32),
        "ca_coords_refolded": refolded_ca(folded, design_tokens),
    }
    return data, row


def run_analysis(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Metrics per design into metrics_tmp/, then the aggregate CSVs and ca_coords_sequences.pkl.gz."""
    design_dir = Path(cfg["design_dir"])
    metrics_dir = design_dir / METRICS_DIR
    metrics_dir.mkdir(parents=True, exist_ok=True)
    paths = generated_paths(design_dir)
    if cfg.get("data", {}).get("skip_existing"):
        paths = _skip_existing(
            paths,
            lambda p: [metrics_dir / f"data_{p.stem}.npz", metrics_dir / f"metrics_{p.stem}.npz"],
            "analyzed",
        )
    if not paths:
        print(
            "There were 0 samples to compute metrics for. "
            "Skipping the distribute_tasks step that calls compute_metrics"
        )
    done = 0
    for path in paths:
        _check_fail(knobs, "analysis", path.stem)
        result = _metrics(knobs, path.stem, design_dir, cfg)
        _sleep(knobs, "analysis", 100)
        if result is None:
            continue
        data, row = result
        np.savez_compressed(metrics_dir / f"data_{path.stem}.npz", **data)
        np.savez_compressed(metrics_dir / f"metrics_{path.stem}.npz", **row)
        done += 1
    if paths:
        print(f"Computed metrics successfully for {done} out of {len(paths)}.")
    aggregate(design_dir, str(cfg.get("name", "analyze")))


def aggregate(design_dir: Path, name: str) -> None:
    """Aggregate metrics_tmp/ like Analyze.aggregate_metrics (ids sorted, floats ``%.5f``)."""
    import pandas as pd

    from boltzgen_sim.structures import THREE_TO_ONE, TOKEN_IDS

    TOKENS = {i: name for name, i in TOKEN_IDS.items()}
    metrics_dir = design_dir / METRICS_DIR
    data_ids = {f.stem.replace("data_", "") for f in metrics_dir.glob("data_*.npz")}
    metric_ids = {f.stem.replace("metrics_", "") for f in metrics_dir.glob("metrics_*.npz")}
    sample_ids = sorted(data_ids & metric_ids)
    assert len(sample_ids) > 0
    rows, data_rows = [], []
    for sid in sample_ids:
        m = np.load(metrics_dir / f"metrics_{sid}.npz", allow_pickle=True)
        rows.append({k: v.item() for k, v in m.items()})
        d = np.load(metrics_dir / f"data_{sid}.npz", allow_pickle=True)
        data_rows.append(
            {
                "id": str(d["sample_id"]),
                "target_id": str(d["target_id"]),
                "sequence": "".join(THREE_TO_ONE.get(TOKENS[t], "X") for t in d["design_seq"]),
                "ca_coords": json.dumps(d["ca_coords"].tolist()),
            }
        )
    df = pd.DataFrame(rows)
    df.to_csv(design_dir / f"aggregate_metrics_{name}.csv", float_format="%.5f", index=False)
    pd.DataFrame(data_rows).to_pickle(design_dir / "ca_coords_sequences.pkl.gz", compression="gzip")
    df["target_id"] = df["id"].apply(lambda s: TARGET_ID_RE.match(s).group(1))  # type: ignore[union-attr]
    per_target = df.groupby("target_id").mean(numeric_only=True).reset_index()
    per_target.to_csv(design_dir / f"per_target_metrics_{name}.csv", float_format="%.5f", index=False)
    print(f"Aggregated metrics of {len(df)} designs into {design_dir}")

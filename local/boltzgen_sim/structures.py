"""Small valid mmCIF files: a CA trace of the designed chain, read back by later steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL", "X": "UNK",
}  # fmt: skip
THREE_TO_ONE = {v: k for k, v in ONE_TO_THREE.items()}

_COLUMNS = (
    "group_PDB", "id", "type_symbol", "label_atom_id", "label_comp_id", "label_asym_id",
    "label_entity_id", "label_seq_id", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy",
    "B_iso_or_equiv", "auth_seq_id", "auth_asym_id", "pdbx_PDB_model_num",
)  # fmt: skip


def ca_trace(rng: np.random.Generator, length: int) -> np.ndarray:
    """A helix-like CA trace with 3.8 A steps, bent at random."""
    t = np.arange(length, dtype=float)
    coords = np.stack([2.3 * np.cos(t * 1.75), 2.3 * np.sin(t * 1.75), 1.5 * t], axis=1)
    coords += np.cumsum(rng.normal(0.0, 0.35, size=(length, 3)), axis=0)
    return np.round(coords, 3)


def write_cif(path: Path, sequence: str, coords: np.ndarray, chain: str = "A") -> None:
    """Write a CA-only mmCIF (designed residues carry B-factor 100 like BoltzGen's design mask)."""
    lines = ["data_model", "#", "_entry.id model", "#", "loop_"]
    lines += [f"_atom_site.{c}" for c in _COLUMNS]
    for i, (aa, xyz) in enumerate(zip(sequence, coords, strict=True), start=1):
        comp = ONE_TO_THREE.get(aa, "UNK")
        lines.append(
            f"ATOM {i} C CA {comp} {chain} 1 {i} {xyz[0]:.3f} {xyz[1]:.3f} {xyz[2]:.3f} "
            f"1.00 100.00 {i} {chain} 1"
        )
    lines.append("#")
    path.write_text("\n".join(lines) + "\n")


def read_cif(path: Path) -> tuple[str, np.ndarray]:
    """Read the sequence and CA coordinates written by :func:`write_cif`."""
    columns: list[str] = []
    seq: list[str] = []
    xyz: list[list[float]] = []
    for line in path.read_text().splitlines():
        if line.startswith("_atom_site."):
            columns.append(line.split()[0][len("_atom_site.") :])
        elif line.startswith("ATOM") and columns:
            row = dict(zip(columns, line.split(), strict=False))
            if row.get("label_atom_id") != "CA":
                continue
            seq.append(THREE_TO_ONE.get(row["label_comp_id"], "X"))
            xyz.append([float(row["Cartn_x"]), float(row["Cartn_y"]), float(row["Cartn_z"])])
    if not seq:
        raise ValueError(f"No CA atoms in {path}")
    return "".join(seq), np.asarray(xyz)

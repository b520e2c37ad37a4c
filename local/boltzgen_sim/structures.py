"""mmCIF files as BoltzGen writes and reads them: designed chain plus target chains, entity tables.

BoltzGen's parser (``boltzgen.data.parse.mmcif.parse_mmcif``) needs ``_entity``, ``_entity_poly``,
``_entity_poly_seq`` and ``_struct_asym`` beside ``_atom_site``. The designed chain comes first with
backbone atoms (N, CA, C, O) built around a CA trace, its atoms carrying B-factor 100 (the design
mask, as the simulator reads it back); target chains follow with the atoms copied from the spec's
structure file, or a backbone trace for a target given as a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL", "X": "UNK",
}  # fmt: skip
THREE_TO_ONE = {v: k for k, v in ONE_TO_THREE.items()}
#: BoltzGen's token ids (``boltzgen.data.const.tokens``): "<pad>", "-", the 20 canonical residues
#: in this order, "UNK", then the RNA and DNA tokens (33 classes, the width of ``res_type``).
_TOKENS = ["<pad>", "-", *sorted(set(ONE_TO_THREE.values()) - {"UNK"}), "UNK"]
TOKEN_IDS = {
    name: i for i, name in enumerate([*_TOKENS, "A", "G", "C", "U", "N", "DA", "DG", "DC", "DT", "DN"])
}
DESIGN_BFACTOR = 100.0
#: Heavy atoms of each canonical residue in the order BoltzGen's parser lays them out
#: (``boltzgen.data.const.ref_atoms``, the CCD's order; a C-terminal ``OXT`` is dropped). Atoms
#: missing from a file are still there for BoltzGen, unresolved.
REF_ATOMS = {
    "GLY": ("N", "CA", "C", "O"),
    "ALA": ("N", "CA", "C", "O", "CB"),
    "CYS": ("N", "CA", "C", "O", "CB", "SG"),
    "SER": ("N", "CA", "C", "O", "CB", "OG"),
    "PRO": ("N", "CA", "C", "O", "CB", "CG", "CD"),
    "THR": ("N", "CA", "C", "O", "CB", "OG1", "CG2"),
    "VAL": ("N", "CA", "C", "O", "CB", "CG1", "CG2"),
    "ASN": ("N", "CA", "C", "O", "CB", "CG", "OD1", "ND2"),
    "ASP": ("N", "CA", "C", "O", "CB", "CG", "OD1", "OD2"),
    "ILE": ("N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1"),
    "LEU": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2"),
    "MET": ("N", "CA", "C", "O", "CB", "CG", "SD", "CE"),
    "GLN": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2"),
    "GLU": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2"),
    "LYS": ("N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"),
    "HIS": ("N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2"),
    "PHE": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"),
    "ARG": ("N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"),
    "TYR": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"),
    "TRP": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"),
    "UNK": ("N", "CA", "C", "O", "CB"),
}
BACKBONE = ("N", "CA", "C", "O")

_COLUMNS = (
    "group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
    "label_asym_id", "label_entity_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y",
    "Cartn_z", "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_asym_id", "pdbx_PDB_model_num",
)  # fmt: skip


@dataclass(frozen=True)
class Atom:
    """One atom of a residue: name, element, coordinates."""

    name: str
    element: str
    xyz: tuple[float, float, float]


@dataclass(frozen=True)
class Chain:
    """A protein chain: residue names (CCD codes) and each residue's atoms."""

    name: str
    residues: tuple[str, ...]
    atoms: tuple[tuple[Atom, ...], ...]
    designed: bool = False

    @property
    def sequence(self) -> str:
        return "".join(THREE_TO_ONE.get(r, "X") for r in self.residues)

    def full_atoms(self) -> list[list[tuple[str, tuple[float, float, float] | None]]]:
        """Every residue's atoms as BoltzGen's parser sees them: reference order, None where unresolved."""
        out = []
        for res, atoms in zip(self.residues, self.atoms, strict=True):
            present = {a.name: a.xyz for a in atoms}
            out.append([(name, present.get(name)) for name in REF_ATOMS.get(res, REF_ATOMS["UNK"])])
        return out

    def moved(self, shift: np.ndarray) -> Chain:
        """The chain translated by ``shift``."""

        def move(xyz: tuple[float, float, float]) -> tuple[float, float, float]:
            x, y, z = (float(round(v, 3)) for v in np.add(xyz, shift))
            return (x, y, z)

        atoms = tuple(tuple(Atom(a.name, a.element, move(a.xyz)) for a in res) for res in self.atoms)
        return Chain(self.name, self.residues, atoms, self.designed)

    def ca_coords(self) -> np.ndarray:
        return np.array([next(a.xyz for a in res if a.name == "CA") for res in self.atoms], dtype=float)


def token_ids(sequence: str) -> np.ndarray:
    """BoltzGen token ids of a one-letter sequence (what analysis stores as ``design_seq``)."""
    return np.array([TOKEN_IDS[ONE_TO_THREE.get(a, "UNK")] for a in sequence], dtype=np.int64)


def ca_trace(rng: np.random.Generator, length: int) -> np.ndarray:
    """A helix-like CA trace with 3.8 A steps, bent at random."""
    t = np.arange(length, dtype=float)
    coords = np.stack([2.3 * np.cos(t * 1.75), 2.3 * np.sin(t * 1.75), 1.5 * t], axis=1)
    coords += np.cumsum(rng.normal(0.0, 0.35, size=(length, 3)), axis=0)
    return np.round(coords, 3)


def backbone(ca: np.ndarray) -> list[tuple[Atom, ...]]:
    """N, CA, C, O of every residue, placed around its CA along the trace."""
    n = len(ca)
    ahead = np.diff(ca, axis=0, append=ca[-1:] + (ca[-1:] - ca[-2:-1] if n > 1 else 1.0))
    ahead /= np.maximum(np.linalg.norm(ahead, axis=1, keepdims=True), 1e-6)
    side = np.cross(ahead, [0.0, 0.0, 1.0])
    side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-6)
    out = []
    for i in range(n):
        pos = {
            "N": ca[i] - 1.46 * ahead[i],
            "CA": ca[i],
            "C": ca[i] + 1.52 * ahead[i],
            "O": ca[i] + 1.52 * ahead[i] + 1.23 * side[i],
        }
        rounded = {k: np.round(v, 3) for k, v in pos.items()}
        out.append(tuple(Atom(k, k[0], (float(v[0]), float(v[1]), float(v[2]))) for k, v in rounded.items()))
    return out


def designed_chain(name: str, sequence: str, ca: np.ndarray) -> Chain:
    """The designed chain: ``sequence`` (G while only a backbone exists) on the trace ``ca``."""
    residues = tuple(ONE_TO_THREE.get(a, "UNK") for a in sequence)
    return Chain(name, residues, tuple(backbone(ca)), designed=True)


def write_cif(path: Path, chains: list[Chain]) -> None:
    """Write ``chains`` as one mmCIF model with the entity tables BoltzGen's parser reads."""
    lines = ["data_model", "#", "_entry.id model", "#"]
    lines += ["loop_", "_entity.id", "_entity.type"]
    lines += [f"{i} polymer" for i in range(1, len(chains) + 1)]
    lines += ["#", "loop_", "_entity_poly.entity_id", "_entity_poly.type", "_entity_poly.pdbx_strand_id"]
    lines += [f"{i} polypeptide(L) {c.name}" for i, c in enumerate(chains, start=1)]
    lines += ["#", "loop_", "_entity_poly_seq.entity_id", "_entity_poly_seq.num", "_entity_poly_seq.mon_id",
              "_entity_poly_seq.hetero"]  # fmt: skip
    for i, chain in enumerate(chains, start=1):
        lines += [f"{i} {k} {res} n" for k, res in enumerate(chain.residues, start=1)]
    lines += ["#", "loop_", "_struct_asym.id", "_struct_asym.entity_id"]
    lines += [f"{c.name} {i}" for i, c in enumerate(chains, start=1)]
    lines += ["#", "loop_"] + [f"_atom_site.{c}" for c in _COLUMNS]
    serial = 0
    for entity, chain in enumerate(chains, start=1):
        bfactor = DESIGN_BFACTOR if chain.designed else 0.0
        for k, (res, atoms) in enumerate(zip(chain.residues, chain.atoms, strict=True), start=1):
            for atom in atoms:
                serial += 1
                x, y, z = atom.xyz
                lines.append(
                    f"ATOM {serial} {atom.element} {atom.name} . {res} {chain.name} {entity} {k} ? "
                    f"{x:.3f} {y:.3f} {z:.3f} 1.00 {bfactor:.2f} {k} {chain.name} 1"
                )
    lines.append("#")
    path.write_text("\n".join(lines) + "\n")


def read_chains(path: Path) -> list[Chain]:
    """The chains of an mmCIF written by :func:`write_cif` (designed ones marked by B-factor 100)."""
    columns: list[str] = []
    residues: dict[str, dict[tuple[str, str], list[Atom]]] = {}
    names: dict[tuple[str, str, str], str] = {}
    designed: set[str] = set()
    for line in path.read_text().splitlines():
        if line.startswith("_atom_site."):
            columns.append(line.split()[0][len("_atom_site.") :])
        elif line.startswith("ATOM") and columns:
            row = dict(zip(columns, line.split(), strict=False))
            chain = row["label_asym_id"]
            key = (row["label_seq_id"], row["label_comp_id"])
            xyz = (float(row["Cartn_x"]), float(row["Cartn_y"]), float(row["Cartn_z"]))
            atom = Atom(row["label_atom_id"], row["type_symbol"], xyz)
            residues.setdefault(chain, {}).setdefault(key, []).append(atom)
            names[(chain, *key)] = row["label_comp_id"]
            if float(row.get("B_iso_or_equiv", 0)) >= DESIGN_BFACTOR:
                designed.add(chain)
    return [
        Chain(
            name,
            tuple(comp for _, comp in res),
            tuple(tuple(atoms) for atoms in res.values()),
            designed=name in designed,
        )
        for name, res in residues.items()
    ]


def read_cif(path: Path) -> tuple[str, np.ndarray]:
    """The designed chain's sequence and CA coordinates."""
    for chain in read_chains(path):
        if chain.designed:
            return chain.sequence, chain.ca_coords()
    raise ValueError(f"No designed chain in {path}")


def read_targets(path: Path, chain_ids: set[str] | None) -> list[Chain]:
    """Protein chains ``chain_ids`` (author ids; all when None) of a structure file, first model.

    Canonical residues only (BoltzGen's target residues that the simulator's molecules cover),
    first alternative location, no hydrogens; each residue's atoms as BoltzGen's parser keeps them.
    """
    columns: list[str] = []
    residues: dict[str, dict[str, tuple[str, list[Atom]]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("_atom_site."):
            columns.append(line.split()[0][len("_atom_site.") :])
        elif line.startswith("ATOM") and columns:
            row = dict(zip(columns, line.split(), strict=False))
            chain = row.get("auth_asym_id", row.get("label_asym_id", ""))
            comp = row.get("label_comp_id", "")
            if (
                (chain_ids is not None and chain not in chain_ids)
                or comp not in THREE_TO_ONE
                or comp == "UNK"
            ):
                continue
            if row.get("pdbx_PDB_model_num", "1") != "1" or row.get("label_alt_id", ".") not in (
                ".",
                "?",
                "A",
            ):
                continue
            if row.get("type_symbol") in ("H", "D"):
                continue
            seq = row.get("auth_seq_id", row.get("label_seq_id", "")) + row.get("pdbx_PDB_ins_code", "?")
            xyz = (float(row["Cartn_x"]), float(row["Cartn_y"]), float(row["Cartn_z"]))
            entry = residues.setdefault(chain, {}).setdefault(seq, (comp, []))
            entry[1].append(Atom(row["label_atom_id"].strip('"'), row["type_symbol"], xyz))
    return [
        Chain(name, tuple(c for c, _ in res.values()), tuple(_in_ref_order(c, a) for c, a in res.values()))
        for name, res in residues.items()
        if any(a.name == "CA" for _, atoms in res.values() for a in atoms)
    ]


def _in_ref_order(residue: str, atoms: list[Atom]) -> tuple[Atom, ...]:
    """The atoms BoltzGen's parser keeps of a residue (its reference atoms), in its order."""
    order = {name: i for i, name in enumerate(REF_ATOMS.get(residue, REF_ATOMS["UNK"]))}
    kept = {a.name: a for a in atoms if a.name in order}
    # As BoltzGen's parser fixes arginines whose NH2 is the one closer to CD: the two swap positions.
    if residue == "ARG" and {"CD", "NH1", "NH2"} <= set(kept):
        cd, nh1, nh2 = (np.array(kept[n].xyz) for n in ("CD", "NH1", "NH2"))
        if np.linalg.norm(nh1 - cd) > np.linalg.norm(nh2 - cd):
            kept["NH1"], kept["NH2"] = (
                Atom("NH1", kept["NH1"].element, kept["NH2"].xyz),
                Atom("NH2", kept["NH2"].element, kept["NH1"].xyz),
            )
    return tuple(sorted(kept.values(), key=lambda a: order[a.name]))

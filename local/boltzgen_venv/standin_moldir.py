"""Build a stand-in for BoltzGen's molecule directory (``mols.zip``) from biotite's bundled CCD.

Run with the BoltzGen venv's Python: ``python standin_moldir.py HUB_CACHE``. ``mols.zip`` (Hugging
Face ``boltzgen/inference-data``) cannot be downloaded here. This writes it where ``hf_hub_download``
keeps it in the hub cache ``HUB_CACHE`` (``datasets--boltzgen--inference-data/snapshots/<rev>/``,
``refs/main`` naming ``<rev>``), so BoltzGen's ``configure`` and the simulator both resolve the
default ``--moldir`` to it. The zip holds one pickled RDKit molecule per canonical residue
(``<NAME>.pkl``, as ``boltzgen.data.mol.load_molecules`` reads a zip), with every atom's ``name``
property and an "Ideal" conformer from the CCD's ideal coordinates. How it differs from
``mols.zip``: only the 20 canonical amino acids (no ligands, no nucleotides, no modified residues),
no "Computed" conformer, no CCD properties beyond the atom names and leaving-atom flags; so the
specs run against it are protein-only.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import biotite.structure.info as ccd
from biotite.interface import rdkit as biotite_rdkit
from boltzgen.data import const
from rdkit import Chem


def residue_mol(name: str) -> Chem.Mol:
    """The CCD entry ``name`` as BoltzGen's parsers expect it (atom names, an Ideal conformer)."""
    atoms = ccd.residue(name)
    mol = biotite_rdkit.to_mol(atoms, explicit_hydrogen=True)
    for atom, atom_name in zip(mol.GetAtoms(), atoms.atom_name, strict=True):
        atom.SetProp("name", str(atom_name))
        # The C-terminal OXT and its hydrogen leave when residues are linked, as in the CCD.
        atom.SetProp("leaving_atom", "1" if atom_name in ("OXT", "HXT", "H2") else "0")
    mol.GetConformer().SetProp("name", "Ideal")
    return mol


REVISION = "standin-biotite-ccd"


def main(cache: Path) -> Path:
    """Write the stand-in ``mols.zip`` into the hub cache ``cache``; return its path."""
    repo = cache / "datasets--boltzgen--inference-data"
    path = repo / "snapshots" / REVISION / "mols.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    Chem.SetDefaultPickleProperties(Chem.PropertyPickleOptions.AllProps)
    with zipfile.ZipFile(path, "w") as archive:
        for name in const.canonical_tokens:
            archive.writestr(f"{name}.pkl", pickle.dumps(residue_mol(name)))
    print(path)
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Just enough of BoltzGen's design-spec YAML to decide lengths and find referenced files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from boltzgen_airflow.campaign.specs import residue_range_problems
from boltzgen_sim.structures import Chain, backbone, read_targets

_TOKEN = re.compile(r"(\d+)\.\.(\d+)|(\d+)|([A-Za-z]+)")
_RANGE = re.compile(r"^\s*(\d*)\s*\.\.\s*(\d*)\s*$")


class SpecError(ValueError):
    """A design spec that BoltzGen would refuse."""


@dataclass(frozen=True)
class SpecInfo:
    """What the simulator needs from one spec: designed length range and target size."""

    path: Path
    stem: str
    design_min: int
    design_max: int
    target_residues: int
    has_ligand: bool
    #: the id of the first designed entity: the designed chain's name in the structures
    design_chain: str = "A"
    #: target protein chains: copied from the structure files, or a trace for a fixed sequence
    targets: tuple[Chain, ...] = ()


def parse_spec(path: Path) -> SpecInfo:
    """Parse a spec file, resolving referenced files relative to it like BoltzGen does.

    :param path: the spec YAML.
    :raises SpecError: on a missing file or an entity the simulator cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"Design spec not found: {path}")
    data = _load_yaml(path)
    entities = data.get("entities") if isinstance(data, dict) else None
    if not isinstance(entities, list) or not entities:
        raise SpecError(f"{path}: 'entities' must be a non-empty list")
    lo = hi = target = 0
    ligand = False
    design_chain = ""
    targets: list[Chain] = []
    for i, entity in enumerate(entities):
        if not isinstance(entity, dict) or len(entity) != 1:
            raise SpecError(f"{path}: entities[{i}] must be a mapping with one key")
        kind, body = next(iter(entity.items()))
        body = body or {}
        if kind in ("protein", "peptide", "rna", "dna"):
            d_lo, d_hi, fixed = parse_sequence(str(body.get("sequence", "")), path)
            lo, hi, target = lo + d_lo, hi + d_hi, target + (fixed if d_hi == 0 else 0)
            ids = body.get("id")
            name = str(ids[0] if isinstance(ids, list) and ids else ids or "")
            if d_hi and not design_chain:
                design_chain = name
            elif not d_hi and kind == "protein" and fixed:
                targets.append(_sequence_target(name, str(body["sequence"]), len(targets)))
        elif kind == "ligand":
            ligand = True
        elif kind == "file":
            f_lo, f_hi, f_target = _file_entity(body, path.parent, path)
            lo, hi, target = lo + f_lo, hi + f_hi, target + f_target
            targets.extend(_file_targets(body, path.parent))
        else:
            raise SpecError(f"{path}: entities[{i}] has unknown type {kind!r}")
    if hi == 0:
        raise SpecError(f"{path}: the spec designs no residue")
    design_chain = design_chain or "A"
    taken = {design_chain}
    named = []
    for chain in targets:
        name = chain.name if chain.name and chain.name not in taken else _free_name(taken)
        taken.add(name)
        named.append(Chain(name, chain.residues, chain.atoms))
    return SpecInfo(path, path.stem, lo, hi, target, ligand, design_chain, tuple(named))


def _free_name(taken: set[str]) -> str:
    return next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in taken)


def _sequence_target(name: str, sequence: str, index: int) -> Chain:
    """A target given as a sequence: its residues on a straight backbone beside the design."""
    from boltzgen_sim.structures import ONE_TO_THREE

    letters = [a for a in sequence.replace(" ", "") if a.isalpha()]
    t = np.arange(len(letters), dtype=float)
    ca = np.stack([np.full_like(t, 12.0 + 10.0 * index), 2.3 * np.sin(t * 1.75), 1.5 * t], axis=1)
    residues = tuple(ONE_TO_THREE.get(a.upper(), "UNK") for a in letters)
    return Chain(name, residues, tuple(backbone(ca)))


def _file_targets(body: dict[str, Any], base: Path) -> list[Chain]:
    """The included protein chains of a file entity's first structure file."""
    paths = body.get("path")
    first = base / str(paths[0] if isinstance(paths, list) else paths)
    if first.suffix not in (".cif", ".mmcif"):
        return []
    return read_targets(first, _chains(body.get("include")))


def parse_sequence(sequence: str, path: Path) -> tuple[int, int, int]:
    """Designed (min, max) and fixed residue counts of a protein ``sequence`` like ``15..20AAA3``."""
    lo = hi = fixed = 0
    pos = 0
    compact = sequence.replace(" ", "")
    for m in _TOKEN.finditer(compact):
        if m.start() != pos:
            raise SpecError(f"{path}: cannot read sequence {sequence!r}")
        pos = m.end()
        if m.group(1):
            a, b = int(m.group(1)), int(m.group(2))
            lo, hi = lo + min(a, b), hi + max(a, b)
        elif m.group(3):
            lo, hi = lo + int(m.group(3)), hi + int(m.group(3))
        else:
            fixed += len(m.group(4))
    if pos != len(compact):
        raise SpecError(f"{path}: cannot read sequence {sequence!r}")
    return lo, hi, fixed


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {exc}") from exc


def _count(spec: object) -> tuple[int, int]:
    """Residue count range of a ``res_index``/``num_residues`` value like ``26..34,52..59``."""
    lo = hi = 0
    for raw in str(spec).split(","):
        part = raw.strip()
        if not part:
            continue
        m = _RANGE.match(part)
        if m:
            a = int(m.group(1) or 1)
            b = int(m.group(2) or a)
            lo, hi = lo + abs(b - a) + 1, hi + abs(b - a) + 1
        elif part.isdigit():
            lo, hi = lo + 1, hi + 1
    return lo, hi


def check_ranges(node: Any, spec: Path, where: str) -> None:
    """Refuse residue ranges BoltzGen's ``parse_range`` refuses (``'12..118, 243..291'``: the space)."""
    for problem in residue_range_problems(node, where):
        raise SpecError(
            f"{spec}: {problem.path}: Malformed residue range specification "
            f"'{problem.piece}' in '{problem.value}'."
        )


def _file_entity(body: dict[str, Any], base: Path, spec: Path) -> tuple[int, int, int]:
    check_ranges(body, spec, "file")
    paths = body.get("path")
    if paths is None:
        raise SpecError(f"{spec}: a file entity needs 'path'")
    options = paths if isinstance(paths, list) else [paths]
    ranges = [_file_option(base / str(p), body, spec) for p in options]
    return (min(r[0] for r in ranges), max(r[1] for r in ranges), max(r[2] for r in ranges))


def _file_option(path: Path, body: dict[str, Any], spec: Path) -> tuple[int, int, int]:
    if not path.is_file():
        raise SpecError(f"{spec}: referenced file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        nested = _load_yaml(path)
        if not isinstance(nested, dict):
            raise SpecError(f"{path}: expected a mapping")
        return _file_entity(nested, path.parent, path)
    chains = _chains(body.get("include"))
    residues = count_residues(path, chains)
    d_lo = d_hi = 0
    for entry in body.get("design") or []:
        a, b = _count((entry.get("chain") or {}).get("res_index", ""))
        d_lo, d_hi = d_lo + a, d_hi + b
    for entry in body.get("design_insertions") or []:
        a, b = _count((entry.get("insertion") or {}).get("num_residues", ""))
        d_lo, d_hi = d_lo + a, d_hi + b
    return d_lo, d_hi, max(residues - d_lo, 0)


def _chains(include: object) -> set[str] | None:
    if not isinstance(include, list):
        return None
    names = {str((e.get("chain") or {}).get("id")) for e in include if isinstance(e, dict)}
    return names or None


def count_residues(path: Path, chains: set[str] | None) -> int:
    """Count polymer residues (CA atoms) of ``chains`` in an mmCIF or PDB file."""
    text = path.read_text(errors="replace")
    if path.suffix == ".pdb":
        seen = {
            (line[21], line[22:27])
            for line in text.splitlines()
            if line.startswith("ATOM")
            and line[12:16].strip() == "CA"
            and (chains is None or line[21] in chains)
        }
        return len(seen)
    columns: list[str] = []
    seen_cif: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if line.startswith("_atom_site."):
            columns.append(line.split()[0][len("_atom_site.") :])
        elif line.startswith(("ATOM", "HETATM")) and columns:
            fields = line.split()
            row = dict(zip(columns, fields, strict=False))
            chain = row.get("auth_asym_id", row.get("label_asym_id", ""))
            if row.get("label_atom_id") == "CA" and (chains is None or chain in chains):
                seen_cif.add((chain, row.get("label_seq_id", row.get("auth_seq_id", ""))))
    return len(seen_cif)

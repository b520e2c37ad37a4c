"""
Spec bundles: a BoltzGen design spec plus every file it references, resolved as BoltzGen 0.3.2 does.

BoltzGen (``boltzgen/data/parse/schema.py``, ``YamlDesignParser.parse_file``) resolves a ``file``
entity like this:

- ``path`` is relative to the folder of the YAML that names it (``(base / path).resolve()``);
- when ``path`` is a list, BoltzGen picks one element at random and reads it as a YAML file; when it
  is one path ending in ``.yaml`` it reads that YAML. Such a nested YAML holds the ``file`` settings
  (``path``, ``include``...) and its own ``path`` is relative to the nested YAML's real folder;
- any other ``path`` is a structure file: ``.pdb`` is read as PDB, anything else as mmCIF.

A bundle therefore holds the spec, every structure file and every nested YAML (each list element,
since any may be drawn) with the structure files they name. Paths are kept relative to the specs
root so the staged copy resolves the same way.

``SpecBundle.files`` lists the referenced files and not the spec itself; ``all_files`` adds it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
# Residues assumed for a file entity whose structure cannot be read or lacks the chain.
FALLBACK_CHAIN_RESIDUES = 300
# Tokens assumed for a CCD ligand (BoltzGen tokenizes ligands per heavy atom; the CCD is not at hand).
CCD_LIGAND_TOKENS = 30
# Longest path (UTF-8 bytes) under the specs root: the staged key adds the prefix (at most 200),
# ``/inputs/``, the bundle hash and a slash, and S3 keys hold at most 1024 bytes.
MAX_PATH_BYTES = 700

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BAD_STEM_RE = re.compile(r"_\d+$")
_SEQ_TOKEN_RE = re.compile(r"(\d+)\.\.(\d+)|(\d+)|([A-Za-z])")
_SMILES_ATOM_RE = re.compile(r"\[[^\]]*\]|Cl|Br|[BCNOPSFI]|[bcnops]")
#: One comma-separated piece of a residue range as BoltzGen's ``parse_range`` accepts it: no spaces.
_RANGE_PIECE_RE = re.compile(r"\d+|\d+\.\.\d+|\.\.\d+|\d+\.\.")
#: The keys of a file entity whose values BoltzGen reads with ``parse_range``.
RANGE_KEYS = ("res_index", "binding", "not_binding", "loop", "helix", "sheet", "num_residues")


@dataclass(frozen=True)
class SpecBundle:
    """
    One design spec and the files it references.

    :param spec: the spec's path relative to the specs root (posix).
    :param files: referenced files relative to the root, sorted; the spec itself is not listed.
    :param hash: sha256 over every path and content of the bundle (spec included).
    :param errors: problems that stop the spec from running, each naming spec and path.
    :param residues: estimated total residues (designed upper bound + included target residues).
    :param residues_source: how ``residues`` was obtained.
    """

    spec: str
    files: tuple[str, ...] = ()
    hash: str = ""
    errors: tuple[str, ...] = ()
    residues: int = 0
    residues_source: str = ""
    sizes: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the spec can run."""
        return not self.errors

    @property
    def stem(self) -> str:
        """The spec's file stem: BoltzGen's id prefix for its designs."""
        return PurePosixPath(self.spec).stem

    @property
    def all_files(self) -> tuple[str, ...]:
        """The spec followed by its referenced files."""
        return (self.spec, *self.files)

    def to_json(self) -> dict[str, Any]:
        """Return the bundle as plain JSON types."""
        return {
            "spec": self.spec,
            "files": list(self.files),
            "hash": self.hash,
            "errors": list(self.errors),
            "residues": self.residues,
            "residues_source": self.residues_source,
        }


class _Resolver:
    """Follows one spec's references, collecting files and errors."""

    def __init__(self, root: Path, spec: str, max_file_bytes: int) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.spec = spec
        self.max_file_bytes = max_file_bytes
        self.files: set[str] = set()
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.spec}: {where}: {message}" if where else f"{self.spec}: {message}")

    def locate(self, base: str, ref: Any, where: str) -> str | None:
        """Check that ``ref`` (named in a file in folder ``base``) is a readable file inside the root."""
        if not isinstance(ref, str) or not ref.strip():
            self.error(where, f"path must be a non-empty string, got {ref!r}")
            return None
        if ref.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", ref) or "://" in ref:
            self.error(where, f"absolute path {ref!r}: references must be relative to the spec's folder")
            return None
        rel = os.path.normpath(str(PurePosixPath(base) / ref)).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            self.error(where, f"{ref!r} leaves the specs root")
            return None
        problem = path_name_problem(rel)
        if problem:
            self.error(where, f"{ref!r} {problem}")
            return None
        full = self.root / rel
        try:
            real = full.resolve()
        except (OSError, RuntimeError) as err:
            self.error(where, f"{ref!r} cannot be resolved: {err}")
            return None
        if not real.is_relative_to(self.real_root):
            self.error(where, f"{ref!r} is a symlink out of the specs root")
            return None
        if not full.is_file():
            self.error(where, f"{ref!r} not found (looked for {rel})")
            return None
        size = full.stat().st_size
        if size > self.max_file_bytes:
            self.error(where, f"{ref!r} is {size} bytes, above the limit of {self.max_file_bytes}")
            return None
        if not os.access(full, os.R_OK):
            self.error(where, f"{ref!r} is not readable")
            return None
        return rel

    def real_parent(self, rel: str) -> str:
        return (self.root / rel).resolve().parent.relative_to(self.real_root).as_posix()


def path_name_problem(rel: str) -> str | None:
    """
    Say why a path cannot become part of an S3 key, or return None.

    :param rel: a posix path relative to the specs root.
    """
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8; rename it"
    if any(unicodedata.category(char) == "Cc" for char in rel):
        return "holds a control character (newline, tab...); rename it"
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long in UTF-8, above the limit of {MAX_PATH_BYTES}; shorten it"
    return None


def _load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 - a safe loader


def _first_key(item: Any) -> str | None:
    if isinstance(item, dict) and item:
        return str(next(iter(item.keys()))).lower()
    return None


def is_design_spec(data: Any) -> bool:
    """
    Tell a design spec from a nested file YAML: a design spec has ``entities``.

    :param data: a parsed YAML document.
    """
    return isinstance(data, dict) and "entities" in data


def check_spec_name(spec: str) -> list[str]:
    """
    Return the name rules of BoltzGen's dataset loader that ``spec`` breaks.

    :param spec: the spec's relative path.
    """
    stem = PurePosixPath(spec).stem
    problems = []
    if _BAD_STEM_RE.search(stem):
        problems.append(
            f"{spec}: file name must not end in _<digits> "
            "(BoltzGen reserves it for design numbering); rename it"
        )
    if "_native" in PurePosixPath(spec).name:
        problems.append(f"{spec}: file name must not contain '_native' (reserved by BoltzGen); rename it")
    return problems


# ---------------------------------------------------------------------------------------------
# Residue estimate
# ---------------------------------------------------------------------------------------------


def sequence_residues(sequence: Any) -> int:
    """
    Upper bound of the residues of a BoltzGen sequence such as ``15..20AAAVTT18PPP``.

    Letters are fixed residues, a number is that many designed residues, ``a..b`` a designed length
    drawn from a to b (counted as b).

    :param sequence: the ``sequence`` value (an int means that many designed residues).
    """
    text = str(sequence)
    total = 0
    for match in _SEQ_TOKEN_RE.finditer(text):
        low_high, single, letter = match.group(2), match.group(3), match.group(4)
        if low_high is not None:
            total += int(low_high)
        elif single is not None:
            total += int(single)
        elif letter is not None:
            total += 1
    return total


def _range_size(spec: Any, length: int) -> int:
    """Count residues selected by a res_index string like ``..4,20..27,30`` in a chain of ``length``."""
    selected: set[int] = set()
    for raw in str(spec).split(","):
        part = raw.strip()
        if not part:
            continue
        if ".." in part:
            low_text, high_text = part.split("..", 1)
            low = int(low_text) if low_text.strip().isdigit() else 1
            high = int(high_text) if high_text.strip().isdigit() else length
            selected.update(range(max(1, low), min(length, high) + 1))
        elif part.isdigit() and 1 <= int(part) <= length:
            selected.add(int(part))
    return len(selected)


@functools.lru_cache(maxsize=512)
def _structure_chains(path: str, size: int, mtime_ns: int) -> dict[str, int] | None:
    """Residues per chain of the first model (mmCIF: label and auth chain ids; PDB: chain id)."""
    del size, mtime_ns  # part of the cache key only
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:  # noqa: PTH123 - hot path
            text = handle.read()
    except OSError:
        return None
    if path.lower().endswith(".pdb"):
        return _pdb_chains(text)
    return _mmcif_chains(text)


def _pdb_chains(text: str) -> dict[str, int] | None:
    residues: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith("ATOM") and len(line) >= 27:
            residues.setdefault(line[21], set()).add(line[22:27])
    return {chain: len(ids) for chain, ids in residues.items()} or None


def _mmcif_chains(text: str) -> dict[str, int] | None:
    lines = text.splitlines()
    columns: list[str] = []
    start = -1
    for index, line in enumerate(lines):
        if line.startswith("_atom_site."):
            if not columns:
                start = index
            columns.append(line.split()[0][len("_atom_site.") :])
        elif columns:
            start = index
            break
    if not columns or start < 0:
        return None
    try:
        group = columns.index("group_PDB")
        label_chain = columns.index("label_asym_id")
        seq = columns.index("label_seq_id")
    except ValueError:
        return None
    auth_chain = columns.index("auth_asym_id") if "auth_asym_id" in columns else label_chain
    model = columns.index("pdbx_PDB_model_num") if "pdbx_PDB_model_num" in columns else -1
    width = len(columns)
    first_model: str | None = None
    label: dict[str, set[str]] = {}
    auth: dict[str, set[str]] = {}
    for line in lines[start:]:
        if line.startswith(("#", "loop_", "_", "data_")):
            break
        row = line.split()
        if len(row) != width or row[group] != "ATOM" or row[seq] in (".", "?"):
            continue
        if model >= 0:
            if first_model is None:
                first_model = row[model]
            elif row[model] != first_model:
                break
        label.setdefault(row[label_chain], set()).add(row[seq])
        auth.setdefault(row[auth_chain], set()).add(row[seq])
    # BoltzGen names chains by label_asym_id; auth ids are accepted where no label id matches.
    counts = {f"auth:{chain}": len(ids) for chain, ids in auth.items()}
    counts.update({chain: len(ids) for chain, ids in label.items()})
    return counts if label else None


def _file_entity_residues(settings: dict[str, Any], structure: Path) -> tuple[int, bool]:
    """Residues a file entity contributes; the flag says whether the structure could be used."""
    try:
        stat = structure.stat()
        chains = _structure_chains(str(structure), stat.st_size, stat.st_mtime_ns)
    except OSError:
        chains = None
    if not chains:
        return FALLBACK_CHAIN_RESIDUES, False
    exact = True
    label_total = sum(n for name, n in chains.items() if not name.startswith("auth:"))
    chains = {
        **{name[5:]: n for name, n in chains.items() if name.startswith("auth:")},
        **{name: n for name, n in chains.items() if not name.startswith("auth:")},
    }
    include = settings.get("include", "all")
    total = 0
    counted: set[str] = set()
    if include == "all" or not isinstance(include, list):
        total = label_total if include == "all" else FALLBACK_CHAIN_RESIDUES
        counted = set(chains)
        exact = include == "all"
    else:
        for entry in include:
            chain = entry.get("chain") if isinstance(entry, dict) else None
            if not isinstance(chain, dict) or "id" not in chain:
                continue
            chain_id = str(chain["id"])
            length = chains.get(chain_id)
            if length is None:
                total += FALLBACK_CHAIN_RESIDUES
                exact = False
                continue
            counted.add(chain_id)
            total += _range_size(chain["res_index"], length) if "res_index" in chain else length
    for entry in settings.get("include_proximity") or []:
        chain = entry.get("chain") if isinstance(entry, dict) else None
        if isinstance(chain, dict) and str(chain.get("id")) not in counted and str(chain.get("id")) in chains:
            # Residues within the radius are not known without coordinates: take the whole chain.
            counted.add(str(chain["id"]))
            total += chains[str(chain["id"])]
    for entry in settings.get("exclude") or []:
        chain = entry.get("chain") if isinstance(entry, dict) else None
        if isinstance(chain, dict) and str(chain.get("id")) in chains:
            length = chains[str(chain["id"])]
            total -= _range_size(chain["res_index"], length) if "res_index" in chain else length
    for entry in settings.get("design_insertions") or []:
        insertion = entry.get("insertion") if isinstance(entry, dict) else None
        if isinstance(insertion, dict) and "num_residues" in insertion:
            total += sequence_residues(insertion["num_residues"])
    return max(total, 1), exact


@dataclass(frozen=True)
class RangeProblem:
    """A residue range BoltzGen would refuse: where it is, the refused piece and the whole value."""

    path: str
    piece: str
    value: str

    @property
    def message(self) -> str:
        return (
            f"malformed residue range {self.piece!r} in {self.value!r} (BoltzGen's parse_range takes no "
            "spaces: '12..118,243..291')"
        )


def residue_range_problems(node: Any, where: str) -> list[RangeProblem]:
    """
    The residue ranges under ``node`` that BoltzGen 0.3.2's ``parse_range`` refuses.

    ``'12..118, 243..291'`` (the space) fails at ``boltzgen configure``, on the GPU instance.

    :param node: a file entity's settings (or any part of them).
    :param where: the path of ``node`` in its document, for the messages.
    """
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in residue_range_problems(value, f"{where}[{i}]")]
    if not isinstance(node, dict):
        return []
    problems: list[RangeProblem] = []
    for key, value in node.items():
        if key in RANGE_KEYS and not isinstance(value, (dict, list)) and value != "all":
            bad = [piece for piece in str(value).split(",") if not _RANGE_PIECE_RE.fullmatch(piece)]
            if bad:
                problems.append(RangeProblem(f"{where}.{key}", bad[0], str(value)))
        else:
            problems.extend(residue_range_problems(value, f"{where}.{key}"))
    return problems


def _entity_residues(kind: str, body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    ids = body.get("id")
    copies = len(ids) if isinstance(ids, list) and ids else 1
    if kind in ("protein", "dna", "rna"):
        return copies * sequence_residues(body.get("sequence", ""))
    if kind == "ligand":
        if "smiles" in body:
            return copies * max(1, len(_SMILES_ATOM_RE.findall(str(body["smiles"]))))
        return copies * CCD_LIGAND_TOKENS
    return 0


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


def _bundle_hash(root: Path, paths: Iterable[str]) -> tuple[str, tuple[int, ...]]:
    digest = hashlib.sha256()
    sizes = []
    for rel in paths:
        content = (root / rel).read_bytes()
        sizes.append(len(content))
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest(), tuple(sizes)


def resolve_bundle(
    root: str | Path,
    spec_path: str | Path,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    data: Any = None,
) -> SpecBundle:
    """
    Resolve one design spec into a bundle.

    :param root: the specs root; no reference may leave it.
    :param spec_path: the spec, relative to ``root`` or absolute inside it.
    :param max_file_bytes: the largest file a bundle may hold.
    :param data: the already-parsed spec document (read from disk when None).
    """
    root = Path(root)
    spec_file = Path(spec_path)
    if spec_file.is_absolute():
        try:
            spec = spec_file.relative_to(root).as_posix()
        except ValueError:
            spec = spec_file.as_posix()
            return SpecBundle(spec=spec, errors=(f"{spec}: spec is outside the specs root {root}",))
    else:
        spec = spec_file.as_posix()
    resolver = _Resolver(root, spec, max_file_bytes)
    resolver.errors.extend(check_spec_name(spec))
    located = resolver.locate("", spec, "")
    if located is None:
        return SpecBundle(spec=spec, errors=tuple(resolver.errors))
    if data is None:
        try:
            data = _load_yaml(root / spec)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as err:
            resolver.error(
                "", f"invalid YAML: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            )
            return SpecBundle(spec=spec, errors=tuple(resolver.errors))
    if not is_design_spec(data):
        resolver.error("", "not a design spec: no 'entities' list")
        return SpecBundle(spec=spec, errors=tuple(resolver.errors))
    entities = data["entities"]
    if not isinstance(entities, list) or not entities:
        resolver.error("entities", "must be a non-empty list")
        return SpecBundle(spec=spec, errors=tuple(resolver.errors))

    # BoltzGen resolves the spec's references from its lexical folder (``path.parent``).
    base = PurePosixPath(spec).parent.as_posix()
    residues = 0
    exact = True
    for index, item in enumerate(entities):
        kind = _first_key(item)
        where = f"entities[{index}]"
        if kind is None:
            resolver.error(where, "each entity must be a mapping like {protein: {...}} or {file: {...}}")
            continue
        body = next(iter(item.values()))
        if kind != "file":
            residues += _entity_residues(kind, body)
            continue
        if not isinstance(body, dict):
            resolver.error(f"{where}.file", "must be a mapping with a 'path'")
            continue
        for problem in residue_range_problems(body, f"{where}.file"):
            resolver.error(problem.path, problem.message)
        ref = body.get("path")
        where = f"{where}.file.path"
        if isinstance(ref, list) or (isinstance(ref, str) and PurePosixPath(ref).suffix == ".yaml"):
            choices = ref if isinstance(ref, list) else [ref]
            if not choices:
                resolver.error(where, "an empty list gives BoltzGen nothing to choose from")
                continue
            best = 0
            for pos, choice in enumerate(choices):
                label = f"{where}[{pos}]" if isinstance(ref, list) else where
                count, ok = _resolve_nested(resolver, base, choice, label)
                best = max(best, count)
                exact = exact and ok
            residues += best
            continue
        rel = resolver.locate(base, ref, where)
        if rel is None:
            continue
        resolver.files.add(rel)
        count, ok = _file_entity_residues(body, root / rel)
        residues += count
        exact = exact and ok

    if resolver.errors:
        return SpecBundle(spec=spec, files=tuple(sorted(resolver.files)), errors=tuple(resolver.errors))
    files = tuple(sorted(resolver.files - {spec}))
    digest, sizes = _bundle_hash(root, (spec, *files))
    source = "sequence upper bounds + target chains from structures"
    if not exact:
        source += f" (fallback {FALLBACK_CHAIN_RESIDUES} residues for unreadable structures or chains)"
    return SpecBundle(
        spec=spec,
        files=files,
        hash=digest,
        residues=max(residues, 1),
        residues_source=source,
        sizes=sizes,
    )


def _resolve_nested(resolver: _Resolver, base: str, ref: Any, where: str) -> tuple[int, bool]:
    """Resolve a nested file YAML and the structure it names; return its residue estimate."""
    rel = resolver.locate(base, ref, where)
    if rel is None:
        return 0, False
    resolver.files.add(rel)
    # A nested YAML's references resolve from its real folder (``resolved_path.parent``).
    real_base = resolver.real_parent(rel)
    if real_base != PurePosixPath(rel).parent.as_posix():
        resolver.error(
            where,
            f"{ref!r} is a symlink to another folder: BoltzGen resolves its paths from the target's "
            "folder, which the staged copy would not reproduce; copy the file instead",
        )
        return 0, False
    try:
        nested = _load_yaml(resolver.root / rel)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as err:
        resolver.error(where, f"{rel}: invalid YAML: {str(err).splitlines()[0] if str(err) else err}")
        return 0, False
    if not isinstance(nested, dict) or "path" not in nested:
        resolver.error(where, f"{rel}: a nested file YAML must be a mapping with a 'path'")
        return 0, False
    for problem in residue_range_problems(nested, f"{where} -> {rel}"):
        resolver.error(problem.path, problem.message)
    inner = nested["path"]
    if not isinstance(inner, str) or PurePosixPath(inner).suffix == ".yaml":
        resolver.error(
            f"{where} -> {rel}: path",
            "BoltzGen reads a nested YAML's path as a structure file; it must be one .cif/.pdb path",
        )
        return 0, False
    structure = resolver.locate(real_base, inner, f"{where} -> {rel}: path")
    if structure is None:
        return 0, False
    resolver.files.add(structure)
    return _file_entity_residues(nested, resolver.root / structure)


def discover_bundles(
    root: str | Path,
    include: str = "**/*.yaml",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> list[SpecBundle]:
    """
    Find every design spec under ``root`` and resolve it into a bundle.

    A YAML with ``entities`` is a design spec; other YAMLs (nested file YAMLs) only belong to the
    bundles of the specs that reference them. A YAML that cannot be parsed is reported as a bundle
    with an error.

    :param root: the specs root.
    :param include: glob (relative to ``root``) selecting candidate files.
    :param max_file_bytes: the largest file a bundle may hold.
    :return: bundles sorted by spec path.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        return [SpecBundle(spec=str(root), errors=(f"{root}: specs folder does not exist",))]
    bundles: list[SpecBundle] = []
    candidates = sorted(
        {
            p.relative_to(root_path).as_posix()
            for p in root_path.glob(include)
            if p.is_file() or p.is_symlink()
        }
    )
    for rel in candidates:
        path = root_path / rel
        try:
            if path.stat().st_size > max_file_bytes:
                bundles.append(SpecBundle(spec=rel, errors=(f"{rel}: file is above {max_file_bytes} bytes",)))
                continue
            data = _load_yaml(path)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            bundles.append(SpecBundle(spec=rel, errors=(f"{rel}: invalid YAML: {first}",)))
            continue
        if is_design_spec(data):
            bundles.append(resolve_bundle(root_path, rel, max_file_bytes=max_file_bytes, data=data))
    return bundles


def bundle_errors(bundles: Iterable[SpecBundle]) -> list[str]:
    """
    Collect the errors of every bundle.

    :param bundles: bundles from :func:`discover_bundles`.
    """
    return [error for bundle in bundles for error in bundle.errors]

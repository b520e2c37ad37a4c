"""Shared helpers of the stage scripts that run inside the BoltzGen processing container.

Standard library only: the container has Python and the ``boltzgen`` CLI, nothing from ``plugins/``.

How the stages use BoltzGen (0.3.2):

* ``boltzgen run`` always re-configures, and configuring calls
  ``torch.cuda.get_device_capability()`` unconditionally, so it cannot run on the CPU instances of
  analysis and filtering. The design stage (on a GPU) therefore runs ``boltzgen configure`` once per
  work item, for every step, and ``boltzgen execute --steps design``. Every later stage copies the
  upstream item folders into its own output, rewrites the absolute paths in ``config/*.yaml`` (the
  job's root moves between jobs) and runs ``boltzgen execute --steps <its steps>``, which neither
  parses specs nor touches CUDA by itself.
* Each work item is one BoltzGen output folder, ``<result>/<item_dirname(item)>/``.
* ``_step_paths.json`` at the top of every result records the absolute paths the configs were
  written for, so the next stage knows what to rewrite.
* A stage fused into this job's (``work.json``'s ``fused``) runs after this stage's manifest is
  written, reading this stage's output, into ``<result>/_fused/<stage>/`` with a manifest of its
  own: one job, two attempts, each committed under its own stage's key. A fused stage that follows
  the one before (``contract.FOLLOWS``: analysis after folding) runs beside it instead, each item
  as soon as the stage before has finished it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import contract

WORK_SCHEMA = 1
MANIFEST_SCHEMA = 1
MANIFEST_NAME = "_manifest.json"
PATHS_NAME = "_step_paths.json"
MESSAGE_LIMIT = 1024
#: Seconds kept back from max_runtime_seconds to stop children and write the exit message.
RUNTIME_MARGIN = 30.0
OOM_MARKER = "ran out of memory"
PROTOCOLS = (
    "protein-anything",
    "peptide-anything",
    "protein-small_molecule",
    "nanobody-anything",
    "antibody-anything",
    "protein-redesign",
)
#: Where a fused stage's attempt goes in the job's output (``storage.layout.FUSED_DIR``).
FUSED_DIR = "_fused"
DESIGN_DIR = "intermediate_designs"
INVERSE_FOLDED_DIR = "intermediate_designs_inverse_folded"
_ITEM_KEYS = {"spec": str, "spec_name": str, "start": int, "count": int, "width": int}


class StepError(RuntimeError):
    """A failure with a one-line reason for the job's exit message."""


# ------------------------------------------------------------------ paths
def step_root() -> Path:
    """``$BOLTZGEN_STEP_ROOT`` (``/opt/ml`` in SageMaker)."""
    return Path(os.environ.get("BOLTZGEN_STEP_ROOT", "/opt/ml"))


def input_dir(name: str) -> Path:
    """``<root>/processing/input/<name>``."""
    return step_root() / "processing" / "input" / name


def result_dir() -> Path:
    """``<root>/processing/output/result`` (uploaded to the attempt prefix)."""
    return step_root() / "processing" / "output" / "result"


def scratch_dir() -> Path:
    """Working space that is not uploaded."""
    return step_root() / "processing" / "scratch"


def message_path() -> Path:
    """SageMaker reads the first 1 KB of this file as the job's ExitMessage."""
    return step_root() / "output" / "message"


def boltzgen_bin() -> str:
    """The BoltzGen executable: ``$BOLTZGEN_BIN`` or ``boltzgen`` on PATH."""
    return os.environ.get("BOLTZGEN_BIN", "boltzgen")


# ------------------------------------------------------------------ work.json
def load_work(path: Path, stage: str) -> dict[str, Any]:
    """Read and validate ``work.json``.

    :param path: the work file.
    :param stage: the stage the script implements; the file must be for it.
    :raises StepError: naming the file and field at fault.
    """
    try:
        work = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StepError(f"work file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise StepError(f"{path}: invalid JSON: {exc}") from None
    check_work(work, str(path), stage)
    fused = work.get("fused", [])
    if not isinstance(fused, list):
        raise StepError(f"{path}: fused must be a list")
    for i, entry in enumerate(fused):
        name = entry.get("stage") if isinstance(entry, dict) else None
        described = (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and isinstance(entry.get("work"), dict)
        )
        if name not in FUSABLE or not described:
            raise StepError(f"{path}: fused[{i}] must name a stage of {', '.join(FUSABLE)}, its key and work")
        check_work(entry["work"], f"{path}: fused[{i}].work", name)
    return work


#: Stages a job may run after its own (``work.json``'s ``fused``), in run order; a filtering job
#: may filter other specs after its own.
FUSABLE = ("inverse_folding", "folding", "analysis", "filtering")


def fused_path(entry: dict[str, Any]) -> str:
    """Where a fused stage's attempt goes in the job's output: ``_fused/<stage>/`` (a filtered
    spec's: ``_fused/filtering/<filter id>/``)."""
    member = f"{entry['work']['shard']}/" if entry["stage"] == "filtering" else ""
    return f"{FUSED_DIR}/{entry['stage']}/{member}"


def check_work(work: Any, path: str, stage: str) -> None:
    """Validate one stage's work document.

    :param work: the parsed document.
    :param path: where it came from (for messages).
    :param stage: the stage it must be for.
    :raises StepError: naming the field at fault.
    """
    if not isinstance(work, dict):
        raise StepError(f"{path}: expected a JSON object")
    if work.get("schema") != WORK_SCHEMA:
        raise StepError(f"{path}: schema must be {WORK_SCHEMA}, got {work.get('schema')!r}")
    if work.get("stage") != stage:
        raise StepError(f"{path}: stage is {work.get('stage')!r}, this script runs {stage!r}")
    if work.get("protocol") not in PROTOCOLS:
        raise StepError(f"{path}: protocol {work.get('protocol')!r} is not one of {', '.join(PROTOCOLS)}")
    items = work.get("items")
    if not isinstance(items, list) or not items:
        raise StepError(f"{path}: items must be a non-empty list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise StepError(f"{path}: items[{i}] must be an object")
        for key, kind in _ITEM_KEYS.items():
            if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                raise StepError(f"{path}: items[{i}].{key} must be {kind.__name__}, got {item.get(key)!r}")
        if item["count"] < 1 or item["start"] < 0 or item["width"] < 1:
            raise StepError(f"{path}: items[{i}] has start/count/width out of range")
        spec = item["spec"]
        if spec.startswith("/") or ".." in Path(spec).parts:
            raise StepError(f"{path}: items[{i}].spec {spec!r} must stay under the specs input")
        stem = Path(spec).stem
        # BoltzGen numbers designs <stem>_<n>; a stem that already ends so, or holds _native, is misread.
        if re.search(r"_\d+$", stem) or "_native" in stem:
            raise StepError(
                f"{path}: items[{i}].spec stem {stem!r} must not end in _<digits> or hold _native"
            )
    runtime = work.get("max_runtime_seconds")
    if not isinstance(runtime, int) or runtime <= 0:
        raise StepError(f"{path}: max_runtime_seconds must be a positive integer")
    if not isinstance(work.get("boltzgen", {}), dict):
        raise StepError(f"{path}: boltzgen must be an object")


def item_dirname(item: dict[str, Any]) -> str:
    """The output folder of one work item: readable, unique per (spec, start, count)."""
    name = re.sub(r"\.ya?ml$", "", item["spec_name"])
    slug = re.sub(r"[^0-9A-Za-z._-]+", "-", name.replace("/", "--")).strip("-")
    return f"{slug}.{item['start']:0{item['width']}d}-{item['count']}"


def spec_stem(item: dict[str, Any]) -> str:
    """The spec file's stem: BoltzGen's design id prefix."""
    return Path(item["spec"]).stem


def design_id(item: dict[str, Any], index: int) -> str:
    """Global design id ``<stem>_<index>`` zero-padded to the item's width."""
    return f"{spec_stem(item)}_{index:0{item['width']}d}"


def step_config_args(work: dict[str, Any]) -> list[str]:
    """``--config <step> key=value ...`` groups from work.json ``boltzgen.step_config``."""
    args: list[str] = []
    for step, values in sorted((work.get("boltzgen", {}).get("step_config") or {}).items()):
        if not isinstance(values, dict) or not values:
            continue
        pairs = [f"{k}={_dotlist_value(v)}" for k, v in sorted(values.items())]
        args += ["--config", step, *pairs]
    return args


def _dotlist_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ------------------------------------------------------------------ GPUs and packing
@dataclass(frozen=True)
class Gpus:
    """The GPUs the job may use: device ids for CUDA_VISIBLE_DEVICES and the model name."""

    ids: tuple[str, ...]
    model: str | None


def detect_gpus() -> Gpus:
    """GPUs from ``nvidia-smi -L`` narrowed by ``CUDA_VISIBLE_DEVICES``.

    ``BOLTZGEN_STEP_GPUS`` (``N`` or ``N:model``) replaces detection, for hosts without GPUs in tests.
    """
    override = os.environ.get("BOLTZGEN_STEP_GPUS")
    if override:
        count, _, model = override.partition(":")
        if not count.strip().isdigit():
            raise StepError(f"BOLTZGEN_STEP_GPUS={override!r}: expected N or N:model")
        n = int(count)
        return Gpus(tuple(str(i) for i in range(n)), (model or "simulated GPU") if n else None)
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return Gpus((), None)
    found = re.findall(r"^GPU (\d+): (.+?) \(UUID: (\S+)\)", out.stdout, flags=re.MULTILINE)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        found = [g for g in found if g[0] in wanted or g[2] in wanted]
    return Gpus(tuple(g[0] for g in found), found[0][1] if found else None)


def lpt_assign(items: Sequence[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """Longest processing time first: each item to the least loaded worker, by ``est_seconds``
    (``contract.lpt_queues``, the order the planner's estimate assumes)."""
    ordered = sorted(items, key=lambda it: (it["spec"], it["start"]))
    costs = [float(it.get("est_seconds") or 0.0) for it in ordered]
    return [[ordered[i] for i in queue] for queue in contract.lpt_queues(costs, workers)]


# ------------------------------------------------------------------ processes
class ProcessGroups:
    """Children run in their own process group; everything still running can be ended at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.aborted = threading.Event()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        """Track a started child."""
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a finished child."""
        with self._lock:
            self._procs.discard(proc)

    def end_all(self, grace: float = 10.0) -> None:
        """SIGTERM every group, then SIGKILL what is left after ``grace`` seconds."""
        self.aborted.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            end_group(proc, grace)


def end_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """End a child's whole process group (BoltzGen starts one subprocess per step)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Children of the group may outlive the leader; a last SIGKILL catches them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


GROUPS = ProcessGroups()
_STDERR_LOCK = threading.Lock()


@dataclass
class CommandResult:
    """Exit code, output and duration of one BoltzGen command."""

    args: list[str]
    exit_code: int
    seconds: float
    output: str
    timed_out: bool = False


def run_command(
    args: Sequence[str],
    *,
    log_path: Path,
    deadline: float,
    env: dict[str, str] | None = None,
    tag: str = "",
) -> CommandResult:
    """Run a command in its own process group, teeing its output to ``log_path`` and stderr.

    :param args: argument list (never a shell string).
    :param log_path: appended with everything the command prints.
    :param deadline: ``time.monotonic()`` value after which the group is ended.
    :param env: extra environment variables.
    :param tag: prefix of the lines copied to stderr.
    """
    if GROUPS.aborted.is_set():
        return CommandResult(list(args), -1, 0.0, "", False)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    full_env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(args)}\n".encode())
        try:
            proc = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        except OSError as exc:
            raise StepError(f"cannot start {args[0]}: {exc}") from exc
        GROUPS.add(proc)
        timed_out = threading.Event()

        def watchdog() -> None:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out.set()
                    end_group(proc)
                    return
                time.sleep(0.2)

        threading.Thread(target=watchdog, daemon=True).start()
        chunks: list[bytes] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            log.write(line)
            with _STDERR_LOCK:
                sys.stderr.write(f"{tag}{line.decode(errors='replace')}")
        proc.wait()
        GROUPS.discard(proc)
    output = b"".join(chunks).decode(errors="replace")
    return CommandResult(list(args), proc.returncode, time.monotonic() - started, output, timed_out.is_set())


def last_error_line(output: str) -> str:
    """The most telling line of a failed command's output (the exception, else the last line)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line) or "Error:" in line:
            return line
    return lines[-1] if lines else "no output"


def boltzgen_version() -> str:
    """``boltzgen --version`` without the program name."""
    try:
        out = subprocess.run(
            [boltzgen_bin(), "--version"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepError(f"cannot run {boltzgen_bin()} --version: {exc}") from exc
    text = (out.stdout or out.stderr).strip()
    if out.returncode != 0 or not text:
        raise StepError(f"{boltzgen_bin()} --version failed: {last_error_line(out.stderr or out.stdout)}")
    return text.removeprefix("boltzgen ").strip()


# ------------------------------------------------------------------ files
def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when the file system allows it, else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder's files (hard links where possible); later stages only add files."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            link_or_copy(path, dst / path.relative_to(src))


def copy_upstream(upstream: Path, result: Path, items: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Copy each item folder of the previous stage and rewrite its configs for this job.

    :return: the path replacements applied (old -> new).
    """
    paths_file = upstream / PATHS_NAME
    if not paths_file.is_file():
        raise StepError(f"upstream output has no {PATHS_NAME}: {upstream} (not a stage result?)")
    old = json.loads(paths_file.read_text())
    replacements = {old["result"]: str(result), old["specs"]: str(input_dir("specs"))}
    for item in items:
        name = item_dirname(item)
        if not (upstream / name).is_dir():
            raise StepError(
                f"upstream output lacks the folder of item {item['spec_name']}@{item['start']}: {name}"
            )
        copy_tree(upstream / name, result / name)
        rewrite_configs(result / name, replacements)
    return replacements


def rewrite_configs(out_dir: Path, replacements: dict[str, str]) -> None:
    """Replace absolute path prefixes in ``config/*.yaml`` (longest first, whole path segments)."""
    pairs = sorted(((o, n) for o, n in replacements.items() if o != n), key=lambda p: -len(p[0]))
    if not pairs:
        return
    for config in sorted((out_dir / "config").glob("*.yaml")):
        text = config.read_text()
        for old, new in pairs:
            pattern = re.escape(old) + r"(?=[/\s'\",\]}]|$)"
            # A callable replacement keeps backslashes in the new path literal.
            text = re.sub(pattern, _literal(new), text, flags=re.MULTILINE)
        # A hard link shares the upstream copy: write a new file instead of editing it in place.
        config.unlink()
        config.write_text(text)


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


def write_step_paths(result: Path) -> None:
    """Record the absolute paths this job's configs refer to."""
    data = {"result": str(result), "specs": str(input_dir("specs"))}
    (result / PATHS_NAME).write_text(json.dumps(data, indent=2) + "\n")


def set_top_level_keys(yaml_text: str, values: dict[str, Any]) -> str:
    """Replace top-level keys of a block-style YAML mapping (as OmegaConf writes configs).

    Values are written as JSON, which YAML reads as flow style.
    """
    lines = yaml_text.splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        top = re.match(r"^([A-Za-z_][\w-]*)\s*:", line)
        if top:
            skipping = top.group(1) in values
        elif line and not line[0].isspace() and not line.startswith("- "):
            skipping = False
        if not skipping:
            kept.append(line)
    kept += [f"{key}: {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(kept) + "\n"


def check_moldir(config: Path) -> str:
    """The molecule directory a CPU step's config names; it must be an absolute path that exists here.

    BoltzGen's ``configure`` (on the design stage) writes the resolved path, and analysis loads the
    canonical molecules from it even when it skips every design: the CPU stages must run on an image
    that holds BoltzGen's data at the same path.

    :raises StepError: naming the config and the path.
    """
    match = re.search(r"^\s+moldir:\s*(\S+)\s*$", config.read_text(), re.MULTILINE)
    if not match:
        raise StepError(f"{config}: no data.cfg.moldir (was it written by boltzgen configure?)")
    moldir = match.group(1).strip("'\"")
    if not Path(moldir).is_absolute() or not Path(moldir).exists():
        raise StepError(
            f"{config}: data.cfg.moldir {moldir} does not exist on this host; the CPU stages need "
            "BoltzGen's molecule data at the path the design stage's image resolved"
        )
    return moldir


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def designs_folder(work: dict[str, Any]) -> str:
    """The folder later steps read: inverse-folded designs unless inverse folding is skipped."""
    return DESIGN_DIR if work.get("boltzgen", {}).get("skip_inverse_folding") else INVERSE_FOLDED_DIR


def expected_designs(work: dict[str, Any]) -> int:
    """Designs the work asks for after inverse folding (count x sequences per backbone)."""
    bg = work.get("boltzgen", {})
    per = 1 if bg.get("skip_inverse_folding") else int(bg.get("inverse_fold_num_sequences") or 1)
    return sum(it["count"] for it in work["items"]) * per


def design_files(design_dir: Path) -> list[Path]:
    """Design structures of a BoltzGen design folder (as its data module lists them)."""
    if not design_dir.is_dir():
        return []
    return sorted(
        p for p in design_dir.iterdir() if p.suffix == ".cif" and not p.name.endswith("_native.cif")
    )


# ------------------------------------------------------------------ stage run
@dataclass
class StageContext:
    """What a stage function gets."""

    work: dict[str, Any]
    result: Path
    deadline: float
    gpus: Gpus
    #: The previous stage's output: the ``upstream`` input, or this job's own for a fused stage.
    upstream: Path | None = None
    exit_codes: list[int] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    oom_detected: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called with each item once this stage has finished it (a following stage's queue).
    item_done: Callable[[dict[str, Any]], None] | None = None

    def record(self, item: dict[str, Any], result: CommandResult, gpu: str | None, began_at: str) -> None:
        """Note one command's exit code, timing (from ``began_at``) and OOM lines."""
        with self.lock:
            self.exit_codes.append(result.exit_code)
            self.timings.append(
                {
                    "spec": item["spec"],
                    "start": item["start"],
                    "count": item["count"],
                    "seconds": round(result.seconds, 3),
                    "began_at": began_at,
                    "exit_code": result.exit_code,
                    "gpu": int(gpu) if gpu is not None and gpu.isdigit() else None,
                }
            )
            if OOM_MARKER in result.output:
                self.oom_detected = True


@dataclass
class StageOutcome:
    """What a stage produced."""

    designs_expected: int
    design_ids: list[str]


def boltzgen(
    ctx: StageContext, item: dict[str, Any], args: Sequence[str], *, gpu: str | None, log_name: str
) -> CommandResult:
    """Run ``boltzgen <args>`` for an item (on one GPU, or with CUDA hidden), failing the job on error."""
    env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
    log = ctx.result / item_dirname(item) / "logs" / log_name
    tag = f"[{spec_stem(item)}@{item['start']}] "
    began_at = now_iso(timespec="milliseconds")
    result = run_command([boltzgen_bin(), *args], log_path=log, deadline=ctx.deadline, env=env, tag=tag)
    ctx.record(item, result, gpu, began_at)
    where = f"{item['spec_name']} designs {item['start']}..{item['start'] + item['count'] - 1}"
    if result.timed_out:
        raise StepError(f"boltzgen {args[0]} timed out for {where} (max_runtime_seconds reached)")
    if GROUPS.aborted.is_set() and result.exit_code != 0:
        raise StepError(f"boltzgen {args[0]} stopped for {where}")
    if result.exit_code != 0:
        reason = last_error_line(result.output)
        raise StepError(f"boltzgen {args[0]} failed (exit {result.exit_code}) for {where}: {reason}")
    return result


def upstream_dir(ctx: StageContext) -> Path:
    """The output of the stage before this one (the job's ``upstream`` input unless fused)."""
    return ctx.upstream or input_dir("upstream")


def run_job(
    ctx: StageContext, body: Callable[[StageContext], StageOutcome], started_at: str, version: str
) -> None:
    """Run the job's stage, then each stage fused into it on the output of the one before, each
    writing its manifest; a stage that follows the one before (``contract.FOLLOWS``) runs beside it.

    :param ctx: the context of the job's own stage.
    :param body: the job's own stage.
    :param started_at: when the job started.
    :param version: BoltzGen's version.
    """
    entries: list[dict[str, Any]] = list(ctx.work.get("fused", []))
    stage, run, began = ctx, body, started_at
    while True:
        follower = Follower.of(stage, entries[0], ctx.result) if entries else None
        if follower is not None:
            entries.pop(0)
        outcome = _run_stage(stage, run, follower)
        write_manifest(stage, outcome, began, version)
        if follower is not None:
            write_manifest(follower.guest, follower.finish(), follower.started_at, version)
            stage = follower.guest
        if not entries:
            return
        entry = entries.pop(0)
        stage, run, began = _guest(stage, entry, ctx.result), _fused_body(entry["stage"]), now_iso()


def _run_stage(
    ctx: StageContext, body: Callable[[StageContext], StageOutcome], follower: Follower | None
) -> StageOutcome:
    """Run one stage of the job, with its follower (if any) taking each item it finishes."""
    write_step_paths(ctx.result)
    if follower is None:
        return body(ctx)
    write_step_paths(follower.guest.result)
    ctx.item_done = follower.put
    follower.start()
    try:
        return body(ctx)
    except BaseException:
        # The follower's failure ended this stage's children: report that first.
        follower.stop()
        raise


def _guest(previous: StageContext, entry: dict[str, Any], root: Path) -> StageContext:
    """The context of a fused stage reading ``previous``'s output, in ``<root>/_fused/<stage>/``."""
    result = root / fused_path(entry)
    result.mkdir(parents=True, exist_ok=True)
    guest = StageContext(entry["work"], result, previous.deadline, previous.gpus, upstream=previous.result)
    print(f"{entry['stage']} (in this job): {len(guest.work['items'])} item(s)", file=sys.stderr)
    return guest


def _fused_body(stage: str) -> Callable[[StageContext], StageOutcome]:
    """A fused stage's script body, its errors naming the stage."""
    module = importlib.import_module(stage)

    def body(ctx: StageContext) -> StageOutcome:
        try:
            outcome: StageOutcome = module.run(ctx)
        except StepError as exc:
            raise StepError(f"{stage} (run in this job): {exc}") from None
        return outcome

    return body


class Follower:
    """
    A fused stage run beside the stage before it, item by item, on a thread of its own: each item
    the host stage finishes is queued, and the stage's ``follow(ctx, item)`` takes them one at a
    time; ``outcome(ctx)`` then says what it produced.
    """

    def __init__(self, entry: dict[str, Any], module: ModuleType, guest: StageContext) -> None:
        self.stage = entry["stage"]
        self.module = module
        self.guest = guest
        self.started_at = now_iso()
        self.pending = {(i["spec"], i["start"], i["count"]): i for i in guest.work["items"]}
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._drain, daemon=True)

    @classmethod
    def of(cls, host: StageContext, entry: dict[str, Any], root: Path) -> Follower | None:
        """The follower of ``host`` for the fused ``entry`` (its attempt under ``root``), or None
        when that stage runs after the host instead."""
        if contract.FOLLOWS.get(entry["stage"]) != host.work["stage"]:
            return None
        return cls(entry, importlib.import_module(entry["stage"]), _guest(host, entry, root))

    def start(self) -> None:
        self.thread.start()

    def put(self, item: dict[str, Any]) -> None:
        """Queue the guest's item of the host's ``item`` (same designs)."""
        mine = self.pending.pop((item["spec"], item["start"], item["count"]), None)
        if mine is not None:
            self.queue.put(mine)

    def _drain(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.errors or GROUPS.aborted.is_set():
                continue
            try:
                self.module.follow(self.guest, item)
            except BaseException as exc:
                self.errors.append(exc)
                GROUPS.end_all()

    def stop(self) -> None:
        """End the thread; raise its failure if it had one."""
        self.queue.put(None)
        self.thread.join()
        if self.errors:
            exc = self.errors[0]
            if isinstance(exc, StepError):
                raise StepError(f"{self.stage} (run in this job): {exc}") from None
            raise exc

    def finish(self) -> StageOutcome:
        """Wait for the queued items, run any the host did not hand over, and return the outcome."""
        for item in list(self.pending.values()):
            self.queue.put(item)
        self.pending.clear()
        self.stop()
        outcome: StageOutcome = self.module.outcome(self.guest)
        return outcome


def fan_out(
    ctx: StageContext, items: Sequence[dict[str, Any]], job: Callable[[dict[str, Any], str | None], None]
) -> None:
    """Run ``job(item, gpu)`` for all items: one worker per GPU (LPT by est_seconds), or one on CPU.

    The first failure ends every running child and is raised.
    """
    gpu_ids: list[str | None] = list(ctx.gpus.ids) or [None]
    plan = lpt_assign(items, len(gpu_ids))
    errors: list[BaseException] = []

    def worker(gpu: str | None, queue: list[dict[str, Any]]) -> None:
        for item in queue:
            if GROUPS.aborted.is_set():
                return
            try:
                job(item, gpu)
                if ctx.item_done is not None:
                    ctx.item_done(item)
            except BaseException as exc:
                errors.append(exc)
                GROUPS.end_all()
                return

    threads = [
        threading.Thread(target=worker, args=(gpu, queue), daemon=True)
        for gpu, queue in zip(gpu_ids, plan, strict=True)
        if queue
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def write_manifest(ctx: StageContext, outcome: StageOutcome, started_at: str, version: str) -> None:
    """Write ``_manifest.json`` last: every file with size and SHA-256, counts, timings."""
    files = []
    for path in sorted(ctx.result.rglob("*")):
        # A following stage may be writing its attempt under _fused/ while this one is listed.
        inside = path.relative_to(ctx.result).parts
        if path.is_file() and path.name != MANIFEST_NAME and inside[0] != FUSED_DIR:
            files.append(
                {
                    "path": path.relative_to(ctx.result).as_posix(),
                    "size": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
    produced = len(outcome.design_ids)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "stage": ctx.work["stage"],
        "shard": ctx.work.get("shard"),
        "protocol": ctx.work["protocol"],
        "items": ctx.work["items"],
        "files": files,
        "designs_expected": outcome.designs_expected,
        "designs_produced": produced,
        "shortfall": max(0, outcome.designs_expected - produced),
        "oom_detected": ctx.oom_detected,
        "design_ids": outcome.design_ids,
        "timings": sorted(ctx.timings, key=lambda t: (t["spec"], t["start"])),
        "gpu_model": ctx.gpus.model,
        "gpus": len(ctx.gpus.ids),
        "boltzgen_version": version,
        "exit_codes": ctx.exit_codes,
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    fused = [
        {"stage": e["stage"], "key": e["key"], "shard": e["work"].get("shard"), "path": fused_path(e)}
        for e in ctx.work.get("fused", [])
    ]
    if fused:
        manifest["fused"] = fused
    tmp = ctx.result / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.rename(ctx.result / MANIFEST_NAME)


def now_iso(timespec: str = "seconds") -> str:
    """UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec=timespec)


def write_message(text: str) -> None:
    """Write the one-line exit reason SageMaker shows as ExitMessage (first 1 KB)."""
    line = " ".join(text.split())
    data = line.encode()[:MESSAGE_LIMIT].decode(errors="ignore")
    path = message_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data + "\n")


def main(stage: str, body: Callable[[StageContext], StageOutcome], argv: Sequence[str] | None = None) -> int:
    """Parse ``--work``, run the stage, write the manifest; on failure the exit message and exit 1.

    :param stage: stage name the work file must carry.
    :param body: the stage's work.
    :param argv: command line (defaults to ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=f"BoltzGen {stage} stage")
    parser.add_argument("--work", required=True, type=Path, help="path to work.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    started_at = now_iso()

    def on_term(signum: int, _frame: object) -> None:
        # StopProcessingJob sends SIGTERM: end the children, then fail with a reason.
        GROUPS.end_all(grace=5.0)
        write_message(f"{stage}: stopped by signal {signum}")
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        work = load_work(args.work, stage)
        deadline = started + max(1.0, work["max_runtime_seconds"] - RUNTIME_MARGIN)
        result = result_dir()
        result.mkdir(parents=True, exist_ok=True)
        version = boltzgen_version()
        ctx = StageContext(work=work, result=result, deadline=deadline, gpus=detect_gpus())
        print(
            f"{stage}: {len(work['items'])} item(s), {len(ctx.gpus.ids)} GPU(s), boltzgen {version}",
            file=sys.stderr,
        )
        run_job(ctx, body, started_at, version)
    except StepError as exc:
        GROUPS.end_all()
        print(f"{stage} failed: {exc}", file=sys.stderr)
        write_message(f"{stage}: {exc}")
        return 1
    except Exception as exc:
        GROUPS.end_all()
        import traceback

        traceback.print_exc()
        write_message(f"{stage}: internal error {type(exc).__name__}: {exc}")
        return 1
    print(f"{stage}: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0

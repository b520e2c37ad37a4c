"""Settings of one emulator: where it keeps state, which AWS endpoints it uses, the account's capacity."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class EmulatorConfig:
    """
    Everything an emulator needs to know.

    :param state_dir: job table, workspaces, logs and fault rules live here.
    :param region: the region in ARNs and AWS clients.
    :param s3_endpoint: where inputs and outputs are read and written (moto); None uses the environment.
    :param logs_endpoint: CloudWatch Logs endpoint (moto); None disables CloudWatch logging.
    :param quotas: concurrent instances allowed per instance type (the account's quota).
    :param default_quota: the quota of types absent from ``quotas``; None means unlimited.
    :param gpus: GPUs of this machine handed to jobs; None detects them with ``nvidia-smi``.
    :param sim_gpus: simulated GPUs per instance type on a machine without GPUs (overrides the table).
    :param shim_dir: a folder put first on the jobs' PATH (the simulator's ``boltzgen``).
    :param cpu_shim_dir: a folder put before ``shim_dir`` on the PATH of analysis and filtering
        jobs (the real ``boltzgen``, in the mixed engine).
    :param stop_grace_seconds: time between SIGTERM and SIGKILL when a job is stopped.
    """

    state_dir: Path
    region: str = "us-east-1"
    s3_endpoint: str | None = None
    logs_endpoint: str | None = None
    quotas: dict[str, int] = field(default_factory=dict)
    default_quota: int | None = None
    gpus: int | None = None
    sim_gpus: dict[str, int] = field(default_factory=dict)
    shim_dir: Path | None = None
    cpu_shim_dir: Path | None = None
    stop_grace_seconds: float = 5.0

    def quota(self, instance_type: str) -> int | None:
        """:param instance_type: e.g. ``ml.g5.xlarge``; returns None when unlimited."""
        return self.quotas.get(instance_type, self.default_quota)


def detect_gpus() -> int:
    """Count this machine's NVIDIA GPUs (0 without ``nvidia-smi``)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


_FILE_FIELDS = {"quotas", "default_quota", "gpus", "sim_gpus", "stop_grace_seconds", "region"}


def load_capacity_file(path: Path) -> dict[str, Any]:
    """
    Read capacity settings (quotas, default_quota, gpus, sim_gpus, ...) from a JSON or YAML file.

    :param path: the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read emulator config {path}: {exc}") from exc
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    unknown = set(data) - _FILE_FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(_FILE_FIELDS)}")
    for key in ("quotas", "sim_gpus"):
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in value.items()
        ):
            raise ValueError(f"{path}: '{key}' must map instance types to non-negative integers")
    for key in ("default_quota", "gpus"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{path}: '{key}' must be a non-negative integer, got {value!r}")
    return data


def type_counts(values: list[str], flag: str) -> dict[str, int]:
    """
    Parse repeated ``INSTANCE_TYPE=N`` command-line values.

    :param values: the values given.
    :param flag: the option's name, for the error.
    """
    out: dict[str, int] = {}
    for value in values:
        key, sep, number = value.partition("=")
        if not sep or not number.isdigit():
            raise SystemExit(f"{flag} expects INSTANCE_TYPE=N, got {value!r}")
        out[key] = int(number)
    return out

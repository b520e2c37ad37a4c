"""Environment knobs of the simulator (``BOLTZGEN_SIM_*``)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field

#: A100 seconds per design by total residues (design + target), from the BoltzGen paper tables.
RUNTIME_TABLE: dict[str, list[tuple[int, float]]] = {
    "design": [(50, 3), (100, 5), (200, 6), (300, 6.5), (400, 9.5), (500, 13)],
    "inverse_folding": [(50, 0.5), (100, 0.7), (200, 1), (300, 1.7), (400, 2), (500, 4)],
    "folding": [(50, 18), (100, 21), (200, 36), (300, 46), (400, 60), (500, 81)],
    "design_folding": [(50, 18), (100, 21), (200, 36), (300, 46), (400, 60), (500, 81)],
    "affinity": [(50, 9), (100, 11.5), (200, 17.5), (300, 23.5), (400, 31.5), (500, 42.5)],
    "analysis": [(50, 1), (100, 1.2), (200, 1.5), (300, 1.8), (400, 2), (500, 2.2)],
    "filtering": [(50, 0.01), (500, 0.01)],
}

HELP = """\
Simulator knobs (environment):
  BOLTZGEN_SIM_GPUS            GPUs the host pretends to have (unset or 0: CPU host; `run`,
                               `configure` and GPU steps then fail like torch/Lightning do)
  BOLTZGEN_SIM_GPU_MODEL       name reported for the GPUs (default "NVIDIA A100-SXM4-40GB")
  BOLTZGEN_SIM_SEED            seed of every simulated value (default 0); values are
                               deterministic per (seed, design id)
  BOLTZGEN_SIM_SECONDS_<STEP>  seconds slept per design in STEP (DESIGN, INVERSE_FOLDING,
                               FOLDING, DESIGN_FOLDING, AFFINITY, ANALYSIS, FILTERING); default 0
  BOLTZGEN_SIM_TIME_SCALE      if > 0, sleep scale x the real A100 seconds per design by
                               residues (compressed real runtimes for benchmarks); default 0
  BOLTZGEN_SIM_FAIL_RATE       probability that a design makes its step crash (default 0)
  BOLTZGEN_SIM_FAIL_SPEC       comma list of spec stems whose steps crash
  BOLTZGEN_SIM_FAIL_ID         comma list of design ids whose steps crash
  BOLTZGEN_SIM_FAIL_STEPS      comma list of steps the failure knobs apply to (default: all)
  BOLTZGEN_SIM_OOM_RATE        probability that a design batch runs out of GPU memory; the batch
                               is skipped with the real log line and exit code 0 (default 0)
  BOLTZGEN_SIM_OOM_BATCHES     comma list of design batch indices that run out of memory
  BOLTZGEN_SIM_PASS_RATE       share of designs that pass BoltzGen's default filters: one number
                               for every spec, or a comma list of <spec stem>=<share>; each design
                               is drawn to pass (quality far above the filters, no composition
                               outlier) or to fail (refolding RMSD far above them); unset: the
                               modelled metrics decide
"""


def _csv(name: str) -> frozenset[str]:
    return frozenset(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


def _float(name: str, default: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"boltzgen-sim: {name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Knobs:
    """The simulator's settings, read once from the environment."""

    gpus: int = 0
    gpu_model: str = "NVIDIA A100-SXM4-40GB"
    seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    time_scale: float = 0.0
    fail_rate: float = 0.0
    fail_specs: frozenset[str] = frozenset()
    fail_ids: frozenset[str] = frozenset()
    fail_steps: frozenset[str] = frozenset()
    oom_rate: float = 0.0
    oom_batches: frozenset[str] = frozenset()
    pass_rates: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Knobs:
        """Read the knobs; ``CUDA_VISIBLE_DEVICES`` narrows the GPUs like it does for torch."""
        gpus = int(_float("BOLTZGEN_SIM_GPUS"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and gpus > 0:
            ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
            gpus = len([v for v in ids if v.strip().isdigit() and int(v) < gpus])
        seconds = {step: _float(f"BOLTZGEN_SIM_SECONDS_{step.upper()}") for step in RUNTIME_TABLE}
        return cls(
            gpus=gpus,
            gpu_model=os.environ.get("BOLTZGEN_SIM_GPU_MODEL", cls.gpu_model),
            seed=int(_float("BOLTZGEN_SIM_SEED")),
            seconds=seconds,
            time_scale=_float("BOLTZGEN_SIM_TIME_SCALE"),
            fail_rate=_float("BOLTZGEN_SIM_FAIL_RATE"),
            fail_specs=_csv("BOLTZGEN_SIM_FAIL_SPEC"),
            fail_ids=_csv("BOLTZGEN_SIM_FAIL_ID"),
            fail_steps=_csv("BOLTZGEN_SIM_FAIL_STEPS"),
            oom_rate=_float("BOLTZGEN_SIM_OOM_RATE"),
            oom_batches=_csv("BOLTZGEN_SIM_OOM_BATCHES"),
            pass_rates=_pass_rates(os.environ.get("BOLTZGEN_SIM_PASS_RATE", "")),
        )

    def seconds_per_design(self, step: str, residues: int) -> float:
        """Seconds to sleep for one design of ``residues`` total residues in ``step``."""
        fixed = self.seconds.get(step, 0.0)
        if self.time_scale > 0:
            return fixed + self.time_scale * interpolate(RUNTIME_TABLE[step], residues)
        return fixed

    def should_fail(self, step: str, design_id: str) -> bool:
        """Whether the failure knobs make ``step`` crash on this design (ids start with the spec stem)."""
        if self.fail_steps and step not in self.fail_steps:
            return False
        if design_id in self.fail_ids:
            return True
        if any(design_id == s or design_id.startswith(s + "_") for s in self.fail_specs):
            return True
        return self.fail_rate > 0 and unit(self.seed, "fail", step, design_id) < self.fail_rate

    def drawn_to_pass(self, design_id: str) -> bool | None:
        """
        Whether ``BOLTZGEN_SIM_PASS_RATE`` draws this design to pass (None: the knob leaves it alone).

        The longest spec stem the id starts with decides; ``""`` stands for every spec.
        """
        stems = [s for s in self.pass_rates if not s or design_id == s or design_id.startswith(s + "_")]
        if not stems:
            return None
        rate = self.pass_rates[max(stems, key=len)]
        return unit(self.seed, "pass", design_id) < rate

    def batch_ooms(self, spec_stem: str, batch: int) -> bool:
        """Whether design batch ``batch`` of a spec runs out of GPU memory."""
        if str(batch) in self.oom_batches:
            return True
        return self.oom_rate > 0 and unit(self.seed, "oom", spec_stem, str(batch)) < self.oom_rate


def _pass_rates(raw: str) -> dict[str, float]:
    """``0.2`` (every spec) or ``stem=0.5,other=0.05`` as stem -> share (``""`` for every spec)."""
    rates: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        stem, _, value = part.rpartition("=")
        try:
            share = float(value)
        except ValueError:
            message = f"boltzgen-sim: BOLTZGEN_SIM_PASS_RATE: {part!r} is not [<stem>=]<share>"
            raise SystemExit(message) from None
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"boltzgen-sim: BOLTZGEN_SIM_PASS_RATE: {part!r}: the share is not in [0, 1]")
        rates[stem.strip()] = share
    return rates


def interpolate(table: list[tuple[int, float]], x: int) -> float:
    """Piecewise-linear lookup, clamped at both ends."""
    if x <= table[0][0]:
        return table[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(table):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return table[-1][1]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from any parts."""
    return stable_seed(*parts) / 2.0**64

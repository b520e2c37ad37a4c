"""The stages of a campaign and BoltzGen's protocols, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

STAGES: Final = ("design", "inverse_folding", "folding", "analysis", "filtering")
"""Every stage, in run order."""

SHARD_STAGES: Final = STAGES[:4]
"""Stages that run once per shard (filtering runs once per spec over the union of its shards)."""

GPU_STAGES: Final = STAGES[:3]
"""Stages that need a GPU; analysis and filtering run on CPU instances."""

CPU_STAGES: Final = STAGES[3:]

PROTOCOLS: Final = (
    "protein-anything",
    "peptide-anything",
    "protein-small_molecule",
    "nanobody-anything",
    "antibody-anything",
    "protein-redesign",
)
"""BoltzGen 0.3.2's ``--protocol`` choices."""


def shard_stages(skip_inverse_folding: bool) -> tuple[str, ...]:
    """
    Return the stages a campaign's shards run: inverse folding is left out when it is skipped.

    :param skip_inverse_folding: the campaign's ``design.skip_inverse_folding``.
    """
    return tuple(s for s in SHARD_STAGES if not (s == "inverse_folding" and skip_inverse_folding))


def previous_stage(stage: str) -> str | None:
    """
    Return the stage that feeds ``stage``, or None for design.

    :param stage: one of :data:`STAGES`.
    """
    index = STAGES.index(stage)
    return STAGES[index - 1] if index else None


FUSABLE_STAGES: Final = STAGES[1:4]
"""Stages that may run inside the job of the stage before them (``stages.fuse``)."""


def fused_hosts(stages: Sequence[str], fuse: Sequence[str]) -> dict[str, str]:
    """
    Return, for each stage of ``fuse`` that runs, the stage whose job runs it: the nearest earlier
    stage of ``stages`` that is not fused itself (so a chain of fused stages shares one job).

    :param stages: the shard stages that run, in order (see :func:`shard_stages`).
    :param fuse: the campaign's ``stages.fuse``.
    """
    hosts: dict[str, str] = {}
    for index, stage in enumerate(stages):
        if stage in fuse and index:
            previous = stages[index - 1]
            hosts[stage] = hosts.get(previous, previous)
    return hosts

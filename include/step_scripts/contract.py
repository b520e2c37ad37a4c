"""Rules the DAG package and the step scripts share: BoltzGen 0.3.2's filtering option grammar, and
how a job runs its work items (the order on its GPUs, a fused stage following the one before).

Standard library only: the step scripts import it in the processing container, and the plugin
loads this same file (``boltzgen_airflow.config``) to validate a campaign before any job starts.
The parsers accept exactly what BoltzGen's own CLI parsers accept (``parse_additional_filters``,
``parse_size_buckets``, ``parse_metrics_override`` in ``boltzgen/cli/boltzgen.py``) and return
the same values, with two restrictions: a filter's feature must be a column name (BoltzGen's parser
takes any text and its filtering then fails with ``KeyError``) and no value may hold whitespace
(BoltzGen's ``float`` and ``int`` skip it, YAML and the logs would not). They raise
:class:`ValueError` naming the value at fault.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

#: A column name of BoltzGen's metrics tables (``design_ptm``, ``designfolding-filter_rmsd``).
FEATURE_RE = re.compile(r"[A-Za-z_][\w-]*\Z")


class Filter(TypedDict):
    """One hard filter of BoltzGen's Filter task."""

    feature: str
    threshold: float
    lower_is_better: bool


class SizeBucket(TypedDict):
    """How many designs of ``min <= length < max`` the diversity selection may keep."""

    num_designs: int
    min: int
    max: int


def parse_additional_filter(raw: str) -> Filter:
    """``feature>x`` (higher is better) or ``feature<x`` (lower is better), as BoltzGen splits it.

    BoltzGen looks for ``>`` first, splits at its first occurrence and reads the rest with
    ``float``: so ``a>=1``, ``a<=1`` and ``a==1`` are refused, ``a>1e-3`` accepted.
    """
    if raw != "".join(raw.split()):
        raise ValueError(f"Invalid additional_filters value {raw!r}: whitespace is not allowed")
    op = ">" if ">" in raw else "<" if "<" in raw else None
    if op is None:
        raise ValueError(
            f"Invalid additional_filters format: {raw!r}. "
            "Use 'feature>threshold' or 'feature<threshold' format."
        )
    feature, threshold = raw.split(op, 1)
    try:
        value = float(threshold)
    except ValueError:
        raise ValueError(f"Invalid threshold value in {raw!r}: {threshold!r}. Must be a number.") from None
    if not FEATURE_RE.match(feature):
        raise ValueError(f"Invalid additional_filters value {raw!r}: {feature!r} is not a metric column name")
    return {"feature": feature, "threshold": value, "lower_is_better": op == "<"}


def parse_additional_filters(values: list[str]) -> list[Filter]:
    """Every filter of ``values`` (see :func:`parse_additional_filter`)."""
    return [parse_additional_filter(v) for v in values]


def parse_size_bucket(raw: str) -> SizeBucket:
    """``min-max:count`` with integers, as BoltzGen splits it (at the first ``:``, then ``-``)."""
    if raw != "".join(raw.split()):
        raise ValueError(f"Invalid size_buckets value {raw!r}: whitespace is not allowed")
    if ":" not in raw or "-" not in raw:
        raise ValueError(f"Invalid size_buckets format: {raw!r}. Use 'min-max:count' format.")
    span, count = raw.split(":", 1)
    if "-" not in span:
        raise ValueError(f"Invalid size_buckets format: {raw!r}. Use 'min-max:count' format.")
    low, high = span.split("-", 1)
    try:
        return {"num_designs": int(count), "min": int(low), "max": int(high)}
    except ValueError:
        raise ValueError(
            f"Invalid size_buckets format: {raw!r}. All values must be integers. Use 'min-max:count' format."
        ) from None


def parse_size_buckets(values: list[str]) -> list[SizeBucket]:
    """Every bucket of ``values`` (see :func:`parse_size_bucket`)."""
    return [parse_size_bucket(v) for v in values]


def parse_metrics_override(values: list[str]) -> dict[str, float | None]:
    """``metric=weight`` pairs; an empty weight or ``none`` removes the metric from the ranking."""
    out: dict[str, float | None] = {}
    for raw in values:
        if "=" not in raw:
            raise ValueError(f"Invalid metrics_override format: {raw!r}. Use 'metric_name=weight' format.")
        key, value = raw.split("=", 1)
        if value == "" or value.lower() == "none":
            out[key] = None
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(
                f"Invalid weight value for metric {key!r}: {value!r}. Must be a number."
            ) from None
    return out


def size_bucket_of(buckets: list[SizeBucket], length: int) -> int | None:
    """The bucket a design of ``length`` counts in: the last holding it, as BoltzGen's selection assigns."""
    found = None
    for index, bucket in enumerate(buckets):
        if bucket["min"] <= length < bucket["max"]:
            found = index
    return found


def size_buckets_reach(buckets: list[SizeBucket], lengths: list[int], first: int) -> int:
    """How many designs BoltzGen 0.3.2's selection can take when the design ``lengths[first]`` ranks first.

    The first pick counts in the first bucket holding it; every other design in the last one, and
    a bucket takes designs until its count equals ``num_designs`` (so never, once above it).
    Designs in no bucket are unlimited.
    """
    taken = [0] * len(buckets)
    for index, bucket in enumerate(buckets):
        if bucket["min"] <= lengths[first] < bucket["max"]:
            taken[index] = 1
            break
    waiting = [0] * len(buckets)
    reach = 1
    for n, length in enumerate(lengths):
        if n == first:
            continue
        holder = size_bucket_of(buckets, length)
        if holder is None:
            reach += 1
        else:
            waiting[holder] += 1
    for index, bucket in enumerate(buckets):
        cap = bucket["num_designs"]
        room = waiting[index] if taken[index] > cap else max(cap - taken[index], 0)
        reach += min(waiting[index], room)
    return reach


def check_size_buckets_fill(buckets: list[SizeBucket], budget: int, lengths: list[int]) -> None:
    """Refuse size buckets that fill before ``budget`` designs among ``lengths`` can be selected.

    BoltzGen 0.3.2's lazy-greedy selection skips the designs of a full bucket and, once every
    remaining design is in one, pops an empty heap (``IndexError``) instead of stopping short; it
    selects everything when there are no more designs than ``budget``. Which design ranks first
    is only known once filtering ranks them, so this refuses what fails whichever ranks first.

    :raises ValueError: naming the buckets, the budget and how many designs they leave.
    """
    if not buckets or len(lengths) <= budget:
        return
    firsts = {length: n for n, length in enumerate(lengths)}.values()
    reach = max(size_buckets_reach(buckets, lengths, first) for first in firsts)
    if reach < budget:
        counts = [0] * len(buckets)
        for length in lengths:
            index = size_bucket_of(buckets, length)
            if index is not None:
                counts[index] += 1
        spans = ", ".join(
            f"{b['min']}-{b['max']}:{b['num_designs']} holds {n}"
            for b, n in zip(buckets, counts, strict=True)
        )
        raise ValueError(
            f"size_buckets leave at most {reach} designs for the budget of {budget}, among {len(lengths)} "
            f"designs of lengths {min(lengths)}-{max(lengths)} ({spans}; {len(lengths) - sum(counts)} in no "
            "bucket): BoltzGen's selection fails on such buckets. Raise a bucket's count, widen the "
            "buckets or lower the budget."
        )


#: A fused stage that runs beside the stage before it in the same job, item by item: the analysis
#: of an item starts on the instance's CPUs as soon as its folding ends, while the GPUs fold the
#: next items (``stages.fuse``).
FOLLOWS = {"analysis": "folding"}


def lpt_queues(costs: Sequence[float], workers: int) -> list[list[int]]:
    """
    Longest processing time first: each item to the least loaded worker.

    :param costs: each item's estimated seconds, in the items' canonical order (spec, start).
    :param workers: the GPUs (or 1).
    :return: per worker, the indices of its items in the order it runs them (ties go to the
        earlier item and the lower worker).
    """
    count = max(1, workers)
    loads = [0.0] * count
    queues: list[list[int]] = [[] for _ in range(count)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        worker = min(range(count), key=lambda w: (loads[w], w))
        queues[worker].append(index)
        loads[worker] += costs[index]
    return queues


def followed_seconds(
    costs: Sequence[float], host: Sequence[float], guest: Sequence[float], workers: int
) -> float:
    """
    Seconds until a following stage ends: the host's items run on ``workers`` as
    :func:`lpt_queues` assigns them, and the guest runs one item at a time, each once the host has
    finished it.

    :param costs: the items' estimated seconds (what orders them).
    :param host: each item's seconds in the host stage.
    :param guest: each item's seconds in the following stage.
    :param workers: the GPUs the host runs on.
    """
    ends: list[tuple[float, int]] = []
    for queue in lpt_queues(costs, workers):
        clock = 0.0
        for index in queue:
            clock += host[index]
            ends.append((clock, index))
    clock = 0.0
    for end, index in sorted(ends):
        clock = max(clock, end) + guest[index]
    return max([clock, *(end for end, _ in ends)])

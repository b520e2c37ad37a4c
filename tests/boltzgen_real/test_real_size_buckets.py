"""Size buckets that fill before the budget: the filtering job's check against BoltzGen's own selection.

BoltzGen 0.3.2's lazy-greedy selection pops an empty heap (``IndexError``) once every remaining
design sits in a full size bucket. ``contract.check_size_buckets_fill`` (what the filtering job runs
before BoltzGen, over the union's design lengths) must refuse exactly the buckets on which BoltzGen
fails whichever design ranks first, and ``contract.size_buckets_reach`` must say, for the design
that does rank first, whether BoltzGen fills the budget. Random cases (overlapping buckets,
zero counts, designs in no bucket), each run through BoltzGen's ``Filter.select_lazy_greedy``.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import PROJECT

pytestmark = pytest.mark.boltzgen

sys.path.insert(0, str(PROJECT / "include" / "step_scripts"))
import contract  # noqa: E402


def _cases(count: int) -> list[dict[str, Any]]:
    rng = random.Random(13)
    cases = []
    for _ in range(count):
        lengths = [rng.randint(8, 30) for _ in range(rng.randint(2, 12))]
        buckets = []
        for _ in range(rng.randint(1, 3)):
            low = rng.randint(5, 28)
            buckets.append({"num_designs": rng.randint(0, 3), "min": low, "max": low + rng.randint(1, 12)})
        cases.append({
            "lengths": lengths, "size_buckets": buckets, "budget": rng.randint(1, len(lengths) + 1),
            "alpha": rng.choice([0.0, 0.5, 0.9]), "quality": [rng.random() for _ in lengths],
        })  # fmt: skip
    return cases


def test_bucket_check_refuses_what_boltzgens_selection_crashes_on(oracle: Callable[..., Any]) -> None:
    cases = _cases(400)
    results = oracle("select", json.dumps(cases))["results"]
    crashed = refused = 0
    for case, real in zip(cases, results, strict=True):
        buckets, budget, lengths = case["size_buckets"], case["budget"], case["lengths"]
        first = max(range(len(lengths)), key=lambda i: case["quality"][i])
        fails = "error" in real
        crashed += fails
        if len(lengths) > budget:
            reach = contract.size_buckets_reach(buckets, lengths, first)
            assert fails == (reach < budget), (case, real, reach)
        else:
            assert not fails and len(real["selected"]) == len(lengths), (case, real)
        try:
            contract.check_size_buckets_fill(buckets, budget, lengths)
        except ValueError as exc:
            refused += 1
            assert fails, (case, real)
            assert "size_buckets" in str(exc) and f"budget of {budget}" in str(exc)
    # The cases exercise both outcomes (seeded: 27 crashes, 12 of them refused whichever ranks first).
    assert crashed >= 20 and refused >= 10, (crashed, refused)
    print(f"{len(cases)} cases: BoltzGen crashed on {crashed}, refused beforehand {refused}")

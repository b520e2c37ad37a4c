"""
The plugin and the step scripts agree on every name they share: schema versions, file names,
protocols and their extra folding steps, and design ids.

The step scripts run in the processing container with the standard library alone, so they cannot
import the plugin; this test holds both sides to one another.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from boltzgen_airflow.planning import plan
from boltzgen_airflow.run import staging
from boltzgen_airflow.settings import step_scripts_dir
from boltzgen_airflow.stages import PROTOCOLS, STAGES
from boltzgen_airflow.storage import commits, layout


def _script(name: str) -> ModuleType:
    folder = step_scripts_dir()
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"contract_{name}", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def stepcommon() -> ModuleType:
    return _script("stepcommon")


def test_schemas_and_file_names_are_the_same_on_both_sides(stepcommon: ModuleType) -> None:
    assert stepcommon.WORK_SCHEMA == staging.WORK_SCHEMA
    assert stepcommon.MANIFEST_SCHEMA == 1 == commits.COMMIT_SCHEMA
    assert stepcommon.MANIFEST_NAME == layout.MANIFEST_FILE
    # A manifest of another schema does not verify: the plugin reads schema 1 alone.
    problems = commits.verify_manifest(
        {"schema": stepcommon.MANIFEST_SCHEMA + 1, "files": []}, {}, 0.0
    ).problems
    assert any("schema" in p for p in problems)


def test_protocols_and_their_extra_folding_steps_are_the_same(stepcommon: ModuleType) -> None:
    assert tuple(stepcommon.PROTOCOLS) == PROTOCOLS
    folding = _script("folding")
    assert {p for p, steps in folding.EXTRA_STEPS.items() if "design_folding" in steps} == set(
        plan.DESIGN_FOLDING_PROTOCOLS
    )
    assert {p for p, steps in folding.EXTRA_STEPS.items() if "affinity" in steps} == set(
        plan.AFFINITY_PROTOCOLS
    )


def test_design_ids_are_numbered_the_same_way(stepcommon: ModuleType) -> None:
    for num_designs, index in ((1, 0), (10, 7), (101, 42), (1000, 999)):
        width = plan.design_width(num_designs)
        item = {"spec": "0123abcd/nested/pep.yaml", "width": width}
        assert stepcommon.design_id(item, index) == plan.design_id("pep", index, width)


def test_every_stage_has_its_script() -> None:
    assert {p.stem for p in step_scripts_dir().glob("*.py")} >= set(STAGES)


def test_a_following_stage_waits_for_each_item_and_runs_one_at_a_time() -> None:
    contract = _script("contract")
    # A stage follows the stage just before it, which the step scripts can fuse it with.
    assert all(STAGES.index(host) == STAGES.index(guest) - 1 for guest, host in contract.FOLLOWS.items())
    # One GPU folds two 10 s items; each 3 s analysis starts once its item is folded.
    assert contract.followed_seconds([10, 10], [10, 10], [3, 3], 1) == 23
    # Two GPUs fold both at once; the analyses then run one after the other.
    assert contract.followed_seconds([10, 10], [10, 10], [3, 3], 2) == 16
    # An analysis longer than the next item's folding delays the ones after it.
    assert contract.followed_seconds([5, 4, 3], [5, 4, 3], [6, 1, 1], 1) == 13


def test_lpt_gives_the_longest_item_to_the_least_loaded_gpu_first() -> None:
    contract = _script("contract")
    assert contract.lpt_queues([1, 5, 3, 3], 2) == [[1, 0], [2, 3]]
    assert contract.lpt_queues([2, 2], 1) == [[0, 1]]

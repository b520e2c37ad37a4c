"""BoltzGen's readers over every file the simulator writes, for every protocol.

The mmCIF parser and tokenizer of FromGeneratedDataset (design, inverse-folded and refolded
structures, their per-token metadata), the npz loads of analysis (folding arrays, metrics_tmp as
aggregate_metrics loads them) and the pickled sequences filtering reads.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import harness

pytestmark = pytest.mark.boltzgen

PROTOCOL_KINDS = {
    "protein-anything": {"fold_out_npz", "fold_out_design_npz"},
    "peptide-anything": {"fold_out_npz"},
    "protein-small_molecule": {"fold_out_npz", "fold_out_design_npz", "affinity_out_npz"},
    "nanobody-anything": {"fold_out_npz"},
    "antibody-anything": {"fold_out_npz"},
    "protein-redesign": {"fold_out_npz"},
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_KINDS))
def test_boltzgen_reads_everything_the_simulator_writes(
    protocol: str, runner: Any, examples: Path, moldir: Path, oracle: Callable[..., Any]
) -> None:
    # A real target (6m1u chain A, copied into every structure) and a sequence-only target.
    bundle = runner.specs_src / "b0"
    bundle.mkdir()
    for name in ("6m1uprot.yaml", "6m1u.cif"):
        shutil.copy(examples / "hard_targets" / name, bundle / name)
    seq_spec = harness.write_bundle(runner.specs_src, bundle="b1")
    items = [harness.item("b0/6m1uprot.yaml", 0, 2), harness.item(seq_spec, 0, 2)]
    stages = runner.chain(items, protocol, boltzgen={"inverse_fold_num_sequences": 2})
    flt = runner.run(harness.work("filtering", items[:1], protocol), analysis=[stages["analysis"].result])
    assert flt.returncode == 0, flt.message
    answer = oracle("read", str(runner.base), str(moldir))
    assert answer["failures"] == [], "\n".join(answer["failures"][:20])
    counts = answer["counts"]
    expected = {"cif", "design npz", "analysis data npz", "analysis metrics npz", "pkl"} | PROTOCOL_KINDS[protocol]
    assert expected <= set(counts), counts
    # 4 designs x 2 sequences, in each of the analysis and filtering inputs at least.
    assert counts["analysis data npz"] >= 8 and counts["cif"] >= 3 * 8, counts
    print(protocol, counts)

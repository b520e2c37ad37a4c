"""BoltzGen's own parsers and readers over what the step scripts and the simulator produce.

Every ``boltzgen`` argv the step scripts build (all six protocols, skip inverse folding, several
inverse-folded sequences, step_config, filtering options) goes through BoltzGen's argparse; the
filter grammar of campaign validation is checked against BoltzGen's parsers value by value; the
configs the simulated ``configure`` writes are compared with real ``boltzgen configure``'s; BoltzGen's
readers (the mmCIF parser and tokenizer of FromGeneratedDataset, analysis' npz loads, filtering's
pickle) go over every file the simulator wrote for every protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT, harness

pytestmark = pytest.mark.boltzgen

SCRIPTS = PROJECT / "include" / "step_scripts"
sys.path.insert(0, str(SCRIPTS))
import contract  # noqa: E402
import design as design_step  # noqa: E402

PROTOCOLS = (
    "protein-anything", "peptide-anything", "protein-small_molecule",
    "nanobody-anything", "antibody-anything", "protein-redesign",
)  # fmt: skip
VARIANTS: list[dict[str, Any]] = [
    {"boltzgen": {"inverse_fold_num_sequences": 2}},
    {
        "boltzgen": {
            "skip_inverse_folding": True,
            "step_config": {"folding": {"recycling_steps": 2}, "analysis": {"data.skip_existing": False}},
        },
        "filtering": {
            "budget": 2, "alpha": 0.9, "filter_biased": False, "refolding_rmsd_threshold": 3.0,
            "metrics_override": {"design_ptm": 2.0, "plip_saltbridge_refolded": None},
            "additional_filters": ["design_iptm>0.1", "bb_rmsd<4"], "size_buckets": ["10-16:1", "16-21:2"],
        },
    },
]  # fmt: skip


def _recorder(folder: Path, shim: Path, log: Path) -> Path:
    """A ``boltzgen`` that appends its argv to ``log`` and runs the simulator."""
    script = folder / "boltzgen-recorder"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({str(shim)!r}, [{str(shim)!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    return script


PROTOCOL_KINDS = {
    "protein-anything": {"fold_out_npz", "fold_out_design_npz"},
    "peptide-anything": {"fold_out_npz"},
    "protein-small_molecule": {"fold_out_npz", "fold_out_design_npz", "affinity_out_npz"},
    "nanobody-anything": {"fold_out_npz"},
    "antibody-anything": {"fold_out_npz"},
    "protein-redesign": {"fold_out_npz"},
}


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory: pytest.TempPathFactory, shim_dir: Path, examples: Path) -> dict[str, Any]:
    """Every protocol (and two option sets) through all five stages on the simulator, argv recorded.

    Two specs per shard: BoltzGen's example 6m1uprot (target 6m1u chain A copied into every
    structure) and one whose target is a sequence.
    """
    base = tmp_path_factory.mktemp("campaigns")
    log = base / "argv.jsonl"
    env = {"BOLTZGEN_BIN": str(_recorder(base, shim_dir / "boltzgen", log))}
    roots: dict[str, Path] = {}
    for protocol in PROTOCOLS:
        for n, variant in enumerate(VARIANTS if protocol == "protein-anything" else VARIANTS[:1]):
            runner = harness.Runner(
                base / f"{protocol}-{n}" / "jobs", shim_dir, base / f"{protocol}-{n}" / "specs"
            )
            (runner.specs_src / "b0").mkdir(parents=True)
            for name in ("6m1uprot.yaml", "6m1u.cif"):
                shutil.copy(examples / "hard_targets" / name, runner.specs_src / "b0" / name)
            seq_spec = harness.write_bundle(runner.specs_src, bundle="b1")
            items = [harness.item("b0/6m1uprot.yaml", 0, 2), harness.item(seq_spec, 0, 2)]
            stages = runner.chain(items, protocol, env=env, **variant)
            flt = runner.run(
                harness.work("filtering", items[:1], protocol, **variant),
                analysis=[stages["analysis"].result],
                env=env,
            )
            assert flt.returncode == 0, flt.message
            roots.setdefault(protocol, runner.base)
    return {"argv_log": log, "roots": roots, "count": sum(1 for _ in base.glob("*/jobs"))}


def test_every_argv_the_step_scripts_build_is_accepted_by_boltzgen(
    campaigns: dict[str, Any], oracle: Callable[..., Any]
) -> None:
    log = campaigns["argv_log"]
    argvs = [json.loads(line) for line in log.read_text().splitlines()]
    distinct = {json.dumps(a) for a in argvs}
    results = oracle("argv", str(log))["results"]
    refused = [r for r in results if not r["ok"] and r["error"] != "exit 0"]
    assert not refused, refused
    commands = {tuple(a[:1]) for a in argvs}
    assert {("configure",), ("execute",), ("--version",)} <= commands
    # Every step name reaches BoltzGen in some `execute --steps`.
    steps = {s for a in argvs if a[0] == "execute" for s in a[a.index("--steps") + 1 :]}
    assert steps == {
        "design",
        "inverse_folding",
        "folding",
        "design_folding",
        "affinity",
        "analysis",
        "filtering",
    }
    print(
        f"{len(argvs)} argv ({len(distinct)} distinct) from {campaigns['count']} campaigns parsed by BoltzGen"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_boltzgen_reads_everything_the_simulator_writes(
    protocol: str, campaigns: dict[str, Any], moldir: Path, oracle: Callable[..., Any]
) -> None:
    """The mmCIF parser and tokenizer, analysis' npz loads and filtering's pickle, file by file."""
    answer = oracle("read", str(campaigns["roots"][protocol]), str(moldir))
    assert answer["failures"] == [], "\n".join(answer["failures"][:20])
    counts = answer["counts"]
    expected = {"cif", "design npz", "analysis data npz", "analysis metrics npz", "pkl"} | PROTOCOL_KINDS[
        protocol
    ]
    assert expected <= set(counts), counts
    assert counts["analysis data npz"] >= 4 and counts["cif"] >= 3 * 4, counts
    assert "pkl" in counts
    print(protocol, counts)


def test_folding_npz_holds_what_boltzgens_folding_writer_saves(
    campaigns: dict[str, Any], moldir: Path, oracle: Callable[..., Any]
) -> None:
    """Every folding npz of every protocol (and of the design-stage backbones, skip inverse folding)
    against the batch BoltzGen's folding data module builds from the same design files: shapes,
    dtypes and values of the arrays its FoldingWriter saves, one structure and confidence per sample.
    """
    root = next(iter(campaigns["roots"].values())).parents[1]
    answer = oracle("fold-inputs", str(root), str(moldir))
    assert answer["failures"] == [], "\n".join(answer["failures"][:20])
    npz = sum(1 for _ in root.rglob("fold_out_*npz/*.npz"))
    assert answer["checked"] == npz and npz >= 2 * len(PROTOCOLS), (answer["checked"], npz)
    print(f"{npz} folding npz equal to BoltzGen's folding batch")


FILTERS = [
    "design_ptm>0.7", "design_iptm<0.5", "bb_rmsd<2", "designfolding-filter_rmsd<2.5", "a>1e-3", "a>-1",
    "a>1_0", "a>inf", "design_ptm>=0.7", "design_ptm<=0.7", "design_ptm==0.7", "design_ptm=0.7",
    "design_ptm>", ">0.7", "design_ptm>0.7x", "design ptm>0.7", "design_ptm> 0.7", "design_ptm>0.7\n",
    "$(id)>1", "a<b>1", "a>1>2", "",
]  # fmt: skip
BUCKETS = [
    "50-100:5",
    "0-10:1",
    "100-50:3",
    "50-100",
    "50:100-5",
    "a-b:c",
    "50-100:5:1",
    "50 -100:5",
    "-1-5:2",
]
OVERRIDES = ["design_ptm=2", "iptm=none", "iptm=", "iptm=None", "iptm", "iptm=x", "a=b=c", "=1"]


def test_filter_grammar_is_boltzgens(oracle: Callable[..., Any]) -> None:
    """What campaign validation and the filtering job accept, BoltzGen accepts and reads the same."""
    real = oracle(
        "filters",
        json.dumps({"additional_filters": FILTERS, "size_buckets": BUCKETS, "metrics_override": OVERRIDES}),
    )
    ours = {
        "additional_filters": contract.parse_additional_filter,
        "size_buckets": contract.parse_size_bucket,
        "metrics_override": lambda v: contract.parse_metrics_override([v]),
    }
    accepted = 0
    for name, parse in ours.items():
        for answer in real[name]:
            try:
                mine = parse(answer["value"])
            except ValueError:
                continue
            accepted += 1
            assert "error" not in answer, f"{name} {answer['value']!r}: accepted here, BoltzGen says {answer}"
            theirs = answer["parsed"] if name == "metrics_override" else answer["parsed"][0]
            assert mine == theirs, name
    for bad in ("design_ptm>=0.7", "design_ptm<=0.7", "design_ptm==0.7"):
        assert "error" in next(a for a in real["additional_filters"] if a["value"] == bad)
        with pytest.raises(ValueError):
            contract.parse_additional_filter(bad)
    assert accepted >= 10


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def configured(
    tmp_path_factory: pytest.TempPathFactory, examples: Path, hub_cache: Path, oracle: Callable[..., Any]
) -> Path:
    """Real and simulated ``configure`` of each protocol with the design stage's argv, same cache."""
    base = tmp_path_factory.mktemp("configure")
    for name in ("6m1uprot.yaml", "6m1u.cif"):
        shutil.copy(examples / "hard_targets" / name, base / name)
    step_config = {"analysis": {"data.skip_existing": False}}
    item = harness.item("b0/6m1uprot.yaml", 0, 4)

    def argv(protocol: str, engine: str) -> list[str]:
        work = harness.work(
            "design", [], protocol, boltzgen={"diffusion_batch_size": 2, "step_config": step_config}
        )
        return list(design_step.configure_args(work, item, base / "6m1uprot.yaml", base / engine / protocol))

    (base / "real.jsonl").write_text("".join(json.dumps(argv(p, "real")) + "\n" for p in PROTOCOLS))
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    try:
        assert oracle("configure", str(base / "real.jsonl")) == {"configured": len(PROTOCOLS)}
        from boltzgen_sim.cli import main as sim_main

        os.environ["BOLTZGEN_SIM_GPUS"] = "1"
        for protocol in PROTOCOLS:
            assert sim_main(argv(protocol, "sim")) == 0
    finally:
        for key in (*env, "BOLTZGEN_SIM_GPUS"):
            os.environ.pop(key, None)
    return base


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simulated_configure_writes_boltzgens_configs(protocol: str, configured: Path) -> None:
    """Same argv (as the design stage builds it), same moldir and checkpoint paths, same CPU-step configs."""
    real_dir, sim_dir = configured / "real" / protocol, configured / "sim" / protocol
    real_steps = yaml.safe_load((real_dir / "steps.yaml").read_text())
    assert yaml.safe_load((sim_dir / "steps.yaml").read_text()) == real_steps
    for step in (s["name"] for s in real_steps["steps"]):
        real = _flat(yaml.safe_load((real_dir / "config" / f"{step}.yaml").read_text()))
        sim = _flat(yaml.safe_load((sim_dir / "config" / f"{step}.yaml").read_text()))
        sim = {k: v.replace(str(sim_dir), str(real_dir)) if isinstance(v, str) else v for k, v in sim.items()}
        if step in ("analysis", "filtering"):
            assert sim == real, step  # the CPU steps: real BoltzGen runs these configs
        else:
            # The GPU steps: every key the simulator writes has BoltzGen's value (it writes fewer keys).
            differ = {k: (v, real.get(k, "<absent>")) for k, v in sim.items() if real.get(k, "<absent>") != v}
            assert not differ, (step, differ)
    analysis = yaml.safe_load((real_dir / "config" / "analysis.yaml").read_text())
    # The campaign asked for skip_existing false; the stage's own true wins (filtering only aggregates).
    assert analysis["data"]["skip_existing"] is True
    assert Path(analysis["data"]["cfg"]["moldir"]).is_file()

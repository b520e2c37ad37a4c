"""BoltzGen's own parsers over what the step scripts and the simulator produce.

Every ``boltzgen`` argv the step scripts build (all six protocols, skip inverse folding, several
inverse-folded sequences, step_config, filtering options) goes through BoltzGen's argparse; the
filter grammar of campaign validation is checked against BoltzGen's parsers value by value; the
configs the simulated ``configure`` writes are compared with real ``boltzgen configure``'s.
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
    {},
    {"boltzgen": {"skip_inverse_folding": True}},
    {
        "boltzgen": {
            "inverse_fold_num_sequences": 2,
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


def test_every_argv_the_step_scripts_build_is_accepted_by_boltzgen(
    runner: Any, tmp_path: Path, shim_dir: Path, oracle: Callable[..., Any]
) -> None:
    log = tmp_path / "argv.jsonl"
    env = {"BOLTZGEN_BIN": str(_recorder(tmp_path, shim_dir / "boltzgen", log))}
    spec = harness.write_bundle(runner.specs_src)
    runs = 0
    for protocol in PROTOCOLS:
        for variant in VARIANTS if protocol == "protein-anything" else VARIANTS[:1]:
            items = [harness.item(spec, 0, 3)]
            stages = runner.chain(items, protocol, env=env, **variant)
            flt = runner.run(
                harness.work("filtering", items, protocol, **variant), analysis=[stages["analysis"].result], env=env
            )
            assert flt.returncode == 0, flt.message
            runs += 1
    argvs = [json.loads(line) for line in log.read_text().splitlines()]
    distinct = {json.dumps(a) for a in argvs}
    results = oracle("argv", str(log))["results"]
    refused = [r for r in results if not r["ok"] and r["error"] != "exit 0"]
    assert not refused, refused
    commands = {tuple(a[:1]) for a in argvs}
    assert {("configure",), ("execute",), ("--version",)} <= commands
    # Every step name reaches BoltzGen in some `execute --steps`.
    steps = {s for a in argvs if a[0] == "execute" for s in a[a.index("--steps") + 1 :]}
    assert steps == {"design", "inverse_folding", "folding", "design_folding", "affinity", "analysis", "filtering"}
    print(f"{len(argvs)} argv ({len(distinct)} distinct) from {runs} campaigns parsed by BoltzGen")


FILTERS = [
    "design_ptm>0.7", "design_iptm<0.5", "bb_rmsd<2", "designfolding-filter_rmsd<2.5", "a>1e-3", "a>-1",
    "a>1_0", "a>inf", "design_ptm>=0.7", "design_ptm<=0.7", "design_ptm==0.7", "design_ptm=0.7",
    "design_ptm>", ">0.7", "design_ptm>0.7x", "design ptm>0.7", "design_ptm> 0.7", "design_ptm>0.7\n",
    "$(id)>1", "a<b>1", "a>1>2", "",
]  # fmt: skip
BUCKETS = ["50-100:5", "0-10:1", "100-50:3", "50-100", "50:100-5", "a-b:c", "50-100:5:1", "50 -100:5", "-1-5:2"]
OVERRIDES = ["design_ptm=2", "iptm=none", "iptm=", "iptm=None", "iptm", "iptm=x", "a=b=c", "=1"]


def test_filter_grammar_is_boltzgens(oracle: Callable[..., Any]) -> None:
    """What campaign validation and the filtering job accept, BoltzGen accepts and reads the same."""
    real = oracle(
        "filters", json.dumps({"additional_filters": FILTERS, "size_buckets": BUCKETS, "metrics_override": OVERRIDES})
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


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simulated_configure_writes_boltzgens_configs(
    protocol: str, tmp_path: Path, examples: Path, hub_cache: Path, shim_dir: Path, oracle: Callable[..., Any]
) -> None:
    """Same argv (as the design stage builds it), same moldir and checkpoint paths, same CPU-step configs."""
    for name in ("6m1uprot.yaml", "6m1u.cif"):
        shutil.copy(examples / "hard_targets" / name, tmp_path / name)
    work = harness.work(
        "design", [], protocol, boltzgen={"diffusion_batch_size": 2, "step_config": {"analysis": {"data.skip_existing": False}}}
    )
    item = harness.item("b0/6m1uprot.yaml", 0, 4)
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    try:
        oracle("configure", *design_step.configure_args(work, item, tmp_path / "6m1uprot.yaml", tmp_path / "real"))
        from boltzgen_sim.cli import main as sim_main

        os.environ["BOLTZGEN_SIM_GPUS"] = "1"
        assert sim_main(design_step.configure_args(work, item, tmp_path / "6m1uprot.yaml", tmp_path / "sim")) == 0
    finally:
        for key in (*env, "BOLTZGEN_SIM_GPUS"):
            os.environ.pop(key, None)
    real_steps = yaml.safe_load((tmp_path / "real" / "steps.yaml").read_text())
    assert yaml.safe_load((tmp_path / "sim" / "steps.yaml").read_text()) == real_steps
    for step in (s["name"] for s in real_steps["steps"]):
        real = _flat(yaml.safe_load((tmp_path / "real" / "config" / f"{step}.yaml").read_text()))
        sim = _flat(yaml.safe_load((tmp_path / "sim" / "config" / f"{step}.yaml").read_text()))
        sim = {k: v.replace(str(tmp_path / "sim"), str(tmp_path / "real")) if isinstance(v, str) else v for k, v in sim.items()}
        if step in ("analysis", "filtering"):
            assert sim == real, step  # the CPU steps: real BoltzGen runs these configs
        else:
            # The GPU steps: every key the simulator writes has BoltzGen's value (it writes fewer keys).
            differ = {k: (v, real.get(k, "<absent>")) for k, v in sim.items() if real.get(k, "<absent>") != v}
            assert not differ, (step, differ)
    analysis = yaml.safe_load((tmp_path / "real" / "config" / "analysis.yaml").read_text())
    # The campaign asked for skip_existing false; the stage's own true wins (filtering only aggregates).
    assert analysis["data"]["skip_existing"] is True
    assert Path(analysis["data"]["cfg"]["moldir"]).is_file()

"""The simulator behaves like BoltzGen 0.3.2 where the stage scripts depend on it."""

from __future__ import annotations

import gzip
import pickle
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXAMPLES, SPEC_TEXT

from boltzgen_sim.specs import SpecError, parse_spec


def boltzgen(
    shim: Path, *args: str, gpus: int = 1, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "BOLTZGEN_SIM_GPUS": str(gpus), **env}
    return subprocess.run(
        [str(shim / "boltzgen"), *args], capture_output=True, text=True, env=full_env, cwd=cwd, check=False
    )


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "pdlbinder.yaml"
    path.write_text(SPEC_TEXT)
    return path


def test_version_says_simulated(shim_dir: Path) -> None:
    out = boltzgen(shim_dir, "--version")
    assert out.stdout.strip() == "boltzgen 0.3.2 (simulated by boltzgen-sim)"


def test_run_fails_on_a_cpu_host_like_torch(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    out = boltzgen(shim_dir, "run", str(spec), "--output", str(tmp_path / "o"), "--num_designs", "2", gpus=0)
    assert out.returncode == 1
    assert "RuntimeError: Found no NVIDIA driver on your system" in out.stderr


def test_shards_of_one_spec_write_the_same_ids(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    names = []
    for shard in ("a", "b"):
        out = boltzgen(
            shim_dir,
            "run",
            str(spec),
            "--output",
            str(tmp_path / shard),
            "--steps",
            "design",
            "--num_designs",
            "3",
            "--diffusion_batch_size",
            "1",
        )
        assert out.returncode == 0, out.stderr
        names.append(sorted(p.name for p in (tmp_path / shard / "intermediate_designs").glob("*.cif")))
    assert names[0] == names[1] == ["pdlbinder_0.cif", "pdlbinder_1.cif", "pdlbinder_2.cif"]


def test_reconfigure_keeps_previous_config(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    for _ in range(2):
        assert boltzgen(shim_dir, "configure", str(spec), "--output", str(tmp_path / "o")).returncode == 0
    assert (tmp_path / "o" / "previous-config-1" / "design.yaml").is_file()
    assert (tmp_path / "o" / "config" / "filtering.yaml").is_file()


def test_oom_batch_is_skipped_with_exit_zero(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    out = boltzgen(
        shim_dir,
        "run",
        str(spec),
        "--output",
        str(tmp_path / "o"),
        "--steps",
        "design",
        "--num_designs",
        "4",
        "--diffusion_batch_size",
        "2",
        BOLTZGEN_SIM_OOM_BATCHES="0",
    )
    assert out.returncode == 0
    assert "| WARNING: ran out of memory, skipping batch" in out.stdout
    assert sorted(p.stem for p in (tmp_path / "o" / "intermediate_designs").glob("*.cif")) == [
        "pdlbinder_2",
        "pdlbinder_3",
    ]


def test_full_run_writes_boltzgen_outputs(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    out = boltzgen(
        shim_dir,
        "run",
        str(spec),
        "--output",
        str(tmp_path / "o"),
        "--num_designs",
        "8",
        "--diffusion_batch_size",
        "2",
        "--budget",
        "3",
    )
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "o" / "intermediate_designs_inverse_folded"
    metrics = pd.read_csv(folder / "aggregate_metrics_analyze.csv")
    for column in (
        "id",
        "file_name",
        "designed_sequence",
        "num_design",
        "ALA_fraction",
        "CYS_fraction",
        "UNK_fraction",
        "bb_rmsd",
        "designfolding-bb_rmsd",
        "design_to_target_iptm",
        "design_ptm",
        "min_design_to_target_pae",
        "plip_hbonds_refolded",
        "delta_sasa_refolded",
        "helix",
    ):
        assert column in metrics.columns, column
    assert metrics["num_design"].between(12, 20).all()  # the spec designs 12..20 residues
    with gzip.open(folder / "ca_coords_sequences.pkl.gz") as fh:
        seqs = pickle.load(fh)  # written by the simulator in this test
    assert list(seqs.columns) == ["id", "target_id", "sequence", "ca_coords"]
    final = tmp_path / "o" / "final_ranked_designs"
    ranked = pd.read_csv(final / "all_designs_metrics.csv")
    assert list(ranked["final_rank"]) == list(range(1, 9))
    # Designs passing every filter rank above those that fail one.
    assert ranked["num_filters_passed"].is_monotonic_decreasing
    assert len(pd.read_csv(final / "final_designs_metrics_3.csv")) == 3
    assert (final / "results_overview.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="boltzgen-examples not available")
def test_reads_real_example_specs() -> None:
    vanilla = parse_spec(EXAMPLES / "vanilla_protein" / "1g13prot.yaml")
    assert (vanilla.design_min, vanilla.design_max) == (80, 140)
    assert vanilla.target_residues > 50
    nano = parse_spec(EXAMPLES / "hard_targets" / "1g13nano.yaml")
    assert nano.design_min > 10


def test_missing_reference_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("entities:\n  - file:\n      path: ../nowhere.cif\n")
    with pytest.raises(SpecError, match=r"nowhere\.cif"):
        parse_spec(path)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="boltzgen-examples not available")
def test_a_residue_range_boltzgen_refuses_is_refused(tmp_path: Path) -> None:
    """BoltzGen 0.3.2's parse_range refuses npm1.yaml's ``12..118, 243..291`` (the space) at configure."""
    folder = EXAMPLES / "binding_disordered_regions_of_proteins"
    refused = r"structure_groups\[0\]\.group\.res_index: Malformed .*' 243\.\.291'"
    with pytest.raises(SpecError, match=refused):
        parse_spec(folder / "npm1.yaml")
    for name in ("npm1.yaml", "npm1.cif"):
        text = (folder / name).read_text()
        (tmp_path / name).write_text(text.replace("12..118, 243..291", "12..118,243..291"))
    assert parse_spec(tmp_path / "npm1.yaml").design_max == 80
    binding_all = tmp_path / "all.yaml"
    binding_all.write_text(
        "entities:\n  - protein: {id: G, sequence: 10}\n  - file:\n      path: npm1.cif\n"
        "      binding_types: [{chain: {id: A, binding: all}}]\n"
    )
    parse_spec(binding_all)  # "all" is BoltzGen's word for every residue, not a range


@pytest.mark.parametrize("rate", ["pdlbinder=0.3", "0.8"])
def test_pass_rate_knob_sets_the_share_passing_boltzgen_filters(
    shim_dir: Path, spec: Path, tmp_path: Path, rate: str
) -> None:
    from boltzgen_sim.knobs import unit

    share = float(rate.rpartition("=")[2])
    out = boltzgen(
        shim_dir,
        "run",
        str(spec),
        "--output",
        str(tmp_path / "o"),
        "--num_designs",
        "30",
        "--diffusion_batch_size",
        "5",
        "--budget",
        "2",
        BOLTZGEN_SIM_PASS_RATE=rate,
    )
    assert out.returncode == 0, out.stderr
    ranked = pd.read_csv(tmp_path / "o" / "final_ranked_designs" / "all_designs_metrics.csv")
    drawn = {i for i in ranked["id"] if unit(0, "pass", i) < share}
    # Exactly the designs the knob drew pass the filtering's own pass_filters.
    assert set(ranked.loc[ranked["pass_filters"], "id"]) == drawn
    assert abs(len(drawn) / len(ranked) - share) < 0.3


def test_pass_rate_knob_leaves_other_specs_alone(shim_dir: Path, spec: Path, tmp_path: Path) -> None:
    runs = {}
    for name, env in (("plain", {}), ("other", {"BOLTZGEN_SIM_PASS_RATE": "otherspec=0.0"})):
        out = boltzgen(
            shim_dir, "run", str(spec), "--output", str(tmp_path / name), "--num_designs", "6",
            "--diffusion_batch_size", "3", "--budget", "2", **env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        runs[name] = pd.read_csv(tmp_path / name / "final_ranked_designs" / "all_designs_metrics.csv")
    assert runs["plain"]["design_to_target_iptm"].tolist() == runs["other"]["design_to_target_iptm"].tolist()

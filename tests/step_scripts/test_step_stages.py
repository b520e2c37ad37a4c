"""The stage scripts end to end with the simulator, one job root per stage like the emulator."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXAMPLES, LIGAND_SPEC_TEXT, Runner, item, work, write_bundle

PROTOCOL_FILES = {
    "protein-anything": ["fold_out_npz", "refold_cif", "fold_out_design_npz", "refold_design_cif"],
    "peptide-anything": ["fold_out_npz", "refold_cif"],
    "protein-small_molecule": ["fold_out_npz", "fold_out_design_npz", "affinity_out_npz"],
    "nanobody-anything": ["fold_out_npz"],
    "antibody-anything": ["fold_out_npz"],
    "protein-redesign": ["fold_out_npz"],
}


def check_manifest(stage_result: Path, manifest: dict) -> None:
    for entry in manifest["files"]:
        path = stage_result / entry["path"]
        assert path.is_file(), entry["path"]
        assert path.stat().st_size == entry["size"]


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_FILES))
def test_every_protocol_runs_every_stage(runner: Runner, specs_root: Path, protocol: str) -> None:
    text = LIGAND_SPEC_TEXT if protocol == "protein-small_molecule" else None
    spec = write_bundle(specs_root, text=text) if text else write_bundle(specs_root)
    # Two items over the two GPUs for the base protocol; one small item for the others keeps it quick.
    items = [item(spec, 0, 3), item(spec, 3, 2)] if protocol == "protein-anything" else [item(spec, 0, 3)]
    stages = runner.chain(items, protocol)
    total = sum(it["count"] for it in items)
    expected_ids = [f"pdlbinder_{i:02d}" for i in range(total)]
    for name, stage in stages.items():
        manifest = stage.manifest
        assert manifest["stage"] == name
        assert manifest["designs_expected"] == total
        assert manifest["design_ids"] == expected_ids, name
        assert manifest["shortfall"] == 0
        assert manifest["boltzgen_version"].startswith("0.3.2")
        assert all(code == 0 for code in manifest["exit_codes"])
        check_manifest(stage.result, manifest)
    assert stages["design"].manifest["gpus"] == 2
    assert stages["design"].manifest["gpu_model"] == "NVIDIA A10G"
    assert stages["analysis"].manifest["gpus"] == 0
    folded = stages["folding"].result / "targets--pdlbinder.00-3" / "intermediate_designs_inverse_folded"
    for sub in PROTOCOL_FILES[protocol]:
        assert sorted(p.stem for p in (folded / sub).iterdir()) == expected_ids[:3], sub

    flt = runner.run(work("filtering", [items[0]], protocol), analysis=[stages["analysis"].result])
    assert flt.returncode == 0, flt.message + flt.stderr[-2000:]
    final = flt.result / "final_ranked_designs"
    selected = pd.read_csv(final / "final_designs_metrics_3.csv")
    assert len(selected) == 3 and set(selected["id"]) <= set(expected_ids)
    assert len(pd.read_csv(final / "all_designs_metrics.csv")) == total
    ranked = {p.name.split("_", 1)[1][: -len(".cif")] for p in (final / "final_3_designs").glob("rank*.cif")}
    assert ranked == set(selected["id"])
    assert flt.manifest["design_ids"] == sorted(selected["id"])
    if protocol in ("peptide-anything", "nanobody-anything", "antibody-anything"):
        # These protocols keep cysteines out at inverse folding (BoltzGen's inverse_fold_avoid "C").
        assert not selected["designed_sequence"].str.contains("C").any()


def test_design_fans_out_one_process_per_gpu(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    items = [item(spec, 2 * k, 2, est=est) for k, est in enumerate([40, 30, 20, 10, 10, 5])]
    stage = runner.run(work("design", items), gpus=4)
    assert stage.returncode == 0, stage.message
    timings = stage.manifest["timings"]
    assert stage.manifest["gpus"] == 4
    by_start = {t["start"]: t["gpu"] for t in timings}
    # LPT by est_seconds: 40,30,20,10 each get a GPU; the next 10 and 5 go to the least loaded.
    assert {by_start[0], by_start[2], by_start[4], by_start[6]} == {0, 1, 2, 3}
    assert by_start[8] == by_start[6] and by_start[10] == by_start[4]
    for it in items:
        config = (
            stage.result / f"targets--pdlbinder.{it['start']:02d}-2" / "config" / "design.yaml"
        ).read_text()
        assert "devices: 1" in config


def test_three_shards_share_no_id_and_filter_like_one_run(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    shards = [runner.chain([item(spec, 4 * k, 4)]) for k in range(3)]
    ids = [set(s["design"].manifest["design_ids"]) for s in shards]
    assert all(len(i) == 4 for i in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    budget = {"filtering": {"budget": 5}}
    union = runner.run(
        work("filtering", [item(spec, 0, 4)], **budget), analysis=[s["analysis"].result for s in shards]
    )
    assert union.returncode == 0, union.message + union.stderr[-2000:]

    # One run holding the same designs: the three folded shards in one item folder, analysed once.
    one = item(spec, 0, 12)
    combined = runner.base / "combined"
    shutil.copytree(shards[0]["folding"].result, combined)
    target = combined / "targets--pdlbinder.00-12"
    (combined / "targets--pdlbinder.00-4").rename(target)
    for config in (target / "config").glob("*.yaml"):
        text = config.read_text().replace("targets--pdlbinder.00-4", target.name)
        config.unlink()
        config.write_text(text)
    manifest = json.loads((combined / "_manifest.json").read_text())
    manifest["items"] = [one]
    (combined / "_manifest.json").write_text(json.dumps(manifest))
    for s, start in ((shards[1], 4), (shards[2], 8)):
        src = (
            s["folding"].result / f"targets--pdlbinder.{start:02d}-4" / "intermediate_designs_inverse_folded"
        )
        shutil.copytree(src, target / "intermediate_designs_inverse_folded", dirs_exist_ok=True)
    analysis = runner.run(work("analysis", [one]), upstream=combined)
    assert analysis.returncode == 0, analysis.message
    single = runner.run(work("filtering", [one], **budget), analysis=[analysis.result])
    assert single.returncode == 0, single.message

    def final(stage_result: Path, name: str) -> list[str]:
        with (stage_result / "final_ranked_designs" / name).open() as fh:
            return [row["id"] for row in csv.DictReader(fh)]

    assert final(union.result, "final_designs_metrics_5.csv") == final(
        single.result, "final_designs_metrics_5.csv"
    )
    assert final(union.result, "all_designs_metrics.csv") == final(single.result, "all_designs_metrics.csv")
    assert len(final(union.result, "all_designs_metrics.csv")) == 12


def test_oom_shortfall_is_detected_and_reported(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    stage = runner.run(work("design", [item(spec, 0, 6)]), env={"BOLTZGEN_SIM_OOM_BATCHES": "1"})
    assert stage.returncode == 0  # BoltzGen skips the batch with exit code 0
    manifest = stage.manifest
    assert manifest["designs_expected"] == 6
    assert manifest["designs_produced"] == 4
    assert manifest["shortfall"] == 2
    assert manifest["oom_detected"] is True
    assert manifest["design_ids"] == ["pdlbinder_00", "pdlbinder_01", "pdlbinder_04", "pdlbinder_05"]


def test_failing_item_fails_the_job_with_its_reason(runner: Runner, specs_root: Path) -> None:
    good = write_bundle(specs_root, rel="targets/goodbinder.yaml")
    bad = write_bundle(specs_root, rel="targets/badbinder.yaml")
    stage = runner.run(
        work("design", [item(good, 0, 2), item(bad, 0, 2)]), env={"BOLTZGEN_SIM_FAIL_SPEC": "badbinder"}
    )
    assert stage.returncode != 0
    message = stage.message
    assert "targets/badbinder.yaml" in message and "simulated failure" in message
    assert message.count("\n") == 1 and len(message.encode()) <= 1024
    assert not (stage.result / "_manifest.json").exists()
    assert "Traceback" in stage.stderr  # the full log goes to stderr


def test_timeout_ends_the_children(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    w = work("design", [item(spec, 0, 2)], max_runtime_seconds=32)
    stage = runner.run(w, env={"BOLTZGEN_SIM_SECONDS_DESIGN": "60"})
    assert stage.returncode != 0
    assert "timed out" in stage.message
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(stage.root))]
    assert leftovers == []


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_cpu_stages_never_touch_cuda(runner: Runner, specs_root: Path) -> None:
    # analysis runs with no GPU at all (the runner gives CPU stages 0 GPUs); `boltzgen run` would fail there.
    spec = write_bundle(specs_root)
    stages = runner.chain([item(spec, 0, 2)])
    assert stages["analysis"].returncode == 0
    log = (stages["analysis"].result / "targets--pdlbinder.00-2" / "logs" / "analysis.log").read_text()
    assert "execute" in log and "configure" not in log.splitlines()[0]


def test_design_needs_a_gpu(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    stage = runner.run(work("design", [item(spec, 0, 2)]), gpus=0)
    assert stage.returncode == 1
    assert "needs a GPU" in stage.message


def test_bad_work_file_names_the_field(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    w = work("design", [item(spec, 0, 2)])
    w["items"][0]["count"] = "two"
    stage = runner.run(w)
    assert stage.returncode == 1
    assert "items[0].count" in stage.message


@pytest.mark.skipif(not (EXAMPLES / "hard_targets").is_dir(), reason="boltzgen-examples not available")
def test_example_spec_with_parent_references(runner: Runner, specs_root: Path) -> None:
    # 1g13nano.yaml references ../nanobody_scaffolds/*.yaml, which reference their own .cif files.
    bundle = specs_root / "hx"
    (bundle / "hard_targets").mkdir(parents=True)
    for name in ("1g13nano.yaml", "1g13.cif"):
        shutil.copy(EXAMPLES / "hard_targets" / name, bundle / "hard_targets" / name)
    shutil.copytree(EXAMPLES / "nanobody_scaffolds", bundle / "nanobody_scaffolds")
    items = [item("hx/hard_targets/1g13nano.yaml", 0, 2)]
    stages = runner.chain(items, "nanobody-anything", until="design")
    assert stages["design"].manifest["design_ids"] == ["1g13nano_00", "1g13nano_01"]

    shutil.rmtree(bundle / "nanobody_scaffolds")  # without the ../ files the spec cannot be read
    broken = runner.run(work("design", items, "nanobody-anything"))
    assert broken.returncode != 0
    assert "nanobody_scaffolds" in broken.message


def test_fused_stages_run_in_the_design_job_each_with_its_manifest(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    items = [item(spec, 0, 3), item(spec, 3, 2)]
    fused = [
        {"stage": name, "key": f"{i:032x}", "work": work(name, items)}
        for i, name in enumerate(("inverse_folding", "folding", "analysis"), start=1)
    ]
    job = runner.run(work("design", items, fused=fused))
    assert job.returncode == 0, job.message + job.stderr[-3000:]
    host = job.manifest
    assert host["stage"] == "design"
    assert host["fused"] == [
        {"stage": "inverse_folding", "key": f"{1:032x}", "shard": "s0000", "path": "_fused/inverse_folding/"},
        {"stage": "folding", "key": f"{2:032x}", "shard": "s0000", "path": "_fused/folding/"},
        {"stage": "analysis", "key": f"{3:032x}", "shard": "s0000", "path": "_fused/analysis/"},
    ]
    # The design attempt lists its own files only; each fused stage has an attempt of its own.
    assert not any(f["path"].startswith("_fused/") for f in host["files"])
    check_manifest(job.result, host)
    expected = [f"pdlbinder_{i:02d}" for i in range(5)]
    for name in ("inverse_folding", "folding", "analysis"):
        result = job.result / "_fused" / name
        manifest = json.loads((result / "_manifest.json").read_text())
        assert manifest["stage"] == name
        assert manifest["design_ids"] == expected
        check_manifest(result, manifest)
        # What the next job reads to rewrite the configs' paths.
        assert json.loads((result / "_step_paths.json").read_text())["result"] == str(result)
    # The next job (analysis) continues from the last fused stage as from a folding job of its own.
    analysis = runner.run(work("analysis", items), upstream=job.result / "_fused" / "folding")
    assert analysis.returncode == 0, analysis.message + analysis.stderr[-3000:]
    assert analysis.manifest["design_ids"] == expected


def _folded_upstream(runner: Runner, items: list[dict]) -> Path:
    design = runner.run(work("design", items))
    inverse = runner.run(work("inverse_folding", items), upstream=design.result)
    assert inverse.returncode == 0, inverse.message
    return inverse.result


def test_fused_analysis_follows_folding_item_by_item(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    items = [item(spec, 0, 2, est=30.0), item(spec, 2, 2, est=20.0), item(spec, 4, 2, est=10.0)]
    fused = [{"stage": "analysis", "key": "a" * 32, "work": work("analysis", items)}]
    # One GPU folds the three items one after another, a second per design.
    job = runner.run(
        work("folding", items, fused=fused),
        upstream=_folded_upstream(runner, items),
        gpus=1,
        env={"BOLTZGEN_SIM_SECONDS_FOLDING": "0.5"},
    )
    assert job.returncode == 0, job.message + job.stderr[-3000:]
    folding = job.manifest
    assert not any(f["path"].startswith("_fused/") for f in folding["files"])
    check_manifest(job.result, folding)
    result = job.result / "_fused" / "analysis"
    analysis = json.loads((result / "_manifest.json").read_text())
    assert analysis["design_ids"] == [f"pdlbinder_{i:02d}" for i in range(6)]
    check_manifest(result, analysis)

    def span(timing: dict) -> tuple[datetime, datetime]:
        began = datetime.fromisoformat(timing["began_at"])
        return began, began + timedelta(seconds=timing["seconds"])

    folds = {t["start"]: span(t) for t in folding["timings"]}
    analyses = {t["start"]: span(t) for t in analysis["timings"]}
    # The GPU runs the longest item first; its analysis starts once it is folded, while the GPU
    # folds the others.
    assert folds[0][1] <= analyses[0][0] < folds[4][1]
    assert all(folds[start][1] <= analyses[start][0] for start in folds)


def test_a_failing_follower_fails_the_job_with_its_reason(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    items = [item(spec, 0, 2, est=20.0), item(spec, 2, 2, est=10.0)]
    fused = [{"stage": "analysis", "key": "a" * 32, "work": work("analysis", items)}]
    job = runner.run(
        work("folding", items, fused=fused),
        upstream=_folded_upstream(runner, items),
        gpus=1,
        env={"BOLTZGEN_SIM_FAIL_ID": "pdlbinder_00", "BOLTZGEN_SIM_FAIL_STEPS": "analysis"},
    )
    assert job.returncode == 1
    assert "analysis (run in this job)" in job.message and "designs 0..1" in job.message
    assert not (job.result / "_fused" / "analysis" / "_manifest.json").exists()


def test_a_fused_stage_that_fails_fails_the_job(runner: Runner, specs_root: Path) -> None:
    spec = write_bundle(specs_root)
    items = [item(spec, 0, 2)]
    # Work of another stage under a fused entry is refused before anything runs.
    wrong = runner.run(
        work("design", items, fused=[{"stage": "folding", "key": "1" * 32, "work": work("analysis", items)}])
    )
    assert wrong.returncode == 1
    assert "fused[0].work" in wrong.message and "'analysis'" in wrong.message
    assert not (wrong.result / "_manifest.json").exists()
    # A fused stage that fails (an item the design stage did not make) fails the whole job.
    other = [item(spec, 5, 2)]
    job = runner.run(
        work(
            "design",
            items,
            fused=[{"stage": "inverse_folding", "key": "1" * 32, "work": work("inverse_folding", other)}],
        )
    )
    assert job.returncode == 1
    assert "inverse_folding" in job.message and "lacks the folder" in job.message


def test_a_filtering_job_filters_other_specs_after_its_own_each_with_its_manifest(
    runner: Runner, specs_root: Path
) -> None:
    first = write_bundle(specs_root)
    second = write_bundle(specs_root, bundle="b1", rel="targets/other.yaml")
    chains = [runner.chain([item(spec, 0, 3)]) for spec in (first, second)]
    other = work("filtering", [item(second, 0, 3)], shard="f0001")
    job = runner.run(
        work(
            "filtering",
            [item(first, 0, 3)],
            shard="f0000",
            fused=[{"stage": "filtering", "key": "b" * 32, "work": other}],
        ),
        analysis=[chain["analysis"].result for chain in chains],
    )
    assert job.returncode == 0, job.message + job.stderr[-3000:]
    assert job.manifest["fused"] == [
        {"stage": "filtering", "key": "b" * 32, "shard": "f0001", "path": "_fused/filtering/f0001/"}
    ]
    assert all(i.startswith("pdlbinder_") for i in job.manifest["design_ids"])
    check_manifest(job.result, job.manifest)
    result = job.result / "_fused" / "filtering" / "f0001"
    manifest = json.loads((result / "_manifest.json").read_text())
    assert manifest["stage"] == "filtering" and manifest["shard"] == "f0001"
    assert manifest["design_ids"] and all(i.startswith("other_") for i in manifest["design_ids"])
    selected = pd.read_csv(result / "final_ranked_designs" / "final_designs_metrics_3.csv")
    assert set(selected["id"]) == set(manifest["design_ids"])
    check_manifest(result, manifest)


def test_size_buckets_that_cannot_fill_the_budget_fail_before_boltzgen_filters(
    runner: Runner, specs_root: Path
) -> None:
    """BoltzGen's selection would crash (IndexError); the job names the field and the counts instead."""
    spec = write_bundle(specs_root)
    shard = runner.chain([item(spec, 0, 3)])
    options = {"filtering": {"budget": 2, "size_buckets": ["1-1000:1"]}}
    flt = runner.run(work("filtering", [item(spec, 0, 3)], **options), analysis=[shard["analysis"].result])
    assert flt.returncode != 0
    assert "filtering.size_buckets leave at most 1 designs for the budget of 2" in flt.message
    assert "1-1000:1 holds 3" in flt.message
    assert not (flt.result / "final_ranked_designs").exists()
    widened = {"filtering": {"budget": 2, "size_buckets": ["1-1000:2"]}}
    ok = runner.run(work("filtering", [item(spec, 0, 3)], **widened), analysis=[shard["analysis"].result])
    assert ok.returncode == 0, ok.message
    assert len(ok.manifest["design_ids"]) == 2

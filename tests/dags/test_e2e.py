"""
End to end on the local stack: real Airflow (dag.test), the SageMaker emulator running the step
scripts with the BoltzGen simulator, S3 and CloudWatch Logs on moto server.

The only stand-in is the simulator for BoltzGen itself (it needs a GPU and 6 GB of weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.dag_campaigns import DESIGNS_PER_SPEC, write_campaign

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.specs import discover_bundles
from boltzgen_airflow.cli import main
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.planning.plan import plan_campaign
from boltzgen_airflow.sagemaker.limits import instance_preferences_supported
from boltzgen_airflow.sagemaker.requests import STAGE_ABBREVIATIONS

pytestmark = [pytest.mark.stack, pytest.mark.airflow, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
DAG_ID = "boltzgen_e2e"
BUCKET = "bg-e2e"
#: Shards of the e2e campaign: two specs, one design per shard.
SHARDS = 2 * DESIGNS_PER_SPEC


@pytest.fixture(scope="module")
def env(local_stack: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    campaigns = tmp_path_factory.mktemp("campaigns")
    write_campaign(campaigns, "e2e", BUCKET, include="*/[1z]*.yaml")
    return {
        **os.environ,
        **local_stack.env(),
        "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
        "BOLTZGEN_CHECK_INTERVAL": "1",
        # The task logs as a user reads them (the suite's default is WARNING).
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }


def run(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"run_dag.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    # dag.test() runs every task in this process: its output is the task logs.
    return {**json.loads(lines[-1][len("RESULT ") :]), "output": proc.stdout + proc.stderr}


def job_names(stack: Any) -> set[str]:
    client = stack.client("sagemaker")
    names: set[str] = set()
    for page in client.get_paginator("list_processing_jobs").paginate():
        names.update(job["ProcessingJobName"] for job in page["ProcessingJobSummaries"])
    return names


def jobs_per_stage(names: set[str]) -> Counter[tuple[str, str]]:
    """Count jobs by (stage, shard or filter id), read from ``bg-<campaign>-<stage>-<shard>-<hash>``."""
    stages = {abbr: stage for stage, abbr in STAGE_ABBREVIATIONS.items()}
    counts: Counter[tuple[str, str]] = Counter()
    for name in names:
        _, _, abbr, shard, _ = name.split("-")
        counts[stages[abbr], shard] += 1
    return counts


def clear_only_failed(env: dict[str, str], run_id: str, dag_id: str = DAG_ID) -> str:
    """What users run: ``airflow dags clear <dag> --run-id <run> --only-failed --yes``."""
    command = ["dags", "clear", dag_id, "--run-id", run_id, "--only-failed", "--yes"]
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"airflow dags clear failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def read_json(stack: Any, key: str) -> Any:
    return json.loads(stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def keys(stack: Any, prefix: str) -> list[str]:
    client = stack.client("s3")
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return found


def test_dry_run_plans_and_starts_no_job(
    env: dict[str, str], local_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    before = job_names(local_stack)
    result = run(env, "test", DAG_ID, json.dumps({"dry_run": True}))
    assert result["state"] == "success", result["tis"]
    assert job_names(local_stack) == before
    info = result["xcoms"]["plan[-1]:plan_info"]
    assert info["dry_run"] is True and info["estimate"]["cost_usd"] > 0
    # The specs and their shards, as the campaign view shows a dry run's plan.
    shards = [len(spec["shards"]) for spec in info["specs"].values()]
    assert shards == [DESIGNS_PER_SPEC, DESIGNS_PER_SPEC]
    assert result["tis"]["report[-1]"] == "skipped"
    # The plan task logs the table `boltzgen-airflow plan` prints, line for line.
    assert main(["plan", str(Path(env["BOLTZGEN_CAMPAIGNS_DIR"]) / "e2e.yaml")]) == 0
    table = capsys.readouterr().out.splitlines()
    headline = next(i for i, line in enumerate(table) if line.startswith("total: "))
    logged = result["output"].splitlines()
    start = logged.index(table[0])
    # (The console log of dag.test() ends a message's last line with the logger's name.)
    shown = logged[start : start + headline + 1]
    assert all(line.startswith(want) for line, want in zip(shown, table, strict=False)), "\n".join(shown)
    assert len(shown) == headline + 1 and table[1].split() == [
        "stage",
        "instance",
        "jobs",
        "parallel",
        "inst-h",
        "gpu-h",
        "span-h",
        "cost",
        "$",
    ]


def test_a_failed_plan_ends_the_run_at_once_with_every_bad_param(env: dict[str, str]) -> None:
    path = write_campaign(Path(env["BOLTZGEN_CAMPAIGNS_DIR"]), "e2eplan", BUCKET, include="*/1*.yaml")
    # Retries as a campaign has them by default: the report must not spend them on a failed plan.
    path.write_text(path.read_text().replace("retries: 0", "retries: 2\nretry_delay_seconds: 60"))
    # Each passes the form's schema; the plan finds all three wrong.
    conf = {"num_designs": 2, "budget": 5, "design_instance_type": "ml.r5.2xlarge"}
    result = run(env, "test", "boltzgen_e2eplan", json.dumps(conf))
    assert result["state"] == "failed"
    tis, times, errors = result["tis"], result["times"], result["errors"]
    assert tis["plan[-1]"] == "failed" and times["plan[-1]"]["try_number"] == 1
    (plan_error,) = errors["plan[-1]"]
    assert "params.budget: budget (5) cannot exceed num_designs (2)" in plan_error
    assert "params.design_instance_type: ml.r5.2xlarge has no GPU; design needs one" in plan_error
    # The report fails once, at once, with the plan's error; nothing waits for a retry.
    assert tis["report[-1]"] == "failed" and times["report[-1]"]["try_number"] == 1
    (report_error,) = errors["report[-1]"]
    assert "the plan did not complete" in report_error and "params.design_instance_type" in report_error
    assert not any("XComNotFound" in e for tries in errors.values() for e in tries), errors
    plan_end = datetime.fromisoformat(times["plan[-1]"]["end"])
    assert (datetime.fromisoformat(result["run_end"]) - plan_end).total_seconds() < 30, result["run_end"]
    assert all(tis[t] == "upstream_failed" for t in tis if t.startswith(("shard.", "filter_specs"))), tis


def test_failed_shard_gives_partial_results_and_clearing_only_failed_tasks_completes_the_run(
    env: dict[str, str], local_stack: Any
) -> None:
    before = job_names(local_stack)
    # The plan is deterministic: the test picks the zinc finger spec's second shard to fail.
    campaign = load_campaign(Path(env["BOLTZGEN_CAMPAIGNS_DIR"]) / "e2e.yaml", env)
    plan = plan_campaign(campaign, discover_bundles(campaign.specs_root(), campaign.design.include))
    zinc = next(spec for spec in plan.bundles if "denovo_zinc" in spec)
    failed = plan.shards_of(zinc)[1].id
    index = [s.id for s in plan.shards].index(failed)
    # Every design job of that shard fails inside the emulator (a fault injected by job name).
    local_stack.set_faults([{"pattern": f"bg-e2e-des-{failed}-*", "action": "fail", "message": "injected"}])
    first = run(env, "test", DAG_ID, "{}")
    tis = first["tis"]
    assert first["state"] == "failed"
    assert tis[f"shard.design[{index}]"] == "failed"
    assert tis[f"shard.analysis[{index}]"] == "upstream_failed"
    shards = [k for k in tis if k.startswith("shard.analysis[")]
    assert len(shards) == SHARDS
    assert all(tis[k] == "success" for k in shards if k != f"shard.analysis[{index}]")
    specs = first["xcoms"]["plan[-1]:plan_info"]["specs"]
    assert zinc in specs
    zinc_index = sorted(specs).index(zinc)
    other_index = 1 - zinc_index
    # The spec missing a shard is filtered over the others, committed, and its task fails; the other succeeds.
    assert tis[f"filtering[{zinc_index}]"] == "failed" and tis[f"filtering[{other_index}]"] == "success"
    assert tis["report[-1]"] == "failed"  # partial: published, and the run stays failed
    # The failed job's error names SageMaker's reason, the container's and the end of its log.
    (design_error,) = first["errors"][f"shard.design[{index}]"]
    assert f"design of {failed}: SageMaker job bg-e2e-des-{failed}-" in design_error
    assert "FailureReason: AlgorithmError: See job logs for more information (exit code 1)" in design_error
    assert "ExitMessage: injected" in design_error
    assert "injected failure, exit code 1: injected" in design_error.split("log lines:")[1]
    # Each try that starts a job logs its request on one line.
    started = [line for line in first["output"].splitlines() if "Starting design of " in line]
    assert len(started) == SHARDS
    assert all("image boltzgen-sim:latest on 1 x ml.g5.xlarge" in s for s in started)
    assert "ProcessingInputs" not in first["output"]
    # Mapped task instances are labelled by shard, filtering by spec, failed or not.
    labels = {key: value["label"] for key, value in first["times"].items()}
    assert labels[f"shard.design[{index}]"] == failed
    assert (
        labels[f"filtering[{zinc_index}]"] == zinc
        and labels[f"filtering[{other_index}]"] != f"f000{other_index}"
    )

    run_id = first["run_id"]
    safe_run = run_id.replace(":", "_").replace("+", "_")
    run_prefix = f"e2e/campaigns/e2e/runs/{safe_run}/"
    manifest = read_json(local_stack, run_prefix + "run.json")
    assert manifest["status"] == "partial"
    entry = next(s for s in manifest["specs"] if s["spec"] == zinc)
    assert entry["missing_shards"] == [failed] and entry["status"] == "partial"
    assert entry["shards_committed"] == DESIGNS_PER_SPEC - 1 and entry["final_designs"] >= 1
    stem = zinc.removesuffix(".yaml")
    zinc_results = keys(local_stack, f"{run_prefix}results/{stem}/")
    assert any(k.endswith("all_designs_metrics.csv") for k in zinc_results), zinc_results
    partial_attempt = manifest["filter_attempts"][zinc]

    # XCom carries prefixes and counts, never data.
    commit = first["xcoms"]["shard.design[0]:return_value"]
    assert commit["attempt_prefix"].startswith("e2e/cache/design/") and commit["designs_produced"] == 1
    assert len(json.dumps(commit)) < 1000
    for key, value in first["xcoms"].items():
        assert len(json.dumps(value)) < 20_000, key

    after_first = job_names(local_stack)
    first_jobs = jobs_per_stage(after_first - before)
    # 4 stages of each shard, of which the failed shard ran only design, plus one filtering job per spec.
    assert sum(first_jobs.values()) == (SHARDS - 1) * 4 + 1 + 2, first_jobs

    local_stack.set_faults([])
    clear_only_failed(env, run_id)
    second = run(env, "resume", DAG_ID, run_id)
    assert second["state"] == "success", second["tis"]
    committed = next(i for i in range(SHARDS) if i != index)
    assert f"shard.design[{committed}]" not in second["pending"]
    assert f"filtering[{other_index}]" not in second["pending"]
    assert {f"shard.design[{index}]", f"filtering[{zinc_index}]", "report[-1]"} <= set(second["pending"])
    new_jobs = jobs_per_stage(job_names(local_stack) - after_first)
    zinc_filter = specs[zinc]["filter_id"]
    # Only the failed shard's four stages and its spec's filtering start jobs; committed ones do not.
    assert new_jobs == Counter(
        {
            ("design", failed): 1,
            ("inverse_folding", failed): 1,
            ("folding", failed): 1,
            ("analysis", failed): 1,
            ("filtering", zinc_filter): 1,
        }
    ), new_jobs

    manifest = read_json(local_stack, run_prefix + "run.json")
    assert manifest["status"] == "complete"
    assert all(s["final_designs"] >= 1 and not s["missing_shards"] for s in manifest["specs"])
    # The designs planned per spec, one sequence each, all of them analysed.
    designs = (DESIGNS_PER_SPEC, DESIGNS_PER_SPEC)
    assert [(s["designs_expected"], s["designs_produced"]) for s in manifest["specs"]] == [designs, designs]
    # The complete filtering has a key of its own: the partial commit is not reused for it.
    assert manifest["filter_attempts"][zinc] != partial_attempt
    assert run_prefix + "report/index.html" in keys(local_stack, run_prefix + "report/")
    report = second["xcoms"]["report[-1]:return_value"]
    assert report["status"] == "complete" and report["results_prefix"].endswith(f"{safe_run}/results/")


def test_a_run_from_a_later_stage_takes_the_earlier_stages_commits_through_their_sensors(
    env: dict[str, str], local_stack: Any
) -> None:
    # After the run above every shard stage is committed: run analysis and filtering again from
    # the commits of folding.
    before = job_names(local_stack)
    result = run(env, "test", DAG_ID, json.dumps({"stages": ["analysis", "filtering"], "force": True}))
    assert result["state"] == "success", result["tis"]
    new_jobs = jobs_per_stage(job_names(local_stack) - before)
    assert {stage for stage, _ in new_jobs} == {"analysis", "filtering"} and set(new_jobs.values()) == {1}
    assert sum(n for (stage, _), n in new_jobs.items() if stage == "analysis") == SHARDS
    sagemaker = local_stack.client("sagemaker")
    for index in range(SHARDS):
        assert result["tis"][f"shard.folding_committed[{index}]"] == "success"
        handed = result["xcoms"][f"shard.folding_committed[{index}]:return_value"]
        # The sensor hands over folding's commit, whoever made it (here the run before).
        commit = read_json(local_stack, handed["commit_key"])
        assert (
            handed["attempt_prefix"] == commit["attempt_prefix"]
            and handed["committed_by"] != result["run_id"]
        )
        assert handed["designs_produced"] == commit["designs_produced"] == 1
        # ... which the analysis job of that shard reads as its upstream input.
        analysis = result["xcoms"][f"shard.analysis[{index}]:return_value"]["job_name"]
        inputs = sagemaker.describe_processing_job(ProcessingJobName=analysis)["ProcessingInputs"]
        upstream = next(i for i in inputs if i["InputName"] == "upstream")["S3Input"]["S3Uri"]
        assert upstream.rstrip("/") == f"s3://{BUCKET}/{handed['attempt_prefix']}".rstrip("/")


def test_fallback_instance_types_reach_sagemaker_as_instance_preferences(
    env: dict[str, str], local_stack: Any
) -> None:
    path = write_campaign(Path(env["BOLTZGEN_CAMPAIGNS_DIR"]), "e2efb", BUCKET, include="*/1*.yaml")
    fallback = "  preset: small\n  folding: {fallback_instance_types: [ml.g6.xlarge]}\n"
    path.write_text(path.read_text().replace("  preset: small\n", fallback))
    if not instance_preferences_supported():
        # botocore 1.43.56 (Amazon MWAA 3.3.1's) cannot send InstancePreferences: refused before any job.
        with pytest.raises(CampaignError, match="InstancePreferences"):
            load_campaign(path, env)
        return
    before = job_names(local_stack)
    # force: the same specs and settings as the e2e campaign, whose committed outputs would be reused.
    result = run(env, "test", "boltzgen_e2efb", json.dumps({"force": True}))
    assert result["state"] == "success", result["tis"]
    client = local_stack.client("sagemaker")
    started = jobs_per_stage(job_names(local_stack) - before)
    assert sum(n for (stage, _), n in started.items() if stage == "folding") == DESIGNS_PER_SPEC  # one spec
    for name in job_names(local_stack) - before:
        cluster = client.describe_processing_job(ProcessingJobName=name)["ProcessingResources"][
            "ClusterConfig"
        ]
        if "-fold-" in name:
            preferences = [p["InstanceType"] for p in cluster["InstancePreferences"]]
            assert preferences == ["ml.g5.xlarge", "ml.g6.xlarge"] and "InstanceType" not in cluster
            assert cluster["SelectedInstanceType"] == "ml.g5.xlarge"  # the stack has capacity for it
        else:
            assert "InstancePreferences" not in cluster
    for index in range(DESIGNS_PER_SPEC):
        # The commit records the type the job ran on, which the run's cost is priced at.
        attempt = result["xcoms"][f"shard.folding[{index}]:return_value"]["attempt_prefix"]
        commit = read_json(local_stack, attempt.split("/attempts/")[0] + "/_COMMITTED.json")
        assert commit["instance_type"] == "ml.g5.xlarge"


def test_fused_stages_and_packed_filtering_commit_each_stage_and_spec_and_clearing_redoes_only_the_rest(
    env: dict[str, str], local_stack: Any
) -> None:
    path = write_campaign(Path(env["BOLTZGEN_CAMPAIGNS_DIR"]), "e2epk", BUCKET, include="*/[1z]*.yaml")
    text = path.read_text().replace("  pack_filtering: false\n", "  pack_filtering: true\n")
    # A prefix of its own: no output of the other tests' campaigns is reused.
    text = text.replace("  prefix: e2e\n", "  prefix: e2epk\n")
    path.write_text(text.replace("  fuse: none\n", "  fuse: [inverse_folding, folding, analysis]\n"))
    campaign = load_campaign(path, env)
    plan = plan_campaign(campaign, discover_bundles(campaign.specs_root(), campaign.design.include))
    assert [len(pack) for pack in plan.filtering_jobs] == [2]  # the planner packs both specs
    zinc = next(spec for spec in plan.bundles if "denovo_zinc" in spec)
    failed = plan.shards_of(zinc)[1].id
    local_stack.set_faults([{"pattern": f"bg-e2epk-des-{failed}-*", "action": "fail", "message": "injected"}])
    before = job_names(local_stack)
    first = run(env, "test", "boltzgen_e2epk", "{}")
    assert first["state"] == "failed"
    assert first["tis"]["filtering[0]"] == "failed" and "filtering[1]" not in first["tis"]
    after_first = job_names(local_stack)
    started = Counter(stage for stage, _ in jobs_per_stage(after_first - before).elements())
    # Everything of a shard in its design job; one filtering job for both specs.
    assert started == Counter({"design": SHARDS, "filtering": 1}), started
    for index in range(SHARDS):
        if first["tis"][f"shard.design[{index}]"] != "success":
            continue
        design = first["xcoms"][f"shard.design[{index}]:return_value"]
        for stage in ("inverse_folding", "folding", "analysis"):
            # Each stage committed on its own, by the design job, into a folder of its attempt.
            fused = first["xcoms"][f"shard.{stage}[{index}]:return_value"]
            assert fused["cached"] and fused["job_name"] == design["job_name"], stage
            assert fused["attempt_prefix"] == f"{design['attempt_prefix']}_fused/{stage}/"
        assert fused["designs_produced"] == 1
    safe_run = first["run_id"].replace(":", "_").replace("+", "_")
    run_json = f"e2epk/campaigns/e2epk/runs/{safe_run}/run.json"
    manifest = read_json(local_stack, run_json)
    status = {s["spec"]: s["status"] for s in manifest["specs"]}
    assert status == {spec: "partial" if spec == zinc else "complete" for spec in plan.bundles}
    attempts = manifest["filter_attempts"]
    # Each spec committed on its own: one at the job's output, the others in folders of it.
    assert sum("/_fused/filtering/" in attempts[spec] for spec in plan.bundles) == 1

    local_stack.set_faults([])
    clear_only_failed(env, first["run_id"], "boltzgen_e2epk")
    second = run(env, "resume", "boltzgen_e2epk", first["run_id"])
    assert second["state"] == "success", second["tis"]
    new_jobs = jobs_per_stage(job_names(local_stack) - after_first)
    assert Counter(stage for stage, _ in new_jobs.elements()) == Counter({"design": 1, "filtering": 1}), (
        new_jobs
    )
    manifest = read_json(local_stack, run_json)
    assert manifest["status"] == "complete"
    assert all(s["final_designs"] >= 1 and not s["missing_shards"] for s in manifest["specs"])
    # The complete specs kept their commits; only the partial one was filtered again.
    for spec in plan.bundles:
        assert (manifest["filter_attempts"][spec] == attempts[spec]) == (spec != zinc), spec

"""
Rounds on the local stack (dag.test style): a campaign designs until each spec has enough designs
passing BoltzGen's filters, each round a run of the DAG that the previous round's last task
triggered, within a spend cap.

Real Airflow, the SageMaker emulator running the step scripts, S3 on moto server; the BoltzGen
simulator stands in for BoltzGen (a GPU and 6 GB of weights), its pass rate set per spec with
``BOLTZGEN_SIM_PASS_RATE`` (the emulator hands its own ``BOLTZGEN_SIM_*`` to the jobs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.dag_campaigns import PROJECT
from test_e2e import HERE, job_names, jobs_per_stage

from boltzgen_airflow.run.rounds import CAP, REACHED

pytestmark = [pytest.mark.stack, pytest.mark.airflow, pytest.mark.slow]

BUCKET = "bg-rounds"
# Three specs that pass BoltzGen's filters at very different rates.
PASS_RATES = {"1g13prot": 0.9, "tpp4": 0.4, "zinc_finger": 0.15}
UNTIL_PASSING = 3
MAX_ROUNDS = 4
CAMPAIGN = """\
name: {name}
retries: 0
aws:
  bucket: {bucket}
  prefix: {prefix}
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "*/*.yaml"
  num_designs: 4
  budget: 2
  diffusion_batch_size: 1
  until_passing: {until}
  max_rounds: {rounds}
{cap}scaling:
  preset: small
sharding:
  target_hours: 0.2
  pack_filtering: false
# One job per shard stage and one filtering job per spec, as the tests count them.
stages:
  fuse: none
"""


def write(folder: Path, name: str, prefix: str, cap: float | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        CAMPAIGN.format(
            name=name,
            bucket=BUCKET,
            prefix=prefix,
            specs=PROJECT / "include" / "specs",
            until=UNTIL_PASSING,
            rounds=MAX_ROUNDS,
            cap=f"  max_cost_usd: {cap}\n" if cap is not None else "",
        )
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sagemaker_emulator.stack import LocalStack, free_ports

    rates = ",".join(f"{stem}={rate}" for stem, rate in PASS_RATES.items())
    previous = os.environ.get("BOLTZGEN_SIM_PASS_RATE")
    os.environ["BOLTZGEN_SIM_PASS_RATE"] = rates  # the emulator is started with it, hands it to jobs
    stack = LocalStack(tmp_path_factory.mktemp("stack"), *free_ports(2), simulated=True, buckets=[BUCKET])
    try:
        stack.start(timeout=180)
    finally:
        if previous is None:
            os.environ.pop("BOLTZGEN_SIM_PASS_RATE")
        else:
            os.environ["BOLTZGEN_SIM_PASS_RATE"] = previous
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def env(stack: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    campaigns = tmp_path_factory.mktemp("campaigns")
    write(campaigns, "rounds", "rounds")
    return {
        **os.environ,
        **stack.env(),
        "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
        "BOLTZGEN_CHECK_INTERVAL": "1",
    }


def run(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"run_dag.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def read_json(stack: Any, key: str) -> Any:
    return json.loads(stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def safe(run_id: str) -> str:
    return run_id.replace(":", "_").replace("+", "_")


def test_rounds_reach_until_passing_for_every_spec_without_repeating_a_shard_job(
    env: dict[str, str], stack: Any
) -> None:
    before = job_names(stack)
    runs = run(env, "rounds", "boltzgen_rounds", "{}")["runs"]
    assert all(r["state"] == "success" for r in runs), [(r["run_id"], r["tis"], r["errors"]) for r in runs]
    assert 2 <= len(runs) <= MAX_ROUNDS
    first, last = runs[0], runs[-1]
    # Each round is a run of its own, triggered by the previous one's last task.
    assert [r["run_id"] for r in runs[1:]] == [
        f"round{n}__{first['run_id']}" for n in range(2, len(runs) + 1)
    ]
    assert all(r["tis"]["start_next_round[-1]"] == "success" for r in runs[:-1])
    assert last["tis"]["start_next_round[-1]"] == "skipped"

    ledger = read_json(stack, f"rounds/campaigns/rounds/runs/{safe(first['run_id'])}/rounds.json")
    assert [r["round"] for r in ledger["rounds"]] == list(range(1, len(runs) + 1))
    final = ledger["rounds"][-1]
    assert all(n >= UNTIL_PASSING for n in final["passing"].values()), final
    assert set(ledger["stopped"].values()) == {REACHED}
    # The easy spec stops after round 1; the hard one takes more designs than the others.
    easy = next(s for s in final["designs"] if "1g13" in s)
    hard = next(s for s in final["designs"] if "zinc" in s)
    assert final["designs"][easy] == 4 and final["designs"][hard] > final["designs"][easy]
    assert all(r["new"][easy] == 0 for r in ledger["rounds"][1:])

    # Every shard stage ran exactly one job over all rounds: earlier rounds' shards are cache hits.
    started = jobs_per_stage(job_names(stack) - before)
    shard_jobs = {k: n for k, n in started.items() if k[0] != "filtering"}
    assert set(shard_jobs.values()) == {1}, shard_jobs
    shards = {shard for _, shard in shard_jobs}
    assert len(runs[-1]["xcoms"]["plan[-1]:plan_info"]["specs"]) == 3
    assert len([k for k in last["tis"] if k.startswith("shard.analysis[")]) == len(shards)

    # The final designs of each spec are BoltzGen's selection over the designs of all its rounds.
    manifest = read_json(stack, f"rounds/campaigns/rounds/runs/{safe(last['run_id'])}/run.json")
    assert manifest["status"] == "complete"
    for spec, attempt in manifest["filter_attempts"].items():
        filtered = read_json(stack, attempt + "_manifest.json")
        ranges = sorted((i["start"], i["count"]) for i in filtered["items"])
        covered = [d for start, count in ranges for d in range(start, start + count)]
        assert covered == list(range(final["designs"][spec])), (spec, ranges)
    rows = {s["spec"]: s for s in manifest["rounds"]["specs"]}
    assert rows[hard]["rounds"] >= 2 and rows[easy]["rounds"] == 1
    assert all(r["passing"] >= UNTIL_PASSING and r["stopped"] == REACHED for r in rows.values())
    assert rows[hard]["pass_rate"] < rows[easy]["pass_rate"]


def tiny_time_model(folder: Path) -> Path:
    """The packaged time model a thousand times faster and without provisioning: jobs of the simulator
    then cost more than their estimates, as slow jobs do on AWS, so the cap is reached while a run goes on."""
    import yaml

    model = yaml.safe_load((PROJECT / "include" / "configs" / "stage_time_model.yaml").read_text())
    for table in ("gpu_seconds_per_design", "cpu_seconds_per_design"):
        model[table] = {k: [v / 1000 for v in values] for k, values in model[table].items()}
    model["filtering_seconds"] = {"base": 0.01, "per_design": 0.0}
    model["provisioning_seconds_per_job"] = 0
    path = folder / "tiny_time_model.yaml"
    path.write_text(yaml.safe_dump(model))
    return path


def own_shard_jobs(stack: Any, run_prefix: str) -> tuple[list[float], float]:
    """The cost of each shard stage job the run committed itself, in the order they started (its
    commits' job times at the plan's prices), and the largest estimate of a job of the run."""
    document = read_json(stack, run_prefix + "shards.json")
    run_id, jobs, estimate = None, [], 0.0
    for shard in document["shards"]:
        cap = shard["spend_cap"]
        run_id = cap["run_id"]
        estimate = max([estimate, *shard["stage_usd"].values()])
        for target in shard["stages"].values():
            try:
                record = read_json(stack, target["commit_key"])
            except stack.client("s3").exceptions.NoSuchKey:
                continue
            if record.get("run_id") != run_id:
                continue  # carried from an earlier round: costs nothing
            start, end = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
            price = cap["prices"][target["resources"]["instance_type"]]
            jobs.append((start, (end - start).total_seconds() / 3600 * price))
    return [cost for _, cost in sorted(jobs)], estimate


def test_a_low_spend_cap_stops_new_jobs_and_ends_with_partial_results_and_why(
    env: dict[str, str], stack: Any
) -> None:
    folder = Path(env["BOLTZGEN_CAMPAIGNS_DIR"])
    path = write(folder, "capped", "capped")
    text = path.read_text().replace('include: "*/*.yaml"', 'include: "denovo*/*.yaml"')
    model = tiny_time_model(folder)
    text = text.replace("target_hours: 0.2", f"target_hours: 0.00001\n  time_model: {model}")
    skip = "diffusion_batch_size: 1\n  skip_inverse_folding: true\n"
    text = text.replace("diffusion_batch_size: 1\n", skip)
    path.write_text(text)  # the hard spec alone, one design per shard, three stages
    before = job_names(stack)
    first = run(env, "test", "boltzgen_capped", json.dumps({"num_designs": 2, "max_rounds": 1}))
    assert first["state"] == "success", first["tis"]
    ledger_key = f"capped/campaigns/capped/runs/{safe(first['run_id'])}/rounds.json"
    spent = read_json(stack, ledger_key)["rounds"][0]["spend_usd"]
    round_one = job_names(stack) - before
    per_job = spent / len(round_one)
    # Round 2 by hand, as the next round would start, with a cap that pays for about two more jobs.
    cap = round(spent + 2.5 * per_job, 6)
    conf = {
        "round": 2,
        "campaign_run_id": first["run_id"],
        "num_designs": 2,
        "designs_per_spec": {"denovo_zinc_finger_against_dna/zinc_finger.yaml": 5},
        "max_rounds": 2,
        "max_cost_usd": cap,
    }
    second = run(env, "test", "boltzgen_capped", json.dumps(conf))
    assert second["state"] == "failed"
    started = jobs_per_stage(job_names(stack) - before - round_one)
    shard_jobs = sum(n for (stage, _), n in started.items() if stage != "filtering")
    # Three new shards of three stages were planned; the cap stopped the jobs past it.
    assert 1 <= shard_jobs < 9, started
    costs, estimate = own_shard_jobs(stack, f"capped/campaigns/capped/runs/{safe(second['run_id'])}/")
    assert len(costs) == shard_jobs, (costs, started)
    # dag.test runs one job at a time: every job started while the spend before it was within the
    # cap, and the first refused one would have passed it.
    assert sum(costs[:-1]) <= cap - spent + 1e-9, (costs, estimate, cap, spent)
    assert sum(costs) + estimate > cap - spent - 1e-9, (costs, estimate, cap, spent)
    refused = [k for k, v in second["tis"].items() if k.startswith("shard.") and v == "failed"]
    assert refused and second["tis"]["report[-1]"] == "failed"
    manifest = read_json(stack, f"capped/campaigns/capped/runs/{safe(second['run_id'])}/run.json")
    assert manifest["status"] == "partial"
    [spec] = manifest["specs"]
    # Partial results: the spec is filtered over round 1's shards and whatever round 2 committed.
    assert spec["final_designs"] >= 1 and spec["designs_produced"] >= 2 and spec["missing_shards"]
    reason = manifest["rounds"]["reason"]
    assert reason.startswith("spend cap:") and f"${cap:.2f}" in reason, reason
    assert manifest["rounds"]["specs"][0]["stopped"] == CAP

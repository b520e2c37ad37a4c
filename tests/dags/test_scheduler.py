"""
What users get from the real Airflow scheduler (not ``dag.test``): scheduled runs that re-discover
specs and reuse committed shard stages, and ``airflow backfill create --reprocess-behavior failed``
that re-launches SageMaker jobs only for shard stages that are not committed.

Everything is real: the API server, scheduler (LocalExecutor), DAG processor and triggerer as
processes, the SageMaker emulator running the step scripts, S3 and CloudWatch Logs on moto server.
The only stand-in is the BoltzGen simulator (BoltzGen needs a GPU and 6 GB of weights). Promises are
checked by counting the processing jobs the emulator received.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow_services import AirflowServices
from conftest import PROJECT, _free_port
from stack_jobs import cache_entry, list_jobs, stage_shard

pytestmark = [
    pytest.mark.stack,
    pytest.mark.airflow,
    pytest.mark.slow,
    pytest.mark.scheduler,
    pytest.mark.timeout(1800),
]

CAMPAIGN = "sched"
DAG_ID = f"boltzgen_{CAMPAIGN}"
BUCKET = "bg-e2e"  # created by the local_stack fixture; this campaign keeps to its own prefix
PREFIX = "sched"
# StageJobTrigger looks at a job first one interval after deferring, so a simulated job that ends at
# once does not fire its trigger before the scheduler has seen the deferring try exit (Airflow 3.3.2
# fails the task then, apache/airflow#71580).
CHECK_INTERVAL = "10"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
CAMPAIGN_YAML = """\
name: {name}
description: Scheduled campaign of the scheduler tests.
owner: tests
# Retries: a task the scheduler fails for a missed deferral (see CHECK_INTERVAL) takes over its
# completed job on retry, without starting another.
retries: 2
retry_delay_seconds: 3
schedule: "@daily"
start_date: {start}
catchup: false
max_active_runs: 1
aws:
  bucket: {bucket}
  prefix: {prefix}
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "*/*.yaml"
  protocol: protein-anything
  num_designs: 2
  budget: 2
  diffusion_batch_size: 1
  skip_inverse_folding: true
scaling:
  preset: small
sharding:
  target_hours: 0.01
  pack_filtering: false
# One job per shard stage and one filtering job per spec, as the tests count them.
stages:
  fuse: none
"""


def add_spec(specs: Path, folder: str, name: str | None = None) -> None:
    """Copy an example spec folder of ``include/specs`` into the campaign's specs folder."""
    shutil.copytree(PROJECT / "include" / "specs" / folder, specs / (name or folder))


@pytest.fixture(scope="module")
def airflow(
    local_stack: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AirflowServices, Path]]:
    """A running Airflow whose one campaign, over one spec, is unpaused (so its scheduled run starts)."""
    root = tmp_path_factory.mktemp("scheduler")
    specs = root / "specs"
    specs.mkdir()
    add_spec(specs, "denovo_zinc_finger_against_dna")
    campaigns = root / "campaigns"
    campaigns.mkdir()
    campaign = campaigns / f"{CAMPAIGN}.yaml"
    start = (TODAY - timedelta(days=6)).isoformat()
    campaign.write_text(
        CAMPAIGN_YAML.format(name=CAMPAIGN, start=start, bucket=BUCKET, prefix=PREFIX, specs=specs)
    )
    services = AirflowServices(
        root / "airflow",
        _free_port(),
        {
            **local_stack.env(),
            "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
            "BOLTZGEN_CHECK_INTERVAL": CHECK_INTERVAL,
        },
    )
    try:
        services.start()
        services.python(
            "from boltzgen_airflow.campaign.loading import load_campaign\n"
            "from boltzgen_airflow.dag.pools import ensure_pools\n"
            f"ensure_pools([load_campaign({str(campaign)!r})])\n"
        )
        services.wait_for(
            lambda: services.query("SELECT 1 FROM dag WHERE dag_id = ?", DAG_ID),
            120,
            f"{DAG_ID} to be parsed",
        )
        services.cli("dags", "unpause", DAG_ID)
        yield services, specs
    finally:
        services.stop()
        local_stack.set_faults([])


def jobs(stack: Any, status: str | None = None) -> list[str]:
    """Names of the campaign's processing jobs the emulator received (optionally of one status)."""
    return list(list_jobs(stack, CAMPAIGN, status))


def stage_shards(names: list[str]) -> Counter[tuple[str, str]]:
    """How many of the jobs ran each (stage, shard)."""
    return Counter(stage_shard(name) for name in names)


def shard_stages(*shards: str) -> set[tuple[str, str]]:
    """Every per-shard stage of these shards."""
    return {(stage, shard) for shard in shards for stage in ("design", "folding", "analysis")}


def wait_finished(services: AirflowServices, run_ids: list[str], timeout: float = 900) -> dict[str, str]:
    """Wait until these runs are success or failed; run id -> state."""

    def finished() -> dict[str, str] | None:
        states = {r["run_id"]: r["state"] for r in services.runs(DAG_ID) if r["run_id"] in run_ids}
        done = all(states.get(run) in ("success", "failed") for run in run_ids)
        return states if done else None

    return services.wait_for(finished, timeout, f"runs {run_ids} to finish")


def wait_idle(services: AirflowServices, timeout: float = 900) -> None:
    """Wait until no run of the campaign is queued or running."""
    services.wait_for(
        lambda: all(r["state"] in ("success", "failed") for r in services.runs(DAG_ID)),
        timeout,
        "the campaign to be idle",
    )


def s3_keys(stack: Any, prefix: str) -> list[str]:
    client = stack.client("s3")
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return found


def run_manifest(stack: Any, run_id: str) -> dict[str, Any]:
    from boltzgen_airflow.storage.layout import Layout

    key = Layout(BUCKET, PREFIX).run_manifest_key(CAMPAIGN, run_id)
    body = stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return dict(json.loads(body))


def test_scheduled_runs_rediscover_specs_and_reuse_committed_stages(
    airflow: tuple[AirflowServices, Path], local_stack: Any
) -> None:
    services, specs = airflow
    started = time.monotonic()
    # Unpausing a scheduled campaign (catchup false) makes the scheduler start its latest run.
    first = services.wait_for(
        lambda: [r["run_id"] for r in services.runs(DAG_ID) if r["run_type"] == "scheduled"],
        120,
        "the scheduled run",
    )[0]
    assert wait_finished(services, [first]) == {first: "success"}, services.task_states(DAG_ID, first)
    first_jobs = jobs(local_stack)
    # One spec, two designs, one design per shard: two shards x four stages, one filtering.
    assert stage_shards(first_jobs) == Counter(
        {**dict.fromkeys(shard_stages("s0000", "s0001"), 1), ("filtering", "f0000"): 1}
    )
    print(f"scheduled run: {time.monotonic() - started:.0f}s")

    # A spec added between runs is found by the next run, which starts jobs only for its shards.
    add_spec(specs, "vanilla_protein")
    started = time.monotonic()
    services.cli("dags", "trigger", DAG_ID)
    second = services.wait_for(
        lambda: [r["run_id"] for r in services.runs(DAG_ID) if r["run_type"] == "manual"],
        60,
        "the second run",
    )[0]
    assert wait_finished(services, [second]) == {second: "success"}, services.task_states(DAG_ID, second)
    new_jobs = sorted(set(jobs(local_stack)) - set(first_jobs))
    # Shard ids follow the plan's order (longest first), so they are read from the run's manifest;
    # the new spec's filter is f0001 (specs sorted by name). The first spec's shards and its
    # filtering (same committed analyses) are cache hits: no job writes into their cache entries.
    new_shards = [
        s["shard"]
        for s in run_manifest(local_stack, second)["shards"]
        if s["specs"] == ["vanilla_protein/1g13prot.yaml"]
    ]
    assert len(new_shards) == 2
    assert stage_shards(new_jobs) == Counter(
        {**dict.fromkeys(shard_stages(*new_shards), 1), ("filtering", "f0001"): 1}
    ), new_jobs
    first_entries = {cache_entry(local_stack, name) for name in first_jobs}
    assert not first_entries & {cache_entry(local_stack, name) for name in new_jobs}
    print(f"second run: {time.monotonic() - started:.0f}s")

    # Each run has its own run prefix and manifest; the second covers both specs.
    one, two = run_manifest(local_stack, first), run_manifest(local_stack, second)
    assert one["results_prefix"] != two["results_prefix"]
    assert [s["spec"] for s in one["specs"]] == ["denovo_zinc_finger_against_dna/zinc_finger.yaml"]
    # By name on either database (PostgreSQL's JSONB XCom keeps no key order).
    assert [s["spec"] for s in two["specs"]] == [
        "denovo_zinc_finger_against_dna/zinc_finger.yaml",
        "vanilla_protein/1g13prot.yaml",
    ]
    assert one["status"] == two["status"] == "complete"
    for manifest in (one, two):
        results = manifest["results_prefix"].removeprefix(f"s3://{BUCKET}/")
        assert s3_keys(local_stack, results), manifest["results_prefix"]


def test_backfill_reprocessing_failed_runs_relaunches_only_uncommitted_stages(
    airflow: tuple[AirflowServices, Path], local_stack: Any
) -> None:
    services, specs = airflow
    wait_idle(services)
    # Only a spec no run has seen: its two shards are s0000 and s0001, its filter f0000.
    for folder in specs.iterdir():
        shutil.rmtree(folder)
    add_spec(specs, "vanilla_protein", "copy_of_vanilla")
    before = set(jobs(local_stack))
    local_stack.set_faults(
        [{"pattern": f"bg-{CAMPAIGN}-des-s0001-*", "action": "fail", "message": "injected"}]
    )
    dates = [
        "--from-date",
        (TODAY - timedelta(days=5)).isoformat(),
        "--to-date",
        (TODAY - timedelta(days=4)).isoformat(),
    ]

    started = time.monotonic()
    services.cli(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        *dates,
        "--max-active-runs",
        "1",
        landed=_backfills(services, 1),
    )
    backfill_runs = services.wait_for(
        lambda: [r["run_id"] for r in services.runs(DAG_ID) if r["run_type"] == "backfill"],
        60,
        "backfill runs",
    )
    assert len(backfill_runs) == 2
    states = wait_finished(services, backfill_runs, timeout=900)
    assert set(states.values()) == {"failed"}, states
    # A backfill is complete once the scheduler has seen all its runs finish; only then may the
    # next one be created for the DAG.
    services.wait_for(
        lambda: (
            services.query("SELECT 1 FROM backfill WHERE dag_id = ? AND completed_at IS NULL", DAG_ID) == []
        ),
        60,
        "the backfill to complete",
    )
    failed_round = sorted(set(jobs(local_stack)) - before)
    print(f"backfill with a failing shard: {time.monotonic() - started:.0f}s")
    # Both runs tried the failing design three times (a try and two retries); the good shard and the
    # partial filtering ran once.
    assert stage_shards(failed_round) == Counter(
        {**dict.fromkeys(shard_stages("s0000"), 1), ("design", "s0001"): 6, ("filtering", "f0000"): 1}
    ), failed_round
    assert set(jobs(local_stack, "Failed")) & set(failed_round) == {
        n for n in failed_round if stage_shard(n) == ("design", "s0001")
    }

    local_stack.set_faults([])
    started = time.monotonic()
    services.cli(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        *dates,
        "--max-active-runs",
        "1",
        "--reprocess-behavior",
        "failed",
        landed=_backfills(services, 2),
    )
    # Reprocessing failed runs clears them in place (same run ids, same run prefixes).
    services.wait_for(
        lambda: any(r["state"] in ("queued", "running") for r in services.runs(DAG_ID)),
        60,
        "the cleared runs",
    )
    assert sorted(r["run_id"] for r in services.runs(DAG_ID) if r["run_type"] == "backfill") == sorted(
        backfill_runs
    )
    states = wait_finished(services, backfill_runs, timeout=900)
    assert set(states.values()) == {"success"}, {
        run: services.task_states(DAG_ID, run) for run in backfill_runs
    }
    retried = sorted(set(jobs(local_stack)) - before - set(failed_round))
    print(f"backfill reprocessing the failed runs: {time.monotonic() - started:.0f}s")
    # Only the failed shard's stages, and its spec's filtering over both shards, started jobs.
    assert stage_shards(retried) == Counter(
        {**dict.fromkeys(shard_stages("s0001"), 1), ("filtering", "f0000"): 1}
    ), retried
    # Across every run of both tests: each committed stage output came from exactly one job.
    completed = Counter(cache_entry(local_stack, name) for name in jobs(local_stack, "Completed"))
    assert completed and {key: n for key, n in completed.items() if n != 1} == {}
    for run in backfill_runs:
        assert run_manifest(local_stack, run)["status"] == "complete"


ROUNDS_CAMPAIGN = "schedr"
ROUNDS_DAG = f"boltzgen_{ROUNDS_CAMPAIGN}"
# The one spec of the rounds campaign, which BOLTZGEN_SIM_PASS_RATE (set on the stack) never passes:
# every round falls short, so the campaign run takes exactly max_rounds rounds.
ROUNDS_SPEC = "roundspec"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The stack of tests/dags/conftest.py, its simulator failing every design of ``ROUNDS_SPEC``."""
    import os

    from sagemaker_emulator.stack import LocalStack, free_ports

    os.environ["BOLTZGEN_SIM_PASS_RATE"] = f"{ROUNDS_SPEC}=0"  # the emulator hands it to its jobs
    try:
        stack = LocalStack(tmp_path_factory.mktemp("stack"), *free_ports(2), simulated=True, buckets=[BUCKET])
        stack.start(timeout=180)
    finally:
        os.environ.pop("BOLTZGEN_SIM_PASS_RATE")
    try:
        yield stack
    finally:
        stack.stop()


def test_rounds_run_one_after_another_and_a_cleared_round_plans_the_next(
    airflow: tuple[AirflowServices, Path], local_stack: Any
) -> None:
    services, specs = airflow
    wait_idle(services)
    started = time.monotonic()
    root = specs.parent
    folder = root / "round_specs" / ROUNDS_SPEC
    shutil.copytree(PROJECT / "include" / "specs" / "vanilla_protein", folder)
    (folder / "1g13prot.yaml").rename(folder / f"{ROUNDS_SPEC}.yaml")
    text = CAMPAIGN_YAML.format(
        name=ROUNDS_CAMPAIGN, start=TODAY.isoformat(), bucket=BUCKET, prefix="schedr", specs=folder.parent
    )
    text = text.replace("retries: 2", "retries: 0").replace('schedule: "@daily"', "schedule: null")
    text = text.replace(
        "num_designs: 2\n  budget: 2", "num_designs: 1\n  budget: 1\n  until_passing: 1\n  max_rounds: 3"
    )
    text = text.replace("target_hours: 0.01", "target_hours: 0.5")
    (root / "campaigns" / f"{ROUNDS_CAMPAIGN}.yaml").write_text(text)
    services.wait_for(
        lambda: services.query("SELECT 1 FROM dag WHERE dag_id = ?", ROUNDS_DAG), 180, f"{ROUNDS_DAG} parsed"
    )
    services.cli("dags", "unpause", ROUNDS_DAG)
    # Round 2's new shard (round 1 made s0000) fails its design job once.
    local_stack.set_faults([{"pattern": f"bg-{ROUNDS_CAMPAIGN}-des-s0001-*", "action": "fail", "times": 1}])
    services.cli("dags", "trigger", ROUNDS_DAG)

    def runs() -> list[dict[str, Any]]:
        return services.runs(ROUNDS_DAG)

    first = services.wait_for(lambda: [r["run_id"] for r in runs()], 60, "round 1")[0]
    second = f"round2__{first}"
    services.wait_for(
        lambda: {r["run_id"]: r["state"] for r in runs()}.get(second) == "failed", 900, "round 2 to fail"
    )
    states = {r["run_id"]: r["state"] for r in runs()}
    assert states == {first: "success", second: "failed"}, states
    assert services.task_states(ROUNDS_DAG, first)["start_next_round[-1]"] == "success"
    tis = services.task_states(ROUNDS_DAG, second)
    assert tis["report[-1]"] == "failed" and tis["start_next_round[-1]"] == "upstream_failed", tis
    before_clear = set(list_jobs(local_stack, ROUNDS_CAMPAIGN))
    print(f"rounds 1 and a failed round 2: {time.monotonic() - started:.0f}s")

    local_stack.set_faults([])
    started = time.monotonic()
    services.cli("dags", "clear", ROUNDS_DAG, "--run-id", second, "--only-failed", "--yes")
    third = f"round3__{first}"
    services.wait_for(
        lambda: {r["run_id"]: r["state"] for r in runs()}.get(third) in ("success", "failed"), 900, "round 3"
    )
    states = {r["run_id"]: r["state"] for r in runs()}
    assert states == {first: "success", second: "success", third: "success"}, states
    print(f"clearing round 2, and round 3: {time.monotonic() - started:.0f}s")

    all_jobs = list(list_jobs(local_stack, ROUNDS_CAMPAIGN))
    after_clear = [n for n in all_jobs if n not in before_clear]
    # Clearing round 2 re-ran only its failed shard (and its spec's filtering); round 3 added s0002.
    assert {stage_shard(n) for n in after_clear} == {
        *shard_stages("s0001", "s0002"),
        ("filtering", "f0000"),
    }, after_clear
    shard_jobs = Counter(stage_shard(n) for n in all_jobs if stage_shard(n)[0] != "filtering")
    # Each shard stage ran once, the failed design twice: earlier rounds' shards are cache hits.
    assert shard_jobs == Counter(
        {**dict.fromkeys(shard_stages("s0000", "s0001", "s0002"), 1), ("design", "s0001"): 2}
    ), shard_jobs

    from boltzgen_airflow.storage.layout import Layout

    key = Layout(BUCKET, "schedr").rounds_key(ROUNDS_CAMPAIGN, first)
    ledger = json.loads(local_stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())
    spec = f"{ROUNDS_SPEC}/{ROUNDS_SPEC}.yaml"
    # Round 3 was sized from the completed round 2: 4 designs made, none passing.
    assert [(r["run_id"], r["designs"][spec], r["made"].get(spec)) for r in ledger["rounds"]] == [
        (first, 1, 1),
        (second, 4, 4),
        (third, 14, 14),
    ], ledger["rounds"]
    assert ledger["stopped"] == {spec: "max rounds"}


# Two campaigns, the same specs and settings under one prefix: the first triggered by hand, the
# second on a daily schedule (its latest run starts when it is unpaused) with a backfill beside it.
TWINS = ("twin", "twinb")
TWINS_PREFIX = "twins"
TWIN_BACKFILL_DAY = TODAY - timedelta(days=2)


def _twin_campaigns(root: Path) -> list[Path]:
    specs = root / "twin-specs"
    if not specs.exists():
        specs.mkdir()
        add_spec(specs, "vanilla_protein")
    paths = []
    for name in TWINS:
        start = TODAY if name == TWINS[0] else TODAY - timedelta(days=3)
        text = CAMPAIGN_YAML.format(
            name=name, start=start.isoformat(), bucket=BUCKET, prefix=TWINS_PREFIX, specs=specs
        )
        text = text.replace("max_active_runs: 1", "max_active_runs: 2")
        if name == TWINS[0]:
            text = text.replace('schedule: "@daily"', "schedule: null")
        paths.append(root / f"{name}.yaml")
        paths[-1].write_text(text)
    return paths


def test_runs_and_campaigns_wanting_one_shard_stage_at_once_pay_for_one_job(
    airflow: tuple[AirflowServices, Path], local_stack: Any
) -> None:
    import concurrent.futures

    services, _ = airflow
    wait_idle(services)
    campaigns = Path(services.env["BOLTZGEN_CAMPAIGNS_DIR"])
    paths = _twin_campaigns(campaigns)
    services.python(
        "from boltzgen_airflow.campaign.loading import load_campaign\n"
        "from boltzgen_airflow.dag.pools import ensure_pools\n"
        f"ensure_pools([load_campaign(p) for p in {[str(p) for p in paths]!r}])\n"
    )
    dag_ids = [f"boltzgen_{name}" for name in TWINS]
    for dag_id in dag_ids:
        services.wait_for(
            lambda dag_id=dag_id: services.query("SELECT 1 FROM dag WHERE dag_id = ?", dag_id),
            120,
            f"{dag_id} to be parsed",
        )
        services.cli("dags", "unpause", dag_id)
    started = time.monotonic()
    # Two runs of one campaign triggered together, beside the twin's scheduled run (started by its
    # unpausing) and a backfill of the twin over an earlier day.
    manual, scheduled = dag_ids
    day = ["--from-date", TWIN_BACKFILL_DAY.isoformat(), "--to-date", TWIN_BACKFILL_DAY.isoformat()]
    backfill = ("backfill", "create", "--dag-id", scheduled, *day, "--max-active-runs", "1")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sent = [pool.submit(services.cli, "dags", "trigger", manual) for _ in range(2)]
        sent.append(pool.submit(services.cli, *backfill, landed=_backfills(services, 1, scheduled)))
        for future in sent:
            future.result()
    want = {manual: ["manual", "manual"], scheduled: ["backfill", "scheduled"]}

    def runs_of(dag_id: str) -> list[str] | None:
        found = services.runs(dag_id)
        return [r["run_id"] for r in found] if sorted(r["run_type"] for r in found) == want[dag_id] else None

    runs = {
        dag_id: services.wait_for(lambda dag_id=dag_id: runs_of(dag_id), 60, f"the runs of {dag_id}")
        for dag_id in dag_ids
    }
    for dag_id, run_ids in runs.items():
        states = services.wait_for(
            lambda dag_id=dag_id, run_ids=run_ids: (
                (states := {r["run_id"]: r["state"] for r in services.runs(dag_id) if r["run_id"] in run_ids})
                and all(s in ("success", "failed") for s in states.values())
                and states
            ),
            900,
            f"the runs of {dag_id} to finish",
        )
        assert set(states.values()) == {"success"}, {
            run: services.task_states(dag_id, run) for run in run_ids
        }
    print(f"four runs (manual x2, scheduled, backfill) of one shard set: {time.monotonic() - started:.0f}s")

    # The emulator received one job per shard stage and one filtering job, for all four runs.
    names = [name for campaign in TWINS for name in list_jobs(local_stack, campaign)]
    assert stage_shards(names) == Counter(
        {**dict.fromkeys(shard_stages("s0000", "s0001"), 1), ("filtering", "f0000"): 1}
    ), names
    # Every run's final designs are the same files.
    from boltzgen_airflow.storage.layout import Layout

    results = set()
    for dag_id, run_ids in runs.items():
        campaign = dag_id.removeprefix("boltzgen_")
        for run_id in run_ids:
            key = Layout(BUCKET, TWINS_PREFIX).run_manifest_key(campaign, run_id)
            manifest = json.loads(local_stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())
            assert manifest["status"] == "complete"
            prefix = manifest["results_prefix"].removeprefix(f"s3://{BUCKET}/")
            listing = local_stack.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
            results.add(frozenset((o["Key"].removeprefix(prefix), o["ETag"]) for o in listing))
    assert len(results) == 1 and next(iter(results)), results


def _backfills(services: AirflowServices, count: int, dag_id: str = DAG_ID) -> Callable[[], bool]:
    """Whether the DAG has ``count`` backfills (a ``backfill create`` refused mid-way may have made one)."""
    return lambda: len(services.query("SELECT id FROM backfill WHERE dag_id = ?", dag_id)) >= count

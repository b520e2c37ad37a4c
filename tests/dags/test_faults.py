"""
Faults end to end through the real Airflow scheduler and triggerer (``make test-faults``).

One deployment (API server, scheduler, DAG processor, triggerer; SQLite and the LocalExecutor, or
with ``--engine celery`` PostgreSQL, Redis and two Celery workers) runs a campaign per scenario
against the local stack (SageMaker emulator, S3 and CloudWatch Logs on moto server). The emulator
injects job faults by job name; S3 faults come from a proxy between Airflow's tasks and moto
(``s3_fault_proxy``); the scheduler, the triggerer, the emulator, a Celery worker and PostgreSQL are
killed for real (the last two only on the Celery deployment).
The only stand-in is the BoltzGen simulator (BoltzGen needs a GPU), whose designs depend only on
their ids, so a clean run of the same spec is the reference for the designs of a faulted one.

Every scenario adds a row (faults injected, runs completed, jobs duplicated, designs lost) to a
table printed at the end, the one in docs/reliability.md.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow_services import AirflowServices, selected_engine
from conftest import PROJECT, _free_port
from s3_fault_proxy import S3Fault, S3FaultProxy
from stack_jobs import cache_entry, list_jobs, stage_shard

from boltzgen_airflow.storage.commits import verify_attempt
from boltzgen_airflow.storage.layout import Layout

pytestmark = [
    pytest.mark.stack,
    pytest.mark.airflow,
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.timeout(1500),
]

BUCKET = "bg-e2e"  # created by the local_stack fixture; every campaign keeps to its own prefix
SHARD_STAGES = ("design", "folding", "analysis")
CAMPAIGN_YAML = """\
name: {name}
description: Fault scenario {name}.
owner: tests
retries: {retries}
retry_delay_seconds: 3
max_active_runs: {max_active_runs}
aws:
  bucket: {bucket}
  prefix: {name}
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "*/*.yaml"
  protocol: protein-anything
  num_designs: {designs}
  budget: 2
  diffusion_batch_size: 1
  skip_inverse_folding: true
scaling:
  preset: small
  design: {{max_parallel_jobs: 4}}
  folding: {{max_parallel_jobs: 4}}
  analysis: {{max_parallel_jobs: 4}}
  filtering: {{max_parallel_jobs: 2}}
sharding:
  target_hours: 0.01
  pack_filtering: false
# One job per shard stage and one filtering job per spec, as the tests count them.
stages:
  fuse: none
"""
# Stage triggers look at their job one interval after deferring. A scheduler slower than that to
# handle the deferring try's exit fails the task when its trigger fires (Airflow 3.3.2,
# apache/airflow#71580), which happens on a loaded 2-core machine, and the retry that follows can be
# failed by the same bookkeeping. Every campaign therefore retries a few times: a retry takes over
# its earlier try's completed job rather than starting another, which is what these tests count.
# name -> (designs, retries). One design per shard, so designs = shards.
CAMPAIGNS = {
    "fpart": (5, 3),  # a fifth of the shard jobs fail (their retries too)
    "fclean": (5, 3),  # the same spec and designs without faults: the reference
    "fstop": (2, 3),  # a job stopped mid-run
    "fthrottle": (2, 3),  # CreateProcessingJob throttled and over quota
    "fcommit": (2, 3),  # S3 errors while committing
    "fkill": (4, 3),  # scheduler and triggerer killed
    "fhost": (2, 3),  # emulator restarted mid-job
    "fworker": (4, 3),  # a Celery worker killed while it runs stage tasks
    "fpg": (4, 3),  # PostgreSQL restarted mid-run
}
STARTED_TOGETHER = ("fpart", "fclean", "fstop", "fthrottle", "fcommit")
# Campaigns with two runs at once, both wanting the same shard stages.
TWO_RUNS = ("fkill", "fworker")
# A task message a killed Celery worker had reserved is sent again after 2 minutes in queued, not
# 10 (Redis gives an unacknowledged message back only after its visibility timeout, a day).
CELERY_ENV = {"AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120"} if selected_engine() == "celery" else {}
CHECK_INTERVAL = "10"


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    faults: int = 0
    runs: int = 0
    completed: int = 0
    duplicated: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Deployment:
    services: AirflowServices
    stack: Any
    proxy: S3FaultProxy
    table: dict[str, Row]
    run_ids: dict[str, str] = field(default_factory=dict)


def dag_id(name: str) -> str:
    return f"boltzgen_{name}"


def emulator_faults() -> list[dict[str, Any]]:
    """The job faults of the scenarios that run together at the start."""
    return [
        {"pattern": "bg-fpart-des-s0001-*", "action": "fail", "message": "injected design failure"},
        {"pattern": "bg-fpart-fold-s0003-*", "action": "fail", "message": "injected folding failure"},
        {"pattern": "bg-fpart-ana-s0004-*", "action": "fail", "message": "injected analysis failure"},
        # Stopped 0.3 s into its container, well before a simulated design ends.
        {"pattern": "bg-fstop-des-s0000-*", "action": "stop", "seconds": 0.3, "times": 1},
        # Seven throttles outlast botocore's own retries; quotas are never retried by botocore.
        {"pattern": "bg-fthrottle-des-s0000-*", "action": "throttle", "times": 7},
        {"pattern": "bg-fthrottle-fold-s0001-*", "action": "quota", "times": 2},
    ]


def commit_faults() -> list[S3Fault]:
    """S3 faults where ``fcommit``'s stage tasks write and read the commit protocol's objects."""
    cache = f"/{BUCKET}/fcommit/cache/"
    return [
        # Absorbed within the task: botocore's retries, then the commit's own.
        S3Fault("PUT", cache + r"design/.*/_COMMITTED\.json$", times=7),
        # An outage of 30 s: the commit's own retries may run out; the next try takes the job over
        # and commits.
        S3Fault("PUT", cache + r"folding/.*/_COMMITTED\.json$", for_seconds=30),
        # Written, but the client is told it failed (a lost response): the PUT is sent again.
        S3Fault(
            "PUT",
            cache + r"analysis/.*/_COMMITTED\.json$",
            times=2,
            status=500,
            code="InternalError",
            after_write=True,
        ),
        S3Fault("GET", cache + r".*/_manifest\.json$", times=3, status=500, code="InternalError"),
    ]


@pytest.fixture(scope="module")
def deployment(
    local_stack: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """Every scenario's campaign parsed and unpaused."""
    root = tmp_path_factory.mktemp("faults")
    specs = root / "specs"
    shutil.copytree(PROJECT / "include" / "specs" / "vanilla_protein", specs / "vanilla_protein")
    campaigns = root / "campaigns"
    campaigns.mkdir()
    for name, (designs, retries) in CAMPAIGNS.items():
        (campaigns / f"{name}.yaml").write_text(
            CAMPAIGN_YAML.format(
                name=name,
                bucket=BUCKET,
                specs=specs,
                designs=designs,
                retries=retries,
                max_active_runs=2 if name in TWO_RUNS else 1,
            )
        )
    proxy = S3FaultProxy(local_stack.moto_url).start()
    # Airflow's tasks and triggers reach S3 through the proxy; the emulator's jobs reach it directly.
    env = {key: value.replace(local_stack.moto_url, proxy.url) for key, value in local_stack.env().items()}
    env["AWS_ENDPOINT_URL_SAGEMAKER"] = local_stack.emulator_url
    services = AirflowServices(
        root / "airflow",
        _free_port(),
        {
            **env,
            "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
            "BOLTZGEN_CHECK_INTERVAL": CHECK_INTERVAL,
            # A task whose worker died is failed (and retried) after 45 s, not 5 minutes; a dead
            # scheduler's or triggerer's work is taken over after 15 s.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
            **CELERY_ENV,
        },
    )
    table: dict[str, Row] = {}
    try:
        services.start()
        services.python(
            "from pathlib import Path\n"
            "from boltzgen_airflow.campaign.loading import load_campaign\n"
            "from boltzgen_airflow.dag.pools import ensure_pools\n"
            f"ensure_pools([load_campaign(p) for p in sorted(Path({str(campaigns)!r}).glob('*.yaml'))])\n"
        )
        for name in CAMPAIGNS:
            services.wait_for(
                lambda name=name: services.query("SELECT 1 FROM dag WHERE dag_id = ?", dag_id(name)),
                180,
                f"{dag_id(name)} to be parsed",
            )
        services.cli(
            "dags", "unpause", "--treat-dag-id-as-regex", "--yes", f"^({'|'.join(map(dag_id, CAMPAIGNS))})$"
        )
        yield Deployment(services, local_stack, proxy, table)
    finally:
        services.stop()
        proxy.stop()
        local_stack.set_faults([])
        if table:
            lines = fault_table(list(table.values()), services.engine)
            (root / f"fault_table_{services.engine}.md").write_text("\n".join(lines) + "\n")
            # Shown even when the tests pass: teardown output is otherwise captured.
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def together(deployment: Deployment) -> Deployment:
    """The first five scenarios' runs, started together with their faults (once, by the first test)."""
    deployment.stack.set_faults(emulator_faults())
    deployment.proxy.set_faults(commit_faults())
    for name in STARTED_TOGETHER:
        deployment.run_ids[name] = f"faults__{name}"
        deployment.services.cli("dags", "trigger", dag_id(name), "--run-id", deployment.run_ids[name])
    return deployment


def fault_table(rows: list[Row], engine: str) -> list[str]:
    lines = [
        f"| scenario ({engine}) | faults injected | runs completed | jobs duplicated | designs lost |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        runs = f"{row.completed} of {row.runs}"
        lines.append(f"| {row.scenario} | {row.faults} | {runs} | {row.duplicated} | {row.lost} |")
    return lines


# -- reading the outcome ------------------------------------------------------------------------


def completed_twice(stack: Any, campaign: str) -> dict[str, int]:
    """
    Cache entries (``<stage>/<key>``: one shard stage, or one spec's filtering over one set of
    shards) that more than one job completed: duplicated work.
    """
    done = Counter(cache_entry(stack, name) for name in list_jobs(stack, campaign, "Completed"))
    return {key: count for key, count in done.items() if count > 1}


def cache_documents(stack: Any, campaign: str, name: str) -> dict[str, dict[str, Any]]:
    """Every object called ``name`` under the campaign's cache prefix (read from S3 directly): key -> JSON."""
    client = stack.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{campaign}/cache/"):
        for item in page.get("Contents", []):
            if item["Key"].endswith(f"/{name}"):
                found[item["Key"]] = json.loads(
                    client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                )
    return found


def commits(stack: Any, campaign: str) -> dict[str, dict[str, Any]]:
    """Every ``_COMMITTED.json`` of the campaign's prefix: key -> record."""
    return cache_documents(stack, campaign, "_COMMITTED.json")


def committed_jobs(stack: Any, campaign: str) -> set[str]:
    return {record["job_name"] for record in commits(stack, campaign).values()}


def run_manifest(stack: Any, campaign: str, run_id: str) -> dict[str, Any]:
    key = Layout(BUCKET, campaign).run_manifest_key(campaign, run_id)
    return dict(json.loads(stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def final_designs(stack: Any, campaign: str, run_id: str) -> dict[str, bytes]:
    """The run's published results that list designs (CSV tables): relative path -> content."""
    manifest = run_manifest(stack, campaign, run_id)
    prefix = manifest["results_prefix"].removeprefix(f"s3://{BUCKET}/")
    client = stack.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".csv"):
                found[item["Key"][len(prefix) :]] = client.get_object(Bucket=BUCKET, Key=item["Key"])[
                    "Body"
                ].read()
    return found


def designs_lost(stack: Any, campaign: str, run_id: str) -> int:
    """Designs expected through analysis that the run's results do not account for."""
    manifest = run_manifest(stack, campaign, run_id)
    return sum(max(0, s["designs_expected"] - s["designs_produced"]) for s in manifest["specs"])


def wait_run(services: AirflowServices, campaign: str, run_id: str, timeout: float = 900) -> str:
    def finished() -> str | None:
        states = [r["state"] for r in services.runs(dag_id(campaign)) if r["run_id"] == run_id]
        return states[0] if states and states[0] in ("success", "failed") else None

    return str(services.wait_for(finished, timeout, f"run {run_id} of {campaign} to finish"))


def tries(services: AirflowServices, campaign: str, run_id: str) -> dict[str, tuple[str, int]]:
    """``task_id[map_index]`` -> (state, try number)."""
    rows = services.query(
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        dag_id(campaign),
        run_id,
    )
    return {f"{task}[{index}]": (str(state), int(number)) for task, index, state, number in rows}


def task_logs(
    services: AirflowServices, campaign: str, run_id: str, task_id: str, map_index: int
) -> list[str]:
    """The task's log of each try, in order."""
    folder = services.home / "logs" / f"dag_id={dag_id(campaign)}" / f"run_id={run_id}" / f"task_id={task_id}"
    tried = {}
    for path in (folder / f"map_index={map_index}").glob("attempt=*.log"):
        number = path.name.removeprefix("attempt=").removesuffix(".log")
        if number.isdigit():  # not the trigger logs (attempt=<n>.log.trigger.<id>.log)
            tried[int(number)] = path.read_text(errors="replace")
    return [tried[number] for number in sorted(tried)]


def record(table: dict[str, Row], row: Row) -> None:
    table[row.scenario] = row


# -- a claim whose owner is killed ----------------------------------------------------------------

# The shard stage whose claim is held by a running try when a kill comes: its CreateProcessingJob is
# refused for lack of quota five times, and the try backs off (4 s doubling, about 90 s in all)
# holding the claim, with no job yet.
HELD_TASK, HELD_INDEX, HELD_STAGE, HELD_SHARD = "shard.folding", 1, "folding", "s0001"


def held_claim_fault(campaign: str) -> dict[str, Any]:
    return {"pattern": f"bg-{campaign}-fold-{HELD_SHARD}-*", "action": "quota", "times": 5}


def claims(stack: Any, campaign: str) -> dict[str, dict[str, Any]]:
    """Every ``_CLAIM.json`` of the campaign's prefix: key -> claim document."""
    return cache_documents(stack, campaign, "_CLAIM.json")


@dataclass
class ClaimAtKill:
    """The held shard stage's claim as it stood when its owner was killed."""

    key: str
    claim: dict[str, Any]
    owner_run: str
    waiting_run: str
    owner_host: str


def wait_held_claim(services: AirflowServices, stack: Any, campaign: str, run_ids: list[str]) -> ClaimAtKill:
    """
    Wait until one run's try of the held shard stage runs holding its claim with no job created,
    while the other run's try of the same shard stage waits deferred on that claim.
    """

    def held() -> ClaimAtKill | None:
        found = [
            (key, doc)
            for key, doc in claims(stack, campaign).items()
            if (doc["task_id"], doc["map_index"]) == (HELD_TASK, HELD_INDEX) and doc["run_id"] in run_ids
        ]
        if not found:
            return None
        key, doc = found[0]
        if doc["job_name"] in list_jobs(stack, campaign):
            return None
        rows = services.query(
            "SELECT run_id, state, try_number, hostname FROM task_instance"
            " WHERE dag_id = ? AND task_id = ? AND map_index = ?",
            dag_id(campaign),
            HELD_TASK,
            HELD_INDEX,
        )
        states = {run: (state, int(number), str(host)) for run, state, number, host in rows}
        owner, waiting = doc["run_id"], next(run for run in run_ids if run != doc["run_id"])
        if states.get(owner, ("", 0, ""))[:2] != ("running", doc["try_number"]):
            return None
        if states.get(waiting, ("",))[0] != "deferred":
            return None
        return ClaimAtKill(key, doc, owner, waiting, states[owner][2])

    return services.wait_for(held, 600, f"a held claim of {HELD_STAGE} {HELD_SHARD} waited on", interval=0.3)


def check_claim_taken_over(services: AirflowServices, stack: Any, campaign: str, at_kill: ClaimAtKill) -> str:
    """
    Check that the killed owner's claim was taken over and its shard stage paid for one job, which
    both runs returned; say who took it over.
    """
    before, after = at_kill.claim, claims(stack, campaign)[at_kill.key]
    owner = (before["run_id"], before["task_id"], before["map_index"])
    # Taken over: a later try of the owner, or the waiting run, holds it now.
    assert (after["run_id"], after["task_id"], after["map_index"]) != owner or (
        after["try_number"] > before["try_number"]
    ), (before, after)
    names = list_jobs(stack, campaign)
    assert before["job_name"] not in names  # the killed try never created its job
    held_jobs = [n for n in names if stage_shard(n) == (HELD_STAGE, HELD_SHARD)]
    assert held_jobs == [after["job_name"]], (held_jobs, after)
    commit_key = at_kill.key.removesuffix("_CLAIM.json") + "_COMMITTED.json"
    assert commits(stack, campaign)[commit_key]["job_name"] == after["job_name"]
    # The waiting run started no job: it waited on the claim and returned the commit.
    logs = task_logs(services, campaign, at_kill.waiting_run, HELD_TASK, HELD_INDEX)
    claimed_by = f"is claimed by {dag_id(campaign)}/{at_kill.owner_run}/{HELD_TASK}[{HELD_INDEX}]"
    assert any(claimed_by in log for log in logs), logs
    # No claim was left without its commit: nothing waits on a dead owner.
    committed = commits(stack, campaign)
    assert [
        k
        for k in claims(stack, campaign)
        if k.removesuffix("_CLAIM.json") + "_COMMITTED.json" not in committed
    ] == []
    by = "the owner's retry" if after["run_id"] == before["run_id"] else "the waiting run"
    return f"try {before['try_number']} killed holding it, taken over by {by} (try {after['try_number']})"


# -- scenarios that run together ------------------------------------------------------------------


def test_a_job_stopped_mid_run_fails_its_try_commits_nothing_and_its_retry_succeeds(
    together: Deployment,
) -> None:
    deployment = together
    services, stack = deployment.services, deployment.stack
    run_id = deployment.run_ids["fstop"]
    assert wait_run(services, "fstop", run_id) == "success", tries(services, "fstop", run_id)
    found = list_jobs(stack, "fstop")
    design = sorted((n, j) for n, j in found.items() if stage_shard(n) == ("design", "s0000"))
    assert [j["ProcessingJobStatus"] for _, j in design].count("Stopped") == 1
    stopped = next(n for n, j in design if j["ProcessingJobStatus"] == "Stopped")
    # Nothing of the stopped job was committed, and its attempt holds no output.
    assert stopped not in committed_jobs(stack, "fstop")
    prefix = "fstop/cache/design/"
    keys = [
        o["Key"] for o in stack.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    ]
    assert not [k for k in keys if f"/attempts/{stopped}/" in k]
    # The try that saw it stop failed; the retry started one job, which completed and was committed.
    # The try that waited for it failed saying so; a later try's job completed and was committed.
    logs = task_logs(services, "fstop", run_id, "shard.design", 0)
    assert any(f"design of s0000: SageMaker job {stopped} ended Stopped" in log for log in logs), logs
    assert tries(services, "fstop", run_id)["shard.design[0]"][0] == "success"
    assert completed_twice(stack, "fstop") == {}
    record(
        deployment.table,
        Row(
            "job stopped mid-run",
            faults=1,
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fstop", run_id),
        ),
    )


def test_throttled_and_over_quota_creates_are_retried_with_backoff_without_duplicates(
    together: Deployment,
) -> None:
    deployment = together
    services, stack = deployment.services, deployment.stack
    run_id = deployment.run_ids["fthrottle"]
    assert wait_run(services, "fthrottle", run_id) == "success", tries(services, "fthrottle", run_id)
    # The rejections were absorbed inside the first try of each task: one job per stage and shard.
    per_stage = Counter(stage_shard(n) for n in list_jobs(stack, "fthrottle"))
    assert per_stage == Counter(
        {**{(s, sh): 1 for s in SHARD_STAGES for sh in ("s0000", "s0001")}, ("filtering", "f0000"): 1}
    )
    # The task that created the job waited out the rejections itself.
    for (task, index), code in {
        ("shard.design", 0): "ThrottlingException",
        ("shard.folding", 1): "ResourceLimitExceeded",
    }.items():
        logs = task_logs(services, "fthrottle", run_id, task, index)
        assert any(f"{code}" in log and "trying again" in log for log in logs), (task, code)
    # Every injected rejection was used up (the emulator drops a rule once its times are spent).
    with urllib.request.urlopen(f"{stack.emulator_url}/_emulator/faults", timeout=10) as response:
        left = [rule["pattern"] for rule in json.loads(response.read())["rules"]]
    assert not [p for p in left if p.startswith("bg-fthrottle-")]
    record(
        deployment.table,
        Row(
            "CreateProcessingJob throttled (7) and over quota (2)",
            faults=9,
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fthrottle", run_id),
        ),
    )


def test_s3_errors_while_committing_are_retried_and_never_leave_a_half_written_commit(
    together: Deployment,
) -> None:
    deployment = together
    services, stack = deployment.services, deployment.stack
    run_id = deployment.run_ids["fcommit"]
    client = stack.client("s3")
    bad: list[str] = []
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        # Every commit, from the moment it can be read, points at an attempt that verifies.
        while not done.is_set():
            for key, rec in commits(stack, "fcommit").items():
                if key in seen:
                    continue
                seen.add(key)
                manifest, verification = verify_attempt(client, BUCKET, rec["attempt_prefix"], 0.0)
                if manifest is None or not verification.ok:
                    bad.append(f"{key}: {verification.problems}")
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        state = wait_run(services, "fcommit", run_id)
    finally:
        done.set()
        watcher.join(timeout=30)
    assert state == "success", tries(services, "fcommit", run_id)
    assert bad == []
    injected = {f.key: len(f.injected) for f in deployment.proxy.faults}
    counted = [f for f in deployment.proxy.faults if f.for_seconds is None]
    assert [len(f.injected) for f in counted] == [f.times for f in counted], injected
    assert all(injected.values()), injected
    # The outage reached the folding commits, which were made once it was over.
    folding_logs = [task_logs(services, "fcommit", run_id, "shard.folding", index) for index in (0, 1)]
    assert any("SlowDown" in log for logs in folding_logs for log in logs)
    # Each shard stage was committed once, by its only job.
    assert len(seen) == 2 * 3 + 1
    assert completed_twice(stack, "fcommit") == {}
    assert committed_jobs(stack, "fcommit") == set(list_jobs(stack, "fcommit"))
    record(
        deployment.table,
        Row(
            "S3 errors while committing (PUT 503 x7 and for 30 s, PUT 500 after write x2, GET 500 x3)",
            faults=sum(injected.values()),
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fcommit", run_id),
        ),
    )


def test_a_fifth_of_shard_jobs_failing_gives_partial_results_and_clearing_failed_tasks_completes(
    together: Deployment,
) -> None:
    deployment = together
    services, stack = deployment.services, deployment.stack
    run_id, clean_id = deployment.run_ids["fpart"], deployment.run_ids["fclean"]
    assert wait_run(services, "fclean", clean_id) == "success", tries(services, "fclean", clean_id)
    assert wait_run(services, "fpart", run_id) == "failed"
    first = list_jobs(stack, "fpart")
    shard_jobs = [n for n in first if stage_shard(n)[0] != "filtering"]
    failed = sorted({stage_shard(n) for n, j in first.items() if j["ProcessingJobStatus"] == "Failed"})
    # A fifth of the 15 planned shard stages (5 shards x 3 stages) failed, in every one of their tries.
    assert failed == [("analysis", "s0004"), ("design", "s0001"), ("folding", "s0003")]
    assert len({stage_shard(n) for n in shard_jobs} | set(failed)) <= 15
    # Partial results: the run's manifest names the missing shards, and the rest was filtered.
    manifest = run_manifest(stack, "fpart", run_id)
    assert manifest["status"] == "partial"
    assert manifest["specs"][0]["missing_shards"] == ["s0001", "s0003", "s0004"]
    assert manifest["specs"][0]["final_designs"] > 0

    before = committed_jobs(stack, "fpart")
    stack.set_faults([])
    services.cli("dags", "clear", dag_id("fpart"), "--run-id", run_id, "--only-failed", "--yes")
    assert wait_run(services, "fpart", run_id) == "success", tries(services, "fpart", run_id)
    new = sorted(stage_shard(n) for n in set(list_jobs(stack, "fpart")) - set(first))
    # Jobs only for what was not committed: the failed stages, the stages after them, filtering.
    assert new == sorted(
        [
            ("design", "s0001"),
            ("folding", "s0001"),
            ("analysis", "s0001"),
            ("folding", "s0003"),
            ("analysis", "s0003"),
            ("analysis", "s0004"),
            ("filtering", "f0000"),
        ]
    )
    after = committed_jobs(stack, "fpart")
    assert before - after <= {n for n in before if stage_shard(n)[0] == "filtering"}  # nothing lost
    assert completed_twice(stack, "fpart") == {}
    # The final designs are those of a clean run over the same spec.
    ours, clean = final_designs(stack, "fpart", run_id), final_designs(stack, "fclean", clean_id)
    assert ours and ours == clean
    record(
        deployment.table,
        Row(
            "a fifth of the shard jobs fail, then failed tasks cleared",
            faults=len(failed),
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fpart", run_id),
        ),
    )
    record(
        deployment.table,
        Row(
            "reference: clean run",
            faults=0,
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fclean", clean_id),
        ),
    )


# -- scenarios that run alone ---------------------------------------------------------------------


def test_scheduler_and_triggerer_killed_mid_run_the_run_completes_without_duplicate_work(
    deployment: Deployment,
) -> None:
    services, stack = deployment.services, deployment.stack
    # Jobs held a few seconds, so the kill finds tasks in workers and jobs waited on in the triggerer;
    # one shard stage's create refused for a while, so the kill finds its claim held by a running try.
    delay = {"pattern": "bg-fkill-*", "action": "delay", "seconds": 8}
    stack.set_faults([held_claim_fault("fkill"), delay])
    # Two runs want every shard stage: one makes each, the other waits on its claims.
    run_ids = ["faults__fkill", "faults__fkill2"]
    for run_id in run_ids:
        services.cli("dags", "trigger", dag_id("fkill"), "--run-id", run_id)

    def busy() -> bool:
        states = Counter(
            state for run_id in run_ids for state, _ in tries(services, "fkill", run_id).values()
        )
        return states["running"] >= 1 and states["deferred"] >= 1 and bool(commits(stack, "fkill"))

    services.wait_for(busy, 600, "fkill to have running and deferred tasks and a commit", interval=0.3)
    at_kill = wait_held_claim(services, stack, "fkill", run_ids)
    kept = commits(stack, "fkill")
    running = {run_id: tries(services, "fkill", run_id) for run_id in run_ids}
    services.kill("scheduler", "triggerer")
    stack.set_faults([delay])
    time.sleep(5)
    services.restart("scheduler", "triggerer")
    for run_id in run_ids:
        assert wait_run(services, "fkill", run_id) == "success", tries(services, "fkill", run_id)
    stack.set_faults([])
    assert completed_twice(stack, "fkill") == {}
    after = commits(stack, "fkill")
    assert {k: after[k] for k in kept} == kept  # what was committed before the kill is unchanged
    assert len(after) == 4 * 3 + 1
    # Both runs' results: nothing lost, the same design tables.
    lost = sum(designs_lost(stack, "fkill", run_id) for run_id in run_ids)
    first, second = (final_designs(stack, "fkill", run_id) for run_id in run_ids)
    assert first and first == second
    killed = [key for states in running.values() for key, (state, _) in states.items() if state == "running"]
    # The LocalExecutor runs tasks inside the scheduler's process group; Celery workers are apart.
    if services.engine == "local":
        fate = "lost with them"
        taken = check_claim_taken_over(services, stack, "fkill", at_kill)
    else:
        fate = "kept running in the Celery workers"
        # The claim's owner lived on in its worker: it created its job and committed it.
        claim = claims(stack, "fkill")[at_kill.key]
        assert claim == at_kill.claim
        assert [n for n in list_jobs(stack, "fkill") if stage_shard(n) == (HELD_STAGE, HELD_SHARD)] == [
            claim["job_name"]
        ]
        taken = "its owner lived on in its Celery worker and committed its one job"
    record(
        deployment.table,
        Row(
            f"scheduler and triggerer killed, two runs ({len(killed)} running tasks {fate})",
            faults=1,
            runs=2,
            completed=2,
            duplicated=0,
            lost=lost,
        ),
    )
    record(
        deployment.table,
        Row(
            f"a claim held by a try when the scheduler was killed, the other run waiting on it: {taken}",
            faults=1,
            runs=2,
            completed=2,
            duplicated=0,
            lost=lost,
        ),
    )


def test_emulator_restarted_mid_job_fails_that_job_clearly_and_its_retry_succeeds(
    deployment: Deployment,
) -> None:
    services, stack = deployment.services, deployment.stack
    stack.set_faults([{"pattern": "bg-fhost-des-s0000-*", "action": "delay", "seconds": 60, "times": 1}])
    run_id = "faults__fhost"
    services.cli("dags", "trigger", dag_id("fhost"), "--run-id", run_id)
    held = services.wait_for(
        lambda: [
            n
            for n, j in list_jobs(stack, "fhost").items()
            if stage_shard(n) == ("design", "s0000") and j["ProcessingJobStatus"] == "InProgress"
        ],
        300,
        "the held design job",
    )[0]
    stack.restart_emulator()
    assert wait_run(services, "fhost", run_id) == "success", tries(services, "fhost", run_id)
    description = stack.client("sagemaker").describe_processing_job(ProcessingJobName=held)
    assert description["ProcessingJobStatus"] == "Failed"
    assert "restarted" in description["FailureReason"]
    logs = task_logs(services, "fhost", run_id, "shard.design", 0)
    assert any(held in log and "processing host restarted" in log for log in logs)
    assert held not in committed_jobs(stack, "fhost")
    assert completed_twice(stack, "fhost") == {}
    record(
        deployment.table,
        Row(
            "emulator restarted mid-job",
            faults=1,
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fhost", run_id),
        ),
    )


# -- scenarios of the Celery deployment -------------------------------------------------------------


def running_stage_tasks(services: AirflowServices, campaign: str, run_ids: list[str]) -> dict[str, list[str]]:
    """Celery worker -> the ``run_id/task_id[map_index]`` of the runs' stage tasks running on it."""
    found: dict[str, list[str]] = {}
    for run_id in run_ids:
        rows = services.query(
            "SELECT task_id, map_index, hostname FROM task_instance"
            " WHERE dag_id = ? AND run_id = ? AND state = 'running'",
            dag_id(campaign),
            run_id,
        )
        for task, index, host in rows:
            if str(task).startswith("shard.") and host in services.workers:
                found.setdefault(host, []).append(f"{run_id}/{task}[{index}]")
    return found


@pytest.mark.celery
def test_a_celery_worker_killed_while_running_stage_tasks_the_other_worker_takes_the_retries(
    deployment: Deployment,
) -> None:
    services, stack = deployment.services, deployment.stack
    delay = {"pattern": "bg-fworker-*", "action": "delay", "seconds": 8}
    stack.set_faults([held_claim_fault("fworker"), delay])
    # Two runs want every shard stage: one makes each, the other waits on its claims.
    run_ids = ["faults__fworker", "faults__fworker2"]
    for run_id in run_ids:
        services.cli("dags", "trigger", dag_id("fworker"), "--run-id", run_id)
    # The worker to kill is the one running the try that holds the claim of the held shard stage.
    held = wait_held_claim(services, stack, "fworker", run_ids)
    victim = held.owner_host
    survivor = next(host for host in services.workers if host != victim)
    busy = running_stage_tasks(services, "fworker", run_ids)
    at_kill = {run_id: tries(services, "fworker", run_id) for run_id in run_ids}
    kept = commits(stack, "fworker")
    # The machine dies: the worker, its Celery processes and the task processes they run.
    services.kill(victim)
    stack.set_faults([delay])
    try:
        for run_id in run_ids:
            assert wait_run(services, "fworker", run_id) == "success", tries(services, "fworker", run_id)
    finally:
        stack.set_faults([])
    final = {
        f"{run}/{task}[{index}]": (str(state), str(host), int(number))
        for run, task, index, state, host, number in services.query(
            "SELECT run_id, task_id, map_index, state, hostname, try_number FROM task_instance"
            " WHERE dag_id = ?",
            dag_id("fworker"),
        )
    }
    # Each stage task the dead worker ran was retried, and its retry succeeded on the other worker.
    assert f"{held.owner_run}/{HELD_TASK}[{HELD_INDEX}]" in busy.get(victim, []), busy
    for key in busy[victim]:
        state, host, number = final[key]
        run_id, task = key.split("/", 1)
        assert (state, host) == ("success", survivor), (key, final[key])
        assert number > at_kill[run_id][task][1], (key, at_kill[run_id][task], final[key])
    assert completed_twice(stack, "fworker") == {}
    after = commits(stack, "fworker")
    assert {k: after[k] for k in kept} == kept  # what was committed before the kill is unchanged
    assert len(after) == 4 * 3 + 1
    taken = check_claim_taken_over(services, stack, "fworker", held)
    lost = sum(designs_lost(stack, "fworker", run_id) for run_id in run_ids)
    first, second = (final_designs(stack, "fworker", run_id) for run_id in run_ids)
    assert first and first == second
    services.restart(victim)
    record(
        deployment.table,
        Row(
            f"one of two Celery workers SIGKILLed, two runs ({len(busy[victim])} running stage task(s) lost)",
            faults=1,
            runs=2,
            completed=2,
            duplicated=0,
            lost=lost,
        ),
    )
    record(
        deployment.table,
        Row(
            f"a claim held by a try on the killed Celery worker, the other run waiting on it: {taken}",
            faults=1,
            runs=2,
            completed=2,
            duplicated=0,
            lost=lost,
        ),
    )


@pytest.mark.celery
def test_postgresql_restarted_mid_run_the_run_completes_without_duplicate_work(
    deployment: Deployment,
) -> None:
    services, stack = deployment.services, deployment.stack
    stack.set_faults([{"pattern": "bg-fpg-*", "action": "delay", "seconds": 8}])
    run_id = "faults__fpg"
    services.cli("dags", "trigger", dag_id("fpg"), "--run-id", run_id)

    def busy() -> bool:
        states = Counter(state for state, _ in tries(services, "fpg", run_id).values())
        return states["running"] >= 1 and states["deferred"] >= 1 and bool(commits(stack, "fpg"))

    services.wait_for(busy, 600, "fpg to have running and deferred tasks and a commit", interval=0.3)
    kept = commits(stack, "fpg")
    # Components that exit when the database goes away are started again, as their supervisor would.
    services.restart_exited = True
    try:
        services.restart_database(down_for=5)
        state = wait_run(services, "fpg", run_id)
    finally:
        services.restart_exited = False
        stack.set_faults([])
    revived, services.revived[:] = sorted(set(services.revived)), []
    assert state == "success", tries(services, "fpg", run_id)
    assert completed_twice(stack, "fpg") == {}
    after = commits(stack, "fpg")
    assert {k: after[k] for k in kept} == kept
    assert len(after) == 4 * 3 + 1
    restarted = f"; {', '.join(revived)} exited and restarted" if revived else "; no component exited"
    record(
        deployment.table,
        Row(
            f"PostgreSQL crashed (immediate stop) mid-run, up again 5 s later{restarted}",
            faults=1,
            runs=1,
            completed=1,
            duplicated=0,
            lost=designs_lost(stack, "fpg", run_id),
        ),
    )

"""
Orchestration overhead and scale: one run of a campaign whose simulated BoltzGen steps take no time,
through a real Airflow deployment (API server, scheduler with LocalExecutor, DAG processor and
triggerer as processes, SQLite) against the local stack (SageMaker emulator, S3 and CloudWatch Logs
on moto server). Every second measured is Airflow, the emulator, the step scripts and S3.

The run is started with ``airflow dags trigger`` and watched in the metadata database until it ends.
The wall time (trigger to the run's end) is divided by the shard stage jobs run (shards x shard
stages); task instance durations, emulator job counts and the CPU time of each component say where
the time went. Optional in ``make bench``: ``--orchestration`` (50 shards, ``orchestration.json``)
and ``--scale`` (500 shards, ``scale.json``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common import ROOT, load_average, median, table, write_result

BUCKET = "bench-orchestration"
CAMPAIGN_NAME = "bench_orchestration"
DAG_ID = f"boltzgen_{CAMPAIGN_NAME}"
#: Stage parts of job names (``sagemaker.requests.STAGE_ABBREVIATIONS``), read back to stages.
STAGE_OF_ABBREVIATION = {"des": "design", "inv": "inverse_folding", "fold": "folding", "ana": "analysis"}
FILTERING_ABBREVIATION = "filt"
_JOB_NAME_RE = re.compile(
    r"^bg-(?P<campaign>.+?)-(?P<stage>des|inv|fold|ana|filt)-(?P<shard>.+)-[0-9a-f]{10}$"
)
_TERMINAL_RUN_STATES = ("success", "failed")

CAMPAIGN = """
name: {name}
retries: {retries}
aws:
  bucket: {bucket}
  prefix: bench
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "{include}"
  protocol: protein-anything
  num_designs: {designs}
  budget: 1
  diffusion_batch_size: 1
  skip_inverse_folding: {skip_inverse_folding}
scaling:
  preset: small
  design: {{max_parallel_jobs: {slots}}}
  inverse_folding: {{max_parallel_jobs: {slots}}}
  folding: {{max_parallel_jobs: {slots}}}
  analysis: {{max_parallel_jobs: {slots}}}
  filtering: {{max_parallel_jobs: {slots}}}
# One job per shard stage and one filtering job per spec, as the tests count them.
sharding:
  target_hours: 0.00001
  pack_filtering: false
  max_shards: {shards}
stages:
  fuse: none
"""


@dataclass(frozen=True)
class Settings:
    """
    What one measured run uses.

    :param shards: shards of the run (the planner's cap; the designs per spec are chosen to reach it).
    :param pool_slots: slots of every instance type's pool (``scaling.<stage>.max_parallel_jobs``).
    :param parallelism: LocalExecutor worker slots (``core.parallelism``).
    :param check_interval: seconds between SageMaker/S3 polls (``BOLTZGEN_CHECK_INTERVAL``).
    :param skip_inverse_folding: run design, folding and analysis only.
    :param hold_seconds: an emulator delay rule holding every job this long before it starts (0: none).
    :param log_level: Airflow's logging level (task logs included).
    :param retries: the campaign's ``retries`` (its default is 2).
    :param include: which example specs (glob under ``include/specs``).
    :param timeout: seconds to wait for the run's end before reporting how far it got.
    :param engine: ``local`` (SQLite, LocalExecutor) or ``celery`` (PostgreSQL, Redis, two Celery
        workers with ``parallelism`` slots between them; ``boltzgen_demo.engines``).
    :param scheduler_nice: the scheduler's niceness (negative: it runs ahead of the other processes,
        as a scheduler on a machine of its own would; the LocalExecutor's workers, its children,
        share it); 0 leaves it level with the rest.
    """

    shards: int = 50
    pool_slots: int = 32
    parallelism: int = 4
    check_interval: int = 30
    skip_inverse_folding: bool = False
    hold_seconds: float = 0.0
    log_level: str = "WARNING"
    retries: int = 2
    include: str = "*/*.yaml"
    timeout: float = 4800.0
    engine: str = "local"
    scheduler_nice: int = 0

    @property
    def shard_stages(self) -> tuple[str, ...]:
        """The per-shard stages the campaign runs."""
        return tuple(
            s
            for s in ("design", "inverse_folding", "folding", "analysis")
            if not (s == "inverse_folding" and self.skip_inverse_folding)
        )


# -- pure functions: campaign, job names, summaries --------------------------------------------------


def campaign_yaml(settings: Settings, designs_per_spec: int, specs: Path) -> str:
    """
    The campaign file of a run.

    :param settings: the run's settings.
    :param designs_per_spec: ``design.num_designs``.
    :param specs: the folder of the example specs.
    """
    return CAMPAIGN.format(
        name=CAMPAIGN_NAME,
        bucket=BUCKET,
        specs=specs,
        include=settings.include,
        designs=designs_per_spec,
        skip_inverse_folding=str(settings.skip_inverse_folding).lower(),
        slots=settings.pool_slots,
        shards=settings.shards,
        retries=settings.retries,
    )


def parse_job_name(name: str) -> tuple[str, str] | None:
    """
    The (stage, shard) of a job name built by ``boltzgen_airflow.sagemaker.requests.job_name``.

    :param name: a SageMaker processing job name.
    :return: None for a name of another shape; filtering jobs give ``("filtering", <filter id>)``.
    """
    match = _JOB_NAME_RE.match(name)
    if match is None:
        return None
    abbreviation = match["stage"]
    stage = "filtering" if abbreviation == FILTERING_ABBREVIATION else STAGE_OF_ABBREVIATION[abbreviation]
    return stage, match["shard"]


def job_summary(names: Iterable[str]) -> dict[str, Any]:
    """
    Jobs per stage, and every (stage, shard) that had more than one job.

    :param names: processing job names of the run.
    """
    per_key: Counter[tuple[str, str]] = Counter()
    unknown = 0
    for name in names:
        parsed = parse_job_name(name)
        if parsed is None:
            unknown += 1
        else:
            per_key[parsed] += 1
    per_stage: Counter[str] = Counter()
    for (stage, _), count in per_key.items():
        per_stage[stage] += count
    duplicates = sorted(f"{stage}/{shard} x{count}" for (stage, shard), count in per_key.items() if count > 1)
    return {
        "jobs": sum(per_key.values()) + unknown,
        "jobs_per_stage": dict(sorted(per_stage.items())),
        "unrecognised_jobs": unknown,
        "duplicates": duplicates,
    }


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def task_summary(rows: Sequence[Mapping[str, Any]], shard_stages: Sequence[str]) -> dict[str, Any]:
    """
    Task instances by state and duration per task, from metadata database rows.

    :param rows: dicts with ``task_id``, ``map_index``, ``state``, ``start_date``, ``end_date``
        (ISO timestamps or None) and ``queued_dttm``.
    :param shard_stages: the per-shard stages the campaign runs (their operators start the jobs).
    """
    by_state: Counter[str] = Counter()
    retried = 0
    durations: dict[str, list[float]] = defaultdict(list)
    shards: set[int] = set()
    stage_tasks = {f"shard.{stage}" for stage in shard_stages}
    stage_done = 0
    for row in rows:
        state = str(row.get("state") or "none")
        by_state[state] += 1
        retried += int(row.get("try_number") or 1) > 1
        task_id = str(row["task_id"])
        if task_id.startswith("shard."):
            shards.add(int(row["map_index"]))
        if task_id in stage_tasks and state == "success":
            stage_done += 1
        seconds = _seconds(row.get("start_date"), row.get("end_date"))
        if seconds is not None:
            durations[task_id].append(seconds)
    return {
        "task_instances": sum(by_state.values()),
        "task_instances_by_state": dict(sorted(by_state.items())),
        "retried_task_instances": retried,
        "shards": len(shards),
        "shard_stage_tasks_succeeded": stage_done,
        "task_median_s": {k: round(median(v), 3) for k, v in sorted(durations.items())},
        "task_total_s": {k: round(sum(v), 1) for k, v in sorted(durations.items())},
    }


def summarize(
    *,
    settings: Settings,
    run: Mapping[str, Any],
    triggered_at: datetime,
    tasks: Sequence[Mapping[str, Any]],
    job_names: Iterable[str],
    planned_shards: int,
) -> dict[str, Any]:
    """
    The figures of one run.

    :param settings: the run's settings.
    :param run: the ``dag_run`` row (``state``, ``start_date``, ``end_date``; ISO timestamps).
    :param triggered_at: when ``airflow dags trigger`` was called (UTC, aware).
    :param tasks: task instance rows (see :func:`task_summary`).
    :param job_names: the emulator's processing job names.
    :param planned_shards: shards of the plan.
    """
    task_figures = task_summary(tasks, settings.shard_stages)
    jobs = job_summary(job_names)
    stage_jobs = sum(n for s, n in jobs["jobs_per_stage"].items() if s != "filtering")
    end = run.get("end_date")
    wall = _seconds(triggered_at.isoformat(), end) if end else None
    state = str(run.get("state") or "none")
    return {
        "state": state,
        "finished": state in _TERMINAL_RUN_STATES,
        "shards": planned_shards,
        "shard_stages": list(settings.shard_stages),
        "shard_stage_jobs": stage_jobs,
        "expected_shard_stage_jobs": planned_shards * len(settings.shard_stages),
        **{k: v for k, v in task_figures.items() if k != "shards"},
        "wall_s": round(wall, 1) if wall is not None else None,
        "trigger_to_run_start_s": _round(_seconds(triggered_at.isoformat(), run.get("start_date"))),
        "wall_s_per_shard_stage": round(wall / stage_jobs, 3) if wall is not None and stage_jobs else None,
        **jobs,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# -- the run -----------------------------------------------------------------------------------------


def designs_for(settings: Settings, specs: Path) -> tuple[int, int]:
    """
    The fewest designs per spec whose plan has ``settings.shards`` shards, and that plan's shard count.

    :param settings: the run's settings.
    :param specs: the folder of the example specs.
    """
    from boltzgen_airflow.campaign.loading import load_campaign
    from boltzgen_airflow.campaign.specs import discover_bundles
    from boltzgen_airflow.planning.plan import plan_campaign

    spec_count = max(1, len(list(specs.glob(settings.include))))
    best = (1, 0)
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        path = Path(tmp) / f"{CAMPAIGN_NAME}.yaml"
        designs = max(1, math.ceil(settings.shards / spec_count / 2))
        for _ in range(200):
            path.write_text(campaign_yaml(settings, designs, specs))
            campaign = load_campaign(path)
            got = len(plan_campaign(campaign, discover_bundles(specs, settings.include)).shards)
            best = (designs, got)
            if got >= settings.shards:
                break
            designs = max(designs + 1, math.floor(designs * settings.shards / max(got, 1)))
    return best


def _query(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """:param db: the SQLite file, or PostgreSQL's ``postgresql://`` URL; ``?`` marks parameters."""
    if isinstance(db, str):
        import psycopg2

        with contextlib.closing(psycopg2.connect(db)) as pg:
            pg.set_session(readonly=True, autocommit=True)
            with pg.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return [tuple(row) for row in cur.fetchall()]
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return list(conn.execute(sql, params).fetchall())


def _iso(value: Any) -> str | None:
    # SQLite keeps Airflow's UTC datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" (sometimes with an offset).
    if value is None:
        return None
    text = str(value).replace(" ", "T")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


def read_run(db: Path | str) -> dict[str, Any]:
    """
    The newest run of the benchmark DAG (empty before it exists).

    :param db: the metadata database (see :func:`_query`).
    """
    rows = _query(
        db,
        "SELECT run_id, state, start_date, end_date, last_scheduling_decision FROM dag_run"
        " WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
        DAG_ID,
    )
    if not rows:
        return {}
    run_id, state, start, end, decided = rows[0]
    return {
        "run_id": run_id,
        "state": state,
        "start_date": _iso(start),
        "end_date": _iso(end),
        "last_scheduling_decision": _iso(decided),
    }


def loop_summary(decisions: Sequence[str]) -> dict[str, Any]:
    """
    How often the scheduler examined the run: the gaps between its successive scheduling decisions.

    The scheduler stamps ``dag_run.last_scheduling_decision`` each loop that examines the run, and
    the executor's slots are refilled once per loop, so the gap bounds how soon a finished task's
    slot and its downstream tasks are taken up.

    :param decisions: the distinct stamps seen, in order (ISO timestamps; polled every 2 s, so
        shorter loops show as one gap).
    """
    stamps = [datetime.fromisoformat(d).timestamp() for d in decisions]
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps) if b > a)
    if not gaps:
        return {"loops_seen": len(stamps)}
    return {
        "loops_seen": len(stamps),
        "median_s": round(median(gaps), 1),
        "p90_s": round(gaps[int(0.9 * (len(gaps) - 1))], 1),
        "max_s": round(gaps[-1], 1),
    }


def read_tasks(db: Path | str, run_id: str) -> list[dict[str, Any]]:
    """
    The run's task instances.

    :param db: the metadata database (see :func:`_query`).
    :param run_id: the run.
    """
    keys = ("task_id", "map_index", "state", "start_date", "end_date", "queued_dttm", "try_number")
    rows = _query(
        db, f"SELECT {', '.join(keys)} FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id
    )
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        for key in ("start_date", "end_date", "queued_dttm"):
            item[key] = _iso(item[key])
        out.append(item)
    return out


def list_job_names(client: Any) -> list[str]:
    """
    Every processing job the emulator knows.

    :param client: a boto3 SageMaker client.
    """
    names: list[str] = []
    for page in client.get_paginator("list_processing_jobs").paginate():
        names.extend(job["ProcessingJobName"] for job in page["ProcessingJobSummaries"])
    return names


def cpu_seconds(pid: int) -> float:
    """
    CPU seconds of a process and its descendants, reaped children included.

    :param pid: the root process.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _airflow_env(
    settings: Settings,
    home: Path,
    stack_env: Mapping[str, str],
    port: int,
    campaigns: Path,
    engine_env: Mapping[str, str] | None,
) -> dict[str, str]:
    from boltzgen_demo import airflow_local

    env = airflow_local.airflow_env(
        home, stack_env, check_interval=settings.check_interval, api_port=port, engine_env=engine_env
    )
    env.update(
        {
            "BOLTZGEN_CAMPAIGNS_DIR": str(campaigns),
            "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
            # Deferred tasks hold pool slots, not these: the pools bound the jobs in flight.
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4096",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": settings.log_level,
        }
    )
    return env


def _progress(db: Path | str, run_id: str, jobs: int, elapsed: float) -> dict[str, Any]:
    rows = _query(
        db,
        "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = ? AND run_id = ? GROUP BY state",
        DAG_ID,
        run_id,
    )
    return {
        "elapsed_s": round(elapsed),
        "jobs": jobs,
        "tasks": {str(state or "none"): int(n) for state, n in sorted(rows, key=lambda r: str(r[0]))},
        "load_average": load_average(),
    }


def run(settings: Settings, keep: Path | None = None) -> dict[str, Any]:
    """
    Start the local stack and Airflow, trigger the campaign once, wait for the run's end, measure.

    :param settings: the run's settings.
    :param keep: copy Airflow's and the stack's logs here (None: discard them).
    """
    from boltzgen_demo import airflow_local, engines
    from boltzgen_demo.backing_services import BackingServices
    from sagemaker_emulator.stack import LocalStack, free_ports

    before = load_average()
    backing: BackingServices | None = None
    workers: list[engines.CeleryWorker] = []
    engine_env: dict[str, str] | None = None
    if settings.engine == "celery":
        # Under /tmp, which the postgres user may enter (a TemporaryDirectory is private to its owner).
        folder = Path(tempfile.mkdtemp(prefix="bench-orch-services-"))
        folder.chmod(0o755)
        backing = BackingServices.in_folder(folder).start()
        workers = engines.celery_workers(2, max(1, settings.parallelism // 2))
        engine_env = engines.celery_env(backing)
    specs = ROOT / "include" / "specs"
    designs, planned = designs_for(settings, specs)
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        home = Path(tmp) / "airflow-home"
        campaigns = Path(tmp) / "campaigns"
        campaigns.mkdir()
        (campaigns / f"{CAMPAIGN_NAME}.yaml").write_text(campaign_yaml(settings, designs, specs))
        moto_port, emulator_port, api_port = free_ports(3)
        stack = LocalStack(Path(tmp) / "stack", moto_port, emulator_port, simulated=True, buckets=[BUCKET])
        stack.start(timeout=180)
        db: Path | str = home / "airflow.db" if backing is None else backing.postgres.url("postgresql")
        try:
            env = _airflow_env(settings, home, stack.env(), api_port, campaigns, engine_env)
            pools = airflow_local.prepare(home, env)
            if settings.hold_seconds > 0:
                stack.set_faults([{"pattern": "bg-*", "action": "delay", "seconds": settings.hold_seconds}])
            pids = airflow_local.start_components(home, env, engines.components(home, workers))
            if settings.scheduler_nice:
                os.setpriority(os.PRIO_PROCESS, pids["scheduler"], settings.scheduler_nice)
            try:
                figures = _trigger_and_wait(settings, home, env, stack, api_port, planned, db)
                figures["cpu_s"] = {
                    **{name: round(cpu_seconds(pid), 1) for name, pid in pids.items()},
                    **_stack_cpu(stack),
                    **({} if backing is None else _backing_cpu(backing)),
                }
            finally:
                airflow_local.stop_components(home)
                if keep is not None:
                    _keep_logs(Path(tmp), keep)
        finally:
            stack.stop()
            if backing is not None:
                backing.stop()
                import shutil

                shutil.rmtree(backing.folder, ignore_errors=True)
    return {
        "suite": "orchestration",
        **figures,
        "designs_per_spec": designs,
        "pools": pools,
        "settings": asdict(settings),
        "load_average_before": before,
        "load_average_after": load_average(),
    }


def _stack_cpu(stack: Any) -> dict[str, float]:
    path = stack.state_dir / "stack.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    return {
        f"stack_{name}": round(cpu_seconds(int(record[name]["pid"])), 1)
        for name in ("emulator", "moto")
        if name in record
    }


def _backing_cpu(backing: Any) -> dict[str, float]:
    """CPU seconds of PostgreSQL (the postmaster and its backends) and Redis."""
    figures = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((backing.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        figures["postgres"] = round(cpu_seconds(postmaster), 1)
    with contextlib.suppress(OSError, ValueError):
        figures["redis"] = round(cpu_seconds(int((backing.redis.folder / "redis.pid").read_text())), 1)
    return figures


def _keep_logs(tmp: Path, keep: Path) -> None:
    import shutil

    keep.mkdir(parents=True, exist_ok=True)
    for source in (tmp / "airflow-home" / "logs", tmp / "stack"):
        if source.is_dir():
            skip = shutil.ignore_patterns("workspaces", "*.sqlite*")
            shutil.copytree(source, keep / source.name, dirs_exist_ok=True, ignore=skip)


def _trigger_and_wait(
    settings: Settings,
    home: Path,
    env: Mapping[str, str],
    stack: Any,
    port: int,
    planned: int,
    db: Path | str,
) -> dict[str, Any]:
    from datetime import UTC

    from boltzgen_demo import airflow_local

    expected = set(airflow_local.recorded_components(home))
    airflow_local.wait_for_api(f"http://127.0.0.1:{port}", home)
    deadline = time.monotonic() + 300
    while not _query(db, "SELECT 1 FROM serialized_dag WHERE dag_id = ?", DAG_ID):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG_ID} was not parsed within 300 s; see {home / 'logs'}")
        time.sleep(1)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "dags", "unpause", DAG_ID], env=dict(env), check=True, capture_output=True)
    triggered_at = datetime.now(UTC)
    started = time.monotonic()
    subprocess.run([*airflow, "dags", "trigger", DAG_ID], env=dict(env), check=True, capture_output=True)
    sagemaker = stack.client("sagemaker")
    run: dict[str, Any] = {}
    last_print = 0.0
    samples: list[dict[str, Any]] = []
    decisions: list[str] = []
    while time.monotonic() - started < settings.timeout:
        running = airflow_local.running_components(home)
        if set(running) != expected:
            raise RuntimeError(f"an Airflow component exited ({sorted(running)} run); see {home / 'logs'}")
        run = read_run(db)
        decided = run.get("last_scheduling_decision")
        if decided and (not decisions or decisions[-1] != decided):
            decisions.append(decided)
        if run.get("state") in _TERMINAL_RUN_STATES:
            break
        if run and time.monotonic() - last_print > 60:
            last_print = time.monotonic()
            jobs = -1
            with contextlib.suppress(Exception):
                jobs = len(list_job_names(sagemaker))
            sample = _progress(db, run["run_id"], jobs, time.monotonic() - started)
            samples.append(sample)
            print(f"  {json.dumps(sample)}", flush=True)
        time.sleep(2)
    tasks = read_tasks(db, run["run_id"]) if run else []
    figures = summarize(
        settings=settings,
        run=run,
        triggered_at=triggered_at,
        tasks=tasks,
        job_names=list_job_names(sagemaker),
        planned_shards=planned,
    )
    if not figures["finished"]:
        figures["waited_s"] = round(time.monotonic() - started, 1)
    figures["scheduler_loop"] = loop_summary(decisions)
    # A minute-by-minute record: how far a run got, and its pace, also when it did not end.
    figures["progress"] = samples
    return figures


def report(document: dict[str, Any]) -> str:
    """
    The figures as a table.

    :param document: from :func:`run`.
    """
    rows = [
        [task, document["task_median_s"][task], document["task_total_s"][task]]
        for task in document["task_median_s"]
    ]
    wall = document["wall_s"]
    per = document["wall_s_per_shard_stage"]
    return (
        f"Orchestration: {document['shards']} shards, {document['shard_stage_jobs']} shard stage jobs "
        f"({', '.join(document['shard_stages'])}), run {document['state']}"
        + (f" in {wall:.1f} s ({per:.2f} s per shard stage)" if wall is not None and per is not None else "")
        + f"\ntask instances: {document['task_instances_by_state']}"
        f"; jobs per stage: {document['jobs_per_stage']}; duplicates: {len(document['duplicates'])}"
        f"\nCPU s: {document['cpu_s']}"
        f"\nscheduler loop (gaps between its decisions on the run): {document.get('scheduler_loop')}"
        f"\nload average before {document['load_average_before']}, after {document['load_average_after']}\n"
        + table(["task", "median s", "total s"], rows)
    )


#: The scale run: three shard stages (inverse folding skipped); about 100 minutes on an idle 2-core
#: machine, bound by the executor's 8 slots and the scheduler's loop (docs/benchmarks.md, section 5).
#: A 60 s check interval keeps a loaded scheduler out of Airflow's deferral race (apache/airflow#71580).
SCALE = Settings(
    shards=500, pool_slots=32, parallelism=8, check_interval=60, skip_inverse_folding=True, timeout=7200.0
)


def result_name(suite: str, engine: str) -> str:
    """The result file of a suite on an engine: ``scale`` on ``local``, ``scale_celery`` on ``celery``."""
    return suite if engine == "local" else f"{suite}_{engine}"


def main(
    smoke: bool = False,
    folder: Path | None = None,
    shards: int = 50,
    suite: str = "orchestration",
    engine: str = "local",
) -> dict[str, Any]:
    """
    Run the suite, print its table and write ``<suite>.json`` (``<suite>_<engine>.json``).

    :param smoke: one spec, one shard.
    :param folder: where to write the JSON.
    :param shards: shards of the run.
    :param suite: ``orchestration`` or ``scale`` (the file written; ``scale`` uses :data:`SCALE`).
    :param engine: the deployment (:attr:`Settings.engine`).
    """
    if smoke:
        settings = Settings(
            shards=1, pool_slots=2, check_interval=10, include="*/1*.yaml", timeout=900, engine=engine
        )
    elif suite == "scale":
        settings = Settings(**{**asdict(SCALE), "shards": shards, "engine": engine})
    else:
        settings = Settings(shards=shards, engine=engine)
    document = {**run(settings), "suite": suite}
    write_result(result_name(suite, engine), document, folder)
    print(report(document))
    return document


def _cli(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("orchestration", "scale"), default="orchestration")
    parser.add_argument("--shards", type=int)
    parser.add_argument("--pool-slots", type=int)
    parser.add_argument("--parallelism", type=int)
    parser.add_argument("--check-interval", type=int)
    parser.add_argument("--hold-seconds", type=float)
    parser.add_argument("--skip-inverse-folding", action="store_true", default=None)
    parser.add_argument("--log-level")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--engine", choices=("local", "celery"), help="deployment (default local)")
    parser.add_argument("--scheduler-nice", type=int, help="the scheduler's niceness (default 0)")
    parser.add_argument("--out", type=Path, help="folder of the JSON (default benchmarks/results)")
    parser.add_argument("--keep-logs", type=Path, help="copy Airflow's and the stack's logs here")
    args = parser.parse_args(argv)
    base = SCALE if args.suite == "scale" else Settings()
    chosen = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__ and v is not None}
    settings = Settings(**{**asdict(base), **chosen})
    document = {**run(settings, keep=args.keep_logs), "suite": args.suite}
    write_result(result_name(args.suite, settings.engine), document, args.out)
    print(report(document))


if __name__ == "__main__":
    _cli()

"""``make demo``: the demo campaign end to end on the local stack, with progress, results and a summary."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boltzgen_demo import airflow_local, s3_copy
from boltzgen_demo.progress import Progress, count_jobs, plan_totals, progress_line
from boltzgen_demo.summary import cache_use, find_final_designs, format_cache_use, format_top_designs
from sagemaker_emulator.stack import LocalStack, free_ports


@dataclass(frozen=True)
class DemoSettings:
    """
    Where the demo keeps things and what it runs.

    :param campaign_file: the campaign YAML (its name gives the DAG ``boltzgen_<name>``).
    :param bucket: the bucket the campaign writes to (``BOLTZGEN_BUCKET``).
    :param state_dir: the local stack's state, and the bucket kept between demo runs.
    :param airflow_home: ``AIRFLOW_HOME``.
    :param output_dir: where results are copied.
    :param conf: the run's conf (params).
    :param fresh: forget the kept bucket, so every stage runs again.
    :param poll_seconds: seconds between progress polls.
    :param top: designs shown per spec.
    :param mixed: analysis and filtering run the real BoltzGen (the emulator's mixed engine).
    """

    campaign_file: Path
    bucket: str
    state_dir: Path
    airflow_home: Path
    output_dir: Path
    conf: Mapping[str, Any]
    fresh: bool = False
    poll_seconds: float = 3.0
    top: int = 3
    mixed: bool = False

    @property
    def kept_bucket(self) -> Path:
        """The copy of the bucket that makes the next run find its stages committed."""
        return self.state_dir / "s3" / self.bucket


def say(text: str) -> None:
    """Print one line of the demo's story."""
    print(text, flush=True)


def load_plan(campaign_file: Path) -> dict[str, Any]:
    """
    The campaign's plan, from ``boltzgen-airflow plan --json``.

    :param campaign_file: the campaign YAML.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "boltzgen_airflow.cli", "plan", str(campaign_file), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"boltzgen-airflow plan {campaign_file} failed:\n{proc.stdout}{proc.stderr}")
    plan: dict[str, Any] = json.loads(proc.stdout)
    return plan


def campaign_name(campaign_file: Path) -> str:
    """
    The ``name`` of a campaign file (plain YAML, read without the project's config model).

    :param campaign_file: the campaign YAML.
    """
    import yaml

    data = yaml.safe_load(campaign_file.read_text(encoding="utf-8"))
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{campaign_file}: field 'name' is missing or not a string")
    return name


def newest_run_row(db: Path, dag_id: str) -> int:
    """
    The row id of the DAG's newest run in the SQLite database (0 when there is none).

    :param db: the SQLite metadata database.
    :param dag_id: the DAG id.
    """
    if not db.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute("SELECT MAX(id) FROM dag_run WHERE dag_id = ?", (dag_id,)).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row and row[0] is not None else 0


def task_states(db: Path, dag_id: str, after_row: int = 0) -> dict[str, int]:
    """
    Task instance states of the DAG's newest run created after row ``after_row``, read-only from SQLite.

    Progress is a courtesy: a database that is busy or laid out differently gives no counts.

    :param db: the SQLite metadata database.
    :param dag_id: the DAG id.
    :param after_row: the newest run row before this run started (see :func:`newest_run_row`).
    """
    if not db.is_file():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? AND id > ? ORDER BY id DESC LIMIT 1",
                (dag_id, after_row),
            ).fetchone()
            if row is None:
                return {}
            run_id = row[0]
            rows = conn.execute(
                "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = ? AND run_id = ? GROUP BY state",
                (dag_id, run_id),
            ).fetchall()
    except sqlite3.Error:
        return {}
    return {str(state): int(n) for state, n in rows if state}


def list_jobs(client: Any) -> list[dict[str, Any]]:
    """
    Every processing job the emulator knows.

    :param client: a boto3 SageMaker client.
    """
    jobs: list[dict[str, Any]] = []
    for page in client.get_paginator("list_processing_jobs").paginate():
        jobs.extend(page["ProcessingJobSummaries"])
    return jobs


def _restore_bucket(stack: LocalStack, settings: DemoSettings) -> int:
    if settings.fresh:
        shutil.rmtree(settings.kept_bucket, ignore_errors=True)
        return 0
    if not settings.kept_bucket.is_dir():
        return 0
    return s3_copy.upload_folder(stack.client("s3"), settings.bucket, settings.kept_bucket)


def _keep_bucket(stack: LocalStack, settings: DemoSettings) -> int:
    tmp = settings.kept_bucket.with_name(settings.kept_bucket.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = s3_copy.download_prefix(stack.client("s3"), settings.bucket, "", tmp)
    shutil.rmtree(settings.kept_bucket, ignore_errors=True)
    tmp.rename(settings.kept_bucket)
    return count


def _watch(
    *,
    proc: subprocess.Popen[bytes],
    stack: LocalStack,
    settings: DemoSettings,
    dag_id: str,
    totals: Mapping[str, int],
    earlier_jobs: set[str],
    clock: Callable[[], float],
) -> None:
    sagemaker = stack.client("sagemaker")
    db = settings.airflow_home / "airflow.db"
    started = clock()
    last = ""
    after_row = newest_run_row(db, dag_id)
    while proc.poll() is None:
        progress = Progress()
        with contextlib.suppress(Exception):  # a poll that fails shows up as an unchanged line
            progress.jobs = count_jobs(list_jobs(sagemaker), earlier_jobs)
        progress.tasks = task_states(db, dag_id, after_row)
        line = progress_line(progress, totals)
        if line != last:
            say(f"  [{clock() - started:5.0f}s] {line}")
            last = line
        time.sleep(settings.poll_seconds)


def run_demo(settings: DemoSettings) -> int:
    """
    Start the stack, run the campaign with ``airflow dags test``, copy results out, print a summary.

    Everything started here is stopped before returning, also on failure and Ctrl-C.

    :param settings: the demo's settings.
    :return: the exit code.
    """
    began = time.monotonic()
    name = campaign_name(settings.campaign_file)
    dag_id = f"boltzgen_{name}"
    moto_port, emulator_port = free_ports(2)
    stack = LocalStack(
        settings.state_dir, moto_port, emulator_port, simulated=True, mixed=settings.mixed,
        buckets=[settings.bucket],
    )  # fmt: skip
    engine = "simulator; real BoltzGen for analysis and filtering" if settings.mixed else "simulator"
    say(f"==> local stack (moto + SageMaker emulator, BoltzGen {engine}), state in {settings.state_dir}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        planned = pool.submit(load_plan, settings.campaign_file)
        try:
            stack.start(timeout=120)
            env = airflow_local.airflow_env(settings.airflow_home, stack.env(), check_interval=1)
            env["BOLTZGEN_BUCKET"] = settings.bucket
            prepared = pool.submit(airflow_local.prepare, settings.airflow_home, env)
            restored = _restore_bucket(stack, settings)
            if restored:
                say(f"    restored {restored} objects of s3://{settings.bucket} kept from the previous run")
            say(f"==> Airflow in {settings.airflow_home} (SQLite): migrating the database, creating pools")
            pools = prepared.result()
            say("    pools: " + ", ".join(f"{k}={v}" for k, v in sorted(pools.items())))
            plan = planned.result()
            totals = plan_totals(plan)
            return _run_and_report(
                settings=settings,
                stack=stack,
                env=env,
                name=name,
                dag_id=dag_id,
                plan=plan,
                totals=totals,
                began=began,
            )
        except KeyboardInterrupt:
            say("\ninterrupted: stopping what the demo started")
            return 130
        finally:
            stack.stop()
            say("==> local stack stopped")


def _run_and_report(
    *,
    settings: DemoSettings,
    stack: LocalStack,
    env: Mapping[str, str],
    name: str,
    dag_id: str,
    plan: Mapping[str, Any],
    totals: Mapping[str, int],
    began: float,
) -> int:
    s3 = stack.client("s3")
    before = set(s3_copy.run_manifests(s3_copy.list_keys(s3, settings.bucket), name))
    earlier_jobs = {job["ProcessingJobName"] for job in list_jobs(stack.client("sagemaker"))}
    specs = len({i["spec"] for shard in plan.get("shards", []) for i in shard.get("items", [])})
    say(
        f"==> running {dag_id}: {specs} specs x {plan.get('num_designs')} designs, "
        f"{len(plan.get('shards', []))} shards, five stages (airflow dags test)"
    )
    log = settings.airflow_home / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "airflow",
        "dags",
        "test",
        dag_id,
        "--conf",
        json.dumps(dict(settings.conf)),
    ]
    with log.open("wb") as logfile:
        proc = subprocess.Popen(
            command, env=dict(env), stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            _watch(
                proc=proc,
                stack=stack,
                settings=settings,
                dag_id=dag_id,
                totals=totals,
                earlier_jobs=earlier_jobs,
                clock=time.monotonic,
            )
        finally:
            if proc.poll() is None:
                # Its own process group: Ctrl-C reaches only this runner, which stops the run here.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    runs = s3_copy.run_manifests(s3_copy.list_keys(s3, settings.bucket), name)
    new = sorted(set(runs) - before)
    if proc.returncode != 0 or not new:
        tail = log.read_text(errors="replace")[-3000:]
        say(f"\nthe run failed (airflow dags test exit {proc.returncode}); last lines of {log}:\n{tail}")
        return 1
    run = new[-1]
    manifest_key = runs[run]
    manifest = json.loads(s3.get_object(Bucket=settings.bucket, Key=manifest_key)["Body"].read())
    run_prefix = manifest_key[: -len("run.json")]
    out = settings.output_dir / name / run
    files = s3_copy.download_prefix(s3, settings.bucket, run_prefix, out, skip=("work/", "filtering/"))
    kept = _keep_bucket(stack, settings)
    specs_found = find_final_designs(out / "results")
    say(f"\n==> run {run}: {manifest.get('status')}; {format_cache_use(cache_use(manifest))}")
    say(f"    finished in {time.monotonic() - began:.0f}s (airflow log: {log})\n")
    say(format_top_designs(specs_found, settings.top))
    say(f"\nresults ({files} files): {out}")
    say(f"  report:       {out / 'report' / 'index.html'}")
    say(f"  run manifest: {out / 'run.json'}")
    for spec in specs_found:
        say(f"  {spec.spec}: {spec.csv_path.parent}")
    say(
        f"\nThe bucket ({kept} objects) is kept in {settings.kept_bucket.parent}: run `make demo` again and "
        "every stage is a cache hit (no job runs); `make demo DEMO_ARGS=--fresh` starts from an empty bucket."
    )
    return 0 if manifest.get("status") == "complete" else 1

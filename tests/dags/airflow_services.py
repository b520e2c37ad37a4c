"""
A real Airflow 3 deployment for tests: API server, scheduler, DAG processor and triggerer as
processes with their own AIRFLOW_HOME, in one of two shapes (``boltzgen_demo.engines``):

- ``local``: the LocalExecutor and a SQLite metadata database; the scheduler runs task instances in
  its own worker processes.
- ``celery``: PostgreSQL and Redis of its own (``boltzgen_demo.backing_services``) and the
  CeleryExecutor with two Celery workers standing for two machines (``worker-1``, ``worker-2``).

``pytest --engine celery`` (or ``BOLTZGEN_TEST_ENGINE=celery``) selects the shape. Task processes talk
to the API server's execution API; deferred operators and sensors wait in the triggerer. State is read
straight from the metadata database (read-only queries), which is faster than a CLI call per poll.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from boltzgen_demo import engines
from boltzgen_demo.backing_services import BackingServices

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = [sys.executable, "-m", "airflow"]
ENGINE_VARIABLE = "BOLTZGEN_TEST_ENGINE"
#: Celery workers of the ``celery`` engine and task slots of each (as many slots as ``local``'s 6).
WORKERS, WORKER_SLOTS = 2, 3


def selected_engine() -> str:
    """The engine ``--engine`` (or ``BOLTZGEN_TEST_ENGINE``) selected; ``local`` by default."""
    engine = os.environ.get(ENGINE_VARIABLE, "local")
    if engine not in engines.ENGINES:
        raise ValueError(f"{ENGINE_VARIABLE}={engine!r}: expected one of {', '.join(engines.ENGINES)}")
    return engine


class AirflowServices:
    """
    The Airflow components of one test deployment.

    :param home: the AIRFLOW_HOME (database, logs, process output).
    :param port: the API server's port.
    :param extra_env: environment the components and CLI calls get on top of ``os.environ``
        (the local stack's endpoints, ``BOLTZGEN_CAMPAIGNS_DIR``...).
    :param engine: ``local`` or ``celery``; default :func:`selected_engine`.
    """

    def __init__(
        self, home: Path, port: int, extra_env: Mapping[str, str], engine: str | None = None
    ) -> None:
        self.home = home
        self.port = port
        self.engine = engine or selected_engine()
        self.db_path = home / "airflow.db"
        self.backing: BackingServices | None = None
        workers: list[engines.CeleryWorker] = []
        if self.engine == "celery":
            # Under /tmp, which the postgres user may enter (pytest's own folders are private to root).
            folder = Path(tempfile.mkdtemp(prefix="bg-airflow-services-"))
            folder.chmod(0o755)
            self.backing = BackingServices.in_folder(folder)
            workers = engines.celery_workers(WORKERS, WORKER_SLOTS)
            engine_env = engines.celery_env(self.backing)
        else:
            # Four components write to one SQLite file: a busy writer is waited for up to a minute
            # (sqlite3's default is 5 s, which a loaded machine exceeds, and the component dies).
            engine_env = engines.local_env(home)
        self.workers = [worker.hostname for worker in workers]
        self.components = {c.name: c for c in engines.components(home, workers)}
        self.env = {
            **os.environ,
            **extra_env,
            "AIRFLOW_HOME": str(home),
            **engine_env,
            "AIRFLOW__CORE__PARALLELISM": "6",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            **engines.SCHEDULER_ENV,
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        #: When set, a component that exits is started again (as a supervisor such as Docker's
        #: ``restart: always`` does) and its name recorded in :attr:`revived`, instead of failing.
        self.restart_exited = False
        self.revived: list[str] = []

    def cli(self, *args: str, timeout: float = 120, landed: Callable[[], bool] | None = None) -> str:
        """
        Run one ``airflow`` CLI command in this deployment and return its standard output.

        :param args: the command's arguments, e.g. ``("dags", "unpause", "my_dag")``.
        :param timeout: seconds before the command is killed.
        :param landed: for a command that writes in several transactions, whether its effect is in
            the database: asked after SQLite refused a write, so the command is not sent again.
        """
        for attempt in range(1, 4):
            proc = subprocess.run(
                [*AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
            # SQLite refuses a write at once (no waiting) when it would deadlock with another writer;
            # the refused transaction was rolled back, but an earlier one of the same command may have
            # committed (``backfill create`` writes the backfill, then its runs).
            if proc.returncode == 0 or "database is locked" not in proc.stderr or attempt == 3:
                break
            if landed is not None and landed():
                return proc.stdout
            time.sleep(2 * attempt)
        if proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        return proc.stdout

    def python(self, code: str, timeout: float = 120) -> str:
        """
        Run Python code with this deployment's environment (e.g. to create pools with project code).

        :param code: the source to run.
        :param timeout: seconds before it is killed.
        """
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"python failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return proc.stdout

    def start(self, timeout: float = 120) -> None:
        """Migrate the database, start every component, and wait for the API server to answer."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.backing is not None:
            self.backing.start()
        self.cli("db", "migrate", timeout=300)
        for name in self.components:
            self._spawn(name)
        self.wait_for(self._api_up, timeout, "the API server to answer")

    def _spawn(self, name: str) -> None:
        component = self.components[name]
        log = (self.home / f"{name}.out").open("ab")
        self._logs.append(log)
        self._procs[name] = subprocess.Popen(
            [*AIRFLOW, *component.args],
            env={**self.env, **component.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches workers and children
        )

    def kill(self, *names: str) -> None:
        """
        Kill components at once, with every process they started, as when the machine they run on
        dies: the scheduler's LocalExecutor workers and their task processes die with it.

        SIGKILL goes to the component's process group and to each of its descendants: Airflow's task
        supervisor puts every task process in a process group of its own, which would otherwise
        outlive its worker until it next spoke to its (dead) supervisor.

        :param names: components (``scheduler``, ``triggerer``, ``worker-1``...).
        """
        import psutil

        for name in names:
            proc = self._procs.pop(name)
            try:
                descendants = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.wait(timeout=30)

    def restart(self, *names: str) -> None:
        """:param names: components killed with :meth:`kill`; start them again."""
        for name in names:
            self._spawn(name)

    def exited(self) -> list[str]:
        """The components whose process has exited (forgotten, so :meth:`restart` starts them again)."""
        gone = [name for name, proc in self._procs.items() if proc.poll() is not None]
        for name in gone:
            self._procs.pop(name)
        return gone

    def restart_database(self, down_for: float = 5.0) -> None:
        """
        Restart PostgreSQL as after a crash (every server process quits at once, the start recovers).

        :param down_for: seconds it stays down.
        """
        if self.backing is None:
            raise RuntimeError("the local engine has no database server to restart")
        self.backing.postgres.stop("immediate")
        time.sleep(down_for)
        self.backing.postgres.start()

    def _api_up(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2):
                return True
        except OSError:
            return False

    def check_alive(self) -> None:
        """Fail with the component's output when one of them has exited (see :attr:`restart_exited`)."""
        if self.restart_exited:
            for name in self.exited():
                self.revived.append(name)
                self._spawn(name)
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}:\n{self.output(name)[-4000:]}"
                )

    def output(self, name: str) -> str:
        """:param name: a component (``scheduler``...); what it printed so far."""
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop every component and its children (SIGTERM to the process group, then SIGKILL)."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for log in self._logs:
            log.close()
        self._procs.clear()
        if self.backing is not None:
            self.backing.stop()
            with contextlib.suppress(OSError):
                shutil.copy(self.backing.postgres.folder / "server.log", self.home / "postgres.out")
            shutil.rmtree(self.backing.folder, ignore_errors=True)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """
        Read the metadata database.

        :param sql: a SELECT statement (``?`` for parameters, whatever the database).
        :param params: its parameters.
        """
        if self.backing is not None:
            return self._query_postgres(sql.replace("?", "%s"), params)
        with contextlib.closing(
            sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        ) as conn:
            return list(conn.execute(sql, params).fetchall())

    def _query_postgres(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg2

        assert self.backing is not None
        server = self.backing.postgres
        for attempt in range(30):  # the server may be restarting (restart_database)
            try:
                with contextlib.closing(psycopg2.connect(server.url("postgresql"))) as conn:
                    conn.set_session(readonly=True, autocommit=True)
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                        return [tuple(row) for row in cur.fetchall()]
            except psycopg2.OperationalError:
                if attempt == 29:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """:param dag_id: the DAG; its runs, oldest first, as dicts of the columns below."""
        keys = ("run_id", "state", "run_type", "logical_date", "backfill_id")
        rows = self.query(f"SELECT {', '.join(keys)} FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id)
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """:param dag_id: the DAG. :param run_id: the run; ``task_id[map_index]`` -> state."""
        rows = self.query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            dag_id,
            run_id,
        )
        return {f"{task}[{index}]": str(state) for task, index, state in rows}

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
        """
        Poll ``condition`` until it returns something truthy, checking that every component lives.

        :param condition: returns a truthy value when done.
        :param timeout: seconds.
        :param what: what is awaited (for the error message).
        :param interval: seconds between polls.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                tail = self.output("scheduler")[-3000:]
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; scheduler:\n{tail}")
            time.sleep(interval)

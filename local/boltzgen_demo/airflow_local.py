"""A local Airflow for the project: its environment, database, pools, and background components."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boltzgen_demo import engines

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS: tuple[str, ...] = engines.CORE_COMPONENTS
ADMIN_USER = "admin"
_PIDS_FILE = "local-airflow.json"
_POOLS_SNIPPET = """
import json
from boltzgen_airflow.campaign.loading import campaign_files, load_campaign
from boltzgen_airflow.dag.pools import ensure_pools
from boltzgen_airflow.settings import campaigns_dir
campaigns = []
for path in campaign_files(campaigns_dir()):
    try:
        campaigns.append(load_campaign(path))
    except Exception as err:
        print(f"skipping {path}: {err}", flush=True)
print(json.dumps(ensure_pools(campaigns)))
"""


class AirflowError(RuntimeError):
    """A local Airflow step failed."""


def project_root() -> Path:
    """The project folder (where ``pyproject.toml`` is), else the working directory."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def airflow_env(
    home: Path,
    stack_env: Mapping[str, str],
    *,
    check_interval: int = 2,
    api_port: int = 8080,
    engine_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    The environment of every Airflow command: this project's DAGs and plugins, the engine, the local stack.

    :param home: ``AIRFLOW_HOME``.
    :param stack_env: what ``LocalStack.env()`` returns (endpoints, dummy keys, ``AIRFLOW_CONN_AWS_DEFAULT``).
    :param check_interval: seconds between SageMaker/S3 polls of the campaign tasks.
    :param api_port: the API server's port.
    :param engine_env: the executor and database (``engines.celery_env``); default SQLite and the
        LocalExecutor (``engines.local_env``).
    """
    root = project_root()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_", "AIRFLOW__"))}
    return {
        **base,
        **stack_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        **(engines.local_env(home) if engine_env is None else engine_env),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        **engines.SCHEDULER_ENV,
        "BOLTZGEN_CHECK_INTERVAL": str(check_interval),
        "PYTHONUNBUFFERED": "1",
    }


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def _run(command: list[str], env: Mapping[str, str], what: str, log: Path) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False)
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise AirflowError(f"{what} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def prepare(home: Path, env: Mapping[str, str]) -> dict[str, int]:
    """
    Migrate the metadata database and create the pools of the campaigns' instance types.

    :param home: ``AIRFLOW_HOME``.
    :param env: what :func:`airflow_env` returned.
    :return: pool name -> slots.
    """
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    _run(_airflow("db", "migrate"), env, "airflow db migrate", logs / "db-migrate.log")
    out = _run([sys.executable, "-c", _POOLS_SNIPPET], env, "creating the pools", logs / "pools.log")
    pools: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return pools


# -- the long-running components of `make up` ---------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"airflow" in cmdline


def start_components(
    home: Path, env: Mapping[str, str], components: Sequence[engines.Component] | None = None
) -> dict[str, int]:
    """
    Start the API server, scheduler, DAG processor and triggerer (and any Celery workers) in the background.

    Each runs in its own process group with its log under ``<home>/logs/<component>.log``; the pids
    go to ``<home>/local-airflow.json`` so :func:`stop_components` stops exactly these.

    :param home: ``AIRFLOW_HOME``.
    :param env: what :func:`airflow_env` returned.
    :param components: what to start (``engines.components``); default the four core components.
    :return: component -> pid.
    """
    if running_components(home):
        raise AirflowError(f"a local Airflow is already running from {home}; run `make down` first")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    try:
        for component in engines.components(home) if components is None else components:
            with (logs / f"{component.name}.log").open("ab") as logfile:
                proc = subprocess.Popen(
                    _airflow(*component.args),
                    env={**env, **component.env},
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    cwd=str(home),
                    start_new_session=True,
                )
            pids[component.name] = proc.pid
            _write_pids(home, pids)
    except BaseException:
        stop_components(home)
        raise
    return pids


def _write_pids(home: Path, pids: Mapping[str, int]) -> None:
    (home / _PIDS_FILE).write_text(json.dumps(dict(pids), indent=2), encoding="utf-8")


def recorded_components(home: Path) -> dict[str, int]:
    """
    The components recorded by :func:`start_components` (alive or not).

    :param home: ``AIRFLOW_HOME``.
    """
    try:
        data = json.loads((home / _PIDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def running_components(home: Path) -> dict[str, int]:
    """
    The recorded components whose processes still run.

    :param home: ``AIRFLOW_HOME``.
    """
    return {name: pid for name, pid in recorded_components(home).items() if _alive(pid)}


def stop_components(home: Path, timeout: float = 20.0) -> list[str]:
    """
    Stop the recorded components (their process groups: SIGTERM, then SIGKILL after ``timeout``).

    :param home: ``AIRFLOW_HOME``.
    :param timeout: seconds to wait for a clean exit.
    :return: the components that were running.
    """
    running = running_components(home)
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in running.values()):
        time.sleep(0.2)
    for pid in running.values():
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (home / _PIDS_FILE).unlink()
    return sorted(running)


def wait_for_api(url: str, home: Path, timeout: float = 180.0) -> None:
    """
    Wait until ``<url>/api/v2/monitor/health`` answers.

    :param url: the API server's base URL.
    :param home: ``AIRFLOW_HOME`` (to tell when the API server process died).
    :param timeout: seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if "api-server" not in running_components(home):
            break
        time.sleep(1)
    tail = ""
    with contextlib.suppress(OSError):
        tail = (home / "logs" / "api-server.log").read_text(errors="replace")[-2000:]
    raise AirflowError(f"the API server did not answer at {url} within {timeout:.0f}s:\n{tail}")


def admin_password(home: Path) -> str | None:
    """
    The generated password of the admin user (simple auth manager), once the API server wrote it.

    :param home: ``AIRFLOW_HOME``.
    """
    try:
        passwords: Any = json.loads(
            (home / "simple_auth_manager_passwords.json.generated").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return None
    value = passwords.get(ADMIN_USER) if isinstance(passwords, dict) else None
    return str(value) if value else None

"""
The two local deployment shapes of Airflow and the components each runs.

``local``: SQLite and the LocalExecutor (the scheduler runs tasks in its own worker processes), the
embedded default of ``make demo`` and ``make up``. ``celery``: PostgreSQL, Redis and the
CeleryExecutor with Celery workers standing for separate machines, each with its own hostname (the
one Airflow records for its task instances), its own queue next to the shared default one and its
own log server port; the shape of ``docker-compose.yaml`` and of Amazon MWAA.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from boltzgen_demo.backing_services import BackingServices
from sagemaker_emulator.stack import free_ports

ENGINES = ("local", "celery")
#: The components every deployment runs.
CORE_COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The scheduler's settings in every deployment, as in docker-compose.yaml. Each loop queues as many
#: tasks as there are free slots (default: at most 16): a campaign of hundreds of shards makes one
#: loop take seconds, and slots refill once per loop.
SCHEDULER_ENV: Mapping[str, str] = {"AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "0"}
#: The queue every task goes to unless it names another (``operators.default_queue``).
DEFAULT_QUEUE = "default"
#: The environment variable :func:`worker_hostname` answers with.
HOSTNAME_VARIABLE = "BOLTZGEN_WORKER_HOSTNAME"


@dataclass(frozen=True)
class Component:
    """
    One long-running Airflow process.

    :param name: how logs, pid records and ``kill``/``restart`` name it.
    :param args: its ``airflow`` command line, e.g. ``("scheduler",)``.
    :param env: environment on top of the deployment's.
    """

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def worker_hostname() -> str:
    """The hostname of this Celery worker (``core.hostname_callable`` of the workers), else the FQDN."""
    return os.environ.get(HOSTNAME_VARIABLE) or socket.getfqdn()


@dataclass(frozen=True)
class CeleryWorker:
    """
    A Celery worker standing for a machine of its own.

    :param hostname: its name: Celery's node ``celery@<hostname>``, Airflow's task instance hostname,
        and a queue of its own (it also consumes the default queue).
    :param log_server_port: where it serves its task logs (each machine would use 8793).
    :param concurrency: task slots (Celery prefork processes).
    """

    hostname: str
    log_server_port: int
    concurrency: int

    def component(self, home: Path) -> Component:
        """:param home: ``AIRFLOW_HOME`` (its pid file goes there); the worker's process."""
        return Component(
            self.hostname,
            (
                "celery",
                "worker",
                "--queues",
                f"{DEFAULT_QUEUE},{self.hostname}",
                "--concurrency",
                str(self.concurrency),
                "--celery-hostname",
                f"celery@{self.hostname}",
                "--pid",
                str(home / f"{self.hostname}.pid"),
            ),
            {
                HOSTNAME_VARIABLE: self.hostname,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
            },
        )


def celery_workers(count: int = 2, concurrency: int = 4) -> list[CeleryWorker]:
    """
    :param count: workers (machines).
    :param concurrency: task slots of each.
    :return: workers ``worker-1`` ... ``worker-<count>`` on free log server ports.
    """
    if count < 1 or concurrency < 1:
        raise ValueError(f"workers need count >= 1 and concurrency >= 1, got {count} and {concurrency}")
    return [
        CeleryWorker(f"worker-{number}", port, concurrency)
        for number, port in enumerate(free_ports(count), start=1)
    ]


def local_env(home: Path) -> dict[str, str]:
    """:param home: ``AIRFLOW_HOME``; SQLite in it and the LocalExecutor."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # The components share one SQLite file: wait up to a minute for a busy writer (default 5 s).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=60",
    }


def celery_env(services: BackingServices) -> dict[str, str]:
    """:param services: PostgreSQL and Redis; the CeleryExecutor's settings, as in docker-compose.yaml."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": services.postgres.url(),
        "AIRFLOW__CELERY__RESULT_BACKEND": services.postgres.url("db+postgresql"),
        "AIRFLOW__CELERY__BROKER_URL": services.redis.url(),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
    }


def components(home: Path, workers: Sequence[CeleryWorker] = ()) -> list[Component]:
    """
    :param home: ``AIRFLOW_HOME``.
    :param workers: the Celery workers (none for the local engine).
    :return: every long-running process of the deployment, the API server first.
    """
    return [Component(name, (name,)) for name in CORE_COMPONENTS] + [w.component(home) for w in workers]

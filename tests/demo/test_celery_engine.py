"""
The Celery deployment's parts: PostgreSQL and Redis from Debian's packages as plain processes
(``backing_services``), and the workers standing for separate machines (``engines``).

The servers are real (started, queried over TCP, crashed and restarted); the tests skip where the
packages are absent and cannot be installed (not root).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from boltzgen_demo import engines
from boltzgen_demo.backing_services import DB_NAME, BackingServices, ServiceError, ensure_installed


@pytest.fixture(scope="module")
def services() -> Iterator[BackingServices]:
    try:
        ensure_installed()
    except ServiceError as err:
        pytest.skip(str(err))
    # Under /tmp, which the postgres user may enter when the tests run as root.
    folder = Path(tempfile.mkdtemp(prefix="bg-backing-test-"))
    folder.chmod(0o755)
    running = BackingServices.in_folder(folder / "services").start()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(folder, ignore_errors=True)


def sql(services: BackingServices, statement: str) -> list[tuple[object, ...]]:
    import psycopg2

    with psycopg2.connect(services.postgres.url("postgresql")) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return list(cur.fetchall()) if cur.description else []


def redis_says(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(64)


def test_postgres_serves_the_airflow_database_on_loopback_only(services: BackingServices) -> None:
    assert sql(services, "SELECT current_database(), current_user") == [(DB_NAME, "airflow")]
    assert sql(services, "SHOW listen_addresses") == [("127.0.0.1",)]
    # A wrong password is refused: loopback connections authenticate (scram-sha-256).
    import psycopg2

    wrong = services.postgres.url("postgresql").replace("airflow:airflow@", "airflow:wrong@")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong)


def test_redis_answers_on_loopback(services: BackingServices) -> None:
    assert redis_says(services.redis.port, b"PING\r\n").startswith(b"+PONG")
    assert b"127.0.0.1" in redis_says(services.redis.port, b"CONFIG GET bind\r\n")


def test_postgres_crash_and_restart_keeps_committed_data(services: BackingServices) -> None:
    sql(services, "CREATE TABLE IF NOT EXISTS kept (n int)")
    sql(services, "INSERT INTO kept VALUES (7)")
    services.postgres.stop("immediate")
    assert not services.postgres.is_running()
    services.postgres.start()
    assert sql(services, "SELECT n FROM kept") == [(7,)]


def test_a_second_start_reuses_the_recorded_ports_and_data(services: BackingServices) -> None:
    again = BackingServices.in_folder(services.folder)
    assert (again.postgres.port, again.redis.port) == (services.postgres.port, services.redis.port)
    again.start()  # both already run: nothing restarts, nothing is created twice
    assert sql(services, "SELECT count(*) FROM pg_database WHERE datname = 'airflow'") == [(1,)]


def test_a_folder_postgres_cannot_enter_is_refused_naming_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ServiceError, match=r"cannot enter .*private"):
        BackingServices.in_folder(private / "services").postgres.start()


def test_workers_stand_for_separate_machines(tmp_path: Path) -> None:
    workers = engines.celery_workers(2, concurrency=3)
    assert [w.hostname for w in workers] == ["worker-1", "worker-2"]
    assert len({w.log_server_port for w in workers}) == 2
    first = workers[0].component(tmp_path)
    assert first.args[:2] == ("celery", "worker")
    assert first.args[first.args.index("--queues") + 1] == "default,worker-1"
    assert first.args[first.args.index("--celery-hostname") + 1] == "celery@worker-1"
    assert first.env[engines.HOSTNAME_VARIABLE] == "worker-1"
    # Airflow records the hostname its callable answers with; each worker answers with its name.
    assert first.env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "boltzgen_demo.engines.worker_hostname"
    names = [c.name for c in engines.components(tmp_path, workers)]
    assert names == [*engines.CORE_COMPONENTS, "worker-1", "worker-2"]
    with pytest.raises(ValueError, match="count >= 1"):
        engines.celery_workers(0)


def test_worker_hostname_answers_with_the_workers_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.HOSTNAME_VARIABLE, "worker-2")
    assert engines.worker_hostname() == "worker-2"
    monkeypatch.delenv(engines.HOSTNAME_VARIABLE)
    assert engines.worker_hostname() == socket.getfqdn()


def test_celery_settings_point_at_the_backing_services(services: BackingServices) -> None:
    env = engines.celery_env(services)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:{services.redis.port}/0"

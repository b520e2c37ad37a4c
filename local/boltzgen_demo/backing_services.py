"""
PostgreSQL and Redis for the Celery deployment, from Debian's packages, as plain processes on loopback.

``python -m boltzgen_demo.backing_services up|down|status|restart-postgres --dir DIR`` runs them by
hand; ``make up UP_ARGS=--engine celery`` and the test harness use :class:`BackingServices`. Both
servers keep their data under ``DIR`` and listen on 127.0.0.1 only, on free ports recorded in
``DIR/services.json``. The credentials are the local dummies of ``docker-compose.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_emulator.stack import free_ports

HOST = "127.0.0.1"
#: Local dummies, as in docker-compose.yaml; nothing outside this machine accepts them.
DB_USER = DB_PASSWORD = DB_NAME = "airflow"  # noqa: S105 - a local dummy
#: PostgreSQL refuses to run as root; Debian's package creates this user.
POSTGRES_USER = "postgres"
_RECORD = "services.json"


class ServiceError(RuntimeError):
    """PostgreSQL or Redis could not be installed, started or stopped."""


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else the one on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3].split(".")[0])
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def ensure_installed() -> None:
    """Install Debian's ``postgresql`` and ``redis-server`` with apt-get when either is missing."""
    missing = [
        package
        for package, present in (
            ("postgresql", postgres_bin() is not None),
            ("redis-server", shutil.which("redis-server") is not None),
        )
        if not present
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ServiceError(
            f"{', '.join(missing)} not installed; run: sudo apt-get install -y {' '.join(missing)}"
        )
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"apt-get install {' '.join(missing)} failed:\n{proc.stderr[-2000:]}")


def _as_postgres() -> dict[str, Any]:
    """``subprocess`` arguments that run a command as the ``postgres`` user when this process is root."""
    if os.geteuid() != 0:
        return {}
    return {"user": POSTGRES_USER, "group": pwd.getpwnam(POSTGRES_USER).pw_gid, "extra_groups": []}


def _check_reachable(folder: Path) -> None:
    """Root runs PostgreSQL as ``postgres``, which must be able to walk down to ``folder``."""
    if os.geteuid() != 0:
        return
    for parent in folder.resolve().parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise ServiceError(
                f"{folder}: the {POSTGRES_USER} user cannot enter {parent} (mode "
                f"{oct(parent.stat().st_mode & 0o777)}); put the data folder where others may enter"
            )


@dataclass
class PostgresServer:
    """
    One PostgreSQL cluster under ``folder`` (``data/`` and ``server.log``), listening on loopback.

    :param folder: where the cluster lives; created, and owned by ``postgres`` when run as root.
    :param port: its TCP port on 127.0.0.1.
    """

    folder: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def url(self, scheme: str = "postgresql+psycopg2") -> str:
        """:param scheme: e.g. ``db+postgresql`` for Celery's result backend; the database's URL."""
        return f"{scheme}://{DB_USER}:{DB_PASSWORD}@{HOST}:{self.port}/{DB_NAME}"

    def _tool(self, name: str) -> str:
        found = postgres_bin()
        if found is None:
            raise ServiceError("PostgreSQL is not installed (apt-get install postgresql)")
        return str(found / name)

    def _run(self, *command: str, what: str) -> None:
        proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/", **_as_postgres())
        if proc.returncode != 0:
            raise ServiceError(
                f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}"
            )

    def _init(self) -> None:
        _check_reachable(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            account = pwd.getpwnam(POSTGRES_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        password = self.folder / "password"
        password.write_text(DB_PASSWORD + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            os.chown(password, pwd.getpwnam(POSTGRES_USER).pw_uid, -1)
        try:
            self._run(
                self._tool("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                DB_USER,
                f"--pwfile={password}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--encoding=UTF8",
                what=f"initdb {self.data_dir}",
            )
        finally:
            password.unlink()

    def _configure(self) -> None:
        # Loopback TCP only (no Unix socket: its path would depend on folders outside the project).
        settings = (
            f"listen_addresses = '{HOST}'\nport = {self.port}\nunix_socket_directories = ''\n"
            "max_connections = 200\nfsync = off\n"
        )
        (self.data_dir / "postgresql.auto.conf").write_text(settings, encoding="utf-8")

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster and its ``airflow`` database on first use, start it, wait until it serves."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._init()
        self._configure()
        if not self.is_running():
            self._run(
                self._tool("pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.folder / "server.log"),
                "-w",
                "-t",
                str(int(timeout)),
                what=f"starting PostgreSQL on {HOST}:{self.port} (log {self.folder / 'server.log'})",
            )
        self._create_database(timeout)

    def _create_database(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(
                    host=HOST, port=self.port, user=DB_USER, password=DB_PASSWORD, dbname="postgres"
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()

    def is_running(self) -> bool:
        """Whether a server runs on this cluster (``pg_ctl status``)."""
        if not (self.data_dir / "postmaster.pid").exists() or postgres_bin() is None:
            return False
        proc = subprocess.run(
            [self._tool("pg_ctl"), "status", "-D", str(self.data_dir)],
            capture_output=True,
            check=False,
            cwd="/",
            **_as_postgres(),
        )
        return proc.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """
        Stop the server.

        :param mode: ``fast`` (roll back open transactions, shut down cleanly) or ``immediate``
            (every process quits at once, as when the machine fails; the next start recovers).
        """
        if self.is_running():
            self._run(
                self._tool("pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                what="stopping PostgreSQL",
            )


@dataclass
class RedisServer:
    """
    One Redis server (the Celery broker) on loopback, without persistence: queued messages live in
    memory, as on a broker node that restarts empty.

    :param folder: where its pid and log go.
    :param port: its TCP port on 127.0.0.1.
    """

    folder: Path
    port: int

    def url(self, db: int = 0) -> str:
        """:param db: the Redis database number; the broker URL."""
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def _pid_file(self) -> Path:
        return self.folder / "redis.pid"

    def _pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text(encoding="utf-8"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"redis-server" in cmdline else None

    def is_running(self) -> bool:
        """Whether the recorded server still runs."""
        return self._pid() is not None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server unless it runs, and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        proc = None
        if not self.is_running():
            binary = shutil.which("redis-server")
            if binary is None:
                raise ServiceError("Redis is not installed (apt-get install redis-server)")
            with (self.folder / "redis.log").open("ab") as log:
                proc = subprocess.Popen(
                    [
                        *(binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.folder)),
                        *("--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._pid_file.write_text(str(proc.pid), encoding="utf-8")
        deadline = time.monotonic() + timeout
        while not self._answers():
            # The child's own handle: until it has exec'd, /proc does not name redis-server yet.
            exited = proc.poll() is not None if proc is not None else not self.is_running()
            if time.monotonic() > deadline or exited:
                raise ServiceError(
                    f"Redis did not answer on {HOST}:{self.port}; see {self.folder / 'redis.log'}"
                )
            time.sleep(0.2)

    def _answers(self) -> bool:
        import socket

        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)


@dataclass
class BackingServices:
    """
    PostgreSQL and Redis of one deployment, under one folder.

    :param folder: ``postgres/`` and ``redis/`` go here; ``services.json`` records their ports.
    :param postgres: the metadata database (and Celery's result backend).
    :param redis: the Celery broker.
    """

    folder: Path
    postgres: PostgresServer
    redis: RedisServer

    @classmethod
    def in_folder(cls, folder: Path) -> BackingServices:
        """:param folder: the services' folder; the ports recorded there, else free ones."""
        folder = folder.resolve()
        try:
            ports = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
            pg_port, redis_port = int(ports["postgres"]), int(ports["redis"])
        except (OSError, ValueError, KeyError, TypeError):
            pg_port, redis_port = free_ports(2)
        return cls(
            folder, PostgresServer(folder / "postgres", pg_port), RedisServer(folder / "redis", redis_port)
        )

    def start(self, timeout: float = 60.0) -> BackingServices:
        """Install the packages when missing, start both servers, record their ports."""
        ensure_installed()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / _RECORD).write_text(
            json.dumps({"postgres": self.postgres.port, "redis": self.redis.port}), encoding="utf-8"
        )
        self.redis.start(timeout)
        try:
            self.postgres.start(timeout)
        except BaseException:
            self.redis.stop()
            raise
        return self

    def stop(self) -> list[str]:
        """Stop both servers (data kept); :return: the ones that were running."""
        running = [
            name
            for name, server in (("postgres", self.postgres), ("redis", self.redis))
            if server.is_running()
        ]
        self.postgres.stop()
        self.redis.stop()
        return running


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m boltzgen_demo.backing_services up|down|status|restart-postgres --dir DIR``."""
    parser = argparse.ArgumentParser(prog="python -m boltzgen_demo.backing_services", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status", "restart-postgres"))
    parser.add_argument("--dir", type=Path, required=True, help="the services' data folder")
    args = parser.parse_args(argv)
    services = BackingServices.in_folder(args.dir)
    try:
        if args.command == "up":
            services.start()
        elif args.command == "down":
            print("stopped: " + (", ".join(services.stop()) or "nothing (not running)"))
            return 0
        elif args.command == "restart-postgres":
            services.postgres.stop("immediate")
            services.postgres.start()
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, server, url in (
        ("postgres", services.postgres, services.postgres.url()),
        ("redis", services.redis, services.redis.url()),
    ):
        print(f"{name}: {'running' if server.is_running() else 'not running'} {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

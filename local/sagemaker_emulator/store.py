"""The job table, in SQLite in the state directory so that it survives an emulator restart."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVE_STATUSES = ("InProgress", "Stopping")
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    tags TEXT NOT NULL,
    creation_time REAL NOT NULL,
    last_modified_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    failure_reason TEXT,
    exit_message TEXT,
    pid INTEGER,
    workspace TEXT
)
"""


@dataclass
class Job:
    """One processing job as the emulator records it."""

    name: str
    arn: str
    status: str
    request: dict[str, Any]
    tags: list[dict[str, str]] = field(default_factory=list)
    creation_time: float = 0.0
    last_modified_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    failure_reason: str | None = None
    exit_message: str | None = None
    pid: int | None = None
    workspace: str | None = None

    @property
    def instance_type(self) -> str:
        """The instance type the job runs on (the one selected from its InstancePreferences)."""
        cluster = self.request["ProcessingResources"]["ClusterConfig"]
        return str(cluster.get("SelectedInstanceType") or cluster["InstanceType"])

    @property
    def instance_count(self) -> int:
        """How many instances the job asked for."""
        return int(self.request["ProcessingResources"]["ClusterConfig"].get("InstanceCount", 1))


_COLUMNS = (
    "name", "arn", "status", "request", "tags", "creation_time", "last_modified_time", "start_time",
    "end_time", "failure_reason", "exit_message", "pid", "workspace",
)  # fmt: skip


def _to_job(row: sqlite3.Row) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["request"] = json.loads(data["request"])
    data["tags"] = json.loads(data["tags"])
    return Job(**data)


class JobStore:
    """
    Thread-safe persistence of processing jobs.

    :param path: the SQLite file.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def insert(self, job: Job) -> bool:
        """
        Add a job; return False when a job of that name exists already.

        :param job: the new job.
        """
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",  # noqa: S608
                    (
                        job.name,
                        job.arn,
                        job.status,
                        json.dumps(job.request),
                        json.dumps(job.tags),
                        job.creation_time,
                        job.last_modified_time,
                        job.start_time,
                        job.end_time,
                        job.failure_reason,
                        job.exit_message,
                        job.pid,
                        job.workspace,
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            return True

    def get(self, name: str) -> Job | None:
        """:param name: the job name."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _to_job(row) if row else None

    def get_by_arn(self, arn: str) -> Job | None:
        """:param arn: the job ARN."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE arn = ?",  # noqa: S608
                (arn,),
            ).fetchone()
        return _to_job(row) if row else None

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY creation_time",  # noqa: S608
            ).fetchall()
        return [_to_job(r) for r in rows]

    def update(self, name: str, **fields: Any) -> None:
        """
        Change fields of a job; ``last_modified_time`` moves with every change.

        :param name: the job name.
        :param fields: column values, e.g. ``status="Completed"``.
        """
        fields.setdefault("last_modified_time", time.time())
        if "tags" in fields:
            fields["tags"] = json.dumps(fields["tags"])
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE name = ?",  # noqa: S608
                (*fields.values(), name),
            )

    def transition(self, name: str, allowed_from: tuple[str, ...], **fields: Any) -> bool:
        """
        Change a job only when it is in one of ``allowed_from`` (atomically); return whether it changed.

        :param name: the job name.
        :param allowed_from: the statuses the job may be in.
        :param fields: column values to set.
        """
        with self._lock:
            job = self.get(name)
            if job is None or job.status not in allowed_from:
                return False
            self.update(name, **fields)
            return True

    def active_instances(self, instance_type: str) -> int:
        """
        Count the instances of a type held by jobs that are not finished.

        :param instance_type: e.g. ``ml.g5.xlarge``.
        """
        with self._lock:
            return sum(
                job.instance_count
                for job in self.all()
                if job.status in ACTIVE_STATUSES and job.instance_type == instance_type
            )

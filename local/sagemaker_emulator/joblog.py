"""A job's log: a local file per job and a CloudWatch Logs stream, as SageMaker writes it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
_FLUSH_SECONDS = 1.0
_FLUSH_LINES = 500

log = logging.getLogger(__name__)


class JobLog:
    """
    Write the container's output to ``path`` and to the stream ``<job>/algo-1-<epoch>``.

    :param path: the local log file.
    :param job_name: the processing job name.
    :param logs_client: a boto3 CloudWatch Logs client, or None for the local file only.
    """

    def __init__(self, path: Path, job_name: str, logs_client: Any | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.stream = f"{job_name}/algo-1-{int(time.time())}"
        self._file = path.open("a", encoding="utf-8")
        self._client = logs_client
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        if self._client is not None:
            try:
                with contextlib.suppress(self._client.exceptions.ResourceAlreadyExistsException):
                    self._client.create_log_group(logGroupName=LOG_GROUP)
                self._client.create_log_stream(logGroupName=LOG_GROUP, logStreamName=self.stream)
            except Exception as exc:  # a log sink must never fail the job
                log.warning("CloudWatch Logs unavailable for %s: %s", job_name, exc)
                self._client = None

    def write(self, line: str) -> None:
        """:param line: one line of output, without its newline."""
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if self._client is not None:
                self._buffer.append({"timestamp": int(time.time() * 1000), "message": line})
                if len(self._buffer) >= _FLUSH_LINES or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
                    self._flush()

    def flush(self) -> None:
        """Send what is buffered to CloudWatch Logs now."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        """Flush what is buffered and close the file."""
        with self._lock:
            self._flush()
            self._file.close()

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer or self._client is None:
            return
        events, self._buffer = self._buffer, []
        try:
            self._client.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.stream, logEvents=events)
        except Exception as exc:  # a log sink must never fail the job
            log.warning("could not write %d log events to %s: %s", len(events), self.stream, exc)

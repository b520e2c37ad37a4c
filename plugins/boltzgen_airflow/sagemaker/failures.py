"""What a processing job that did not complete says about itself, as the text of the task's error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Enough lines to show a step script's traceback; the full log is behind the task's extra link.
TAIL_LINES = 20


def job_failure_text(
    name: str,
    description: Mapping[str, Any],
    log_tail: Sequence[str],
    *,
    waiter_message: str = "",
    lines: int = TAIL_LINES,
) -> str:
    """
    Return the reason a job ended other than Completed: its status, SageMaker's ``FailureReason``,
    the container's ``ExitMessage`` and the last lines of its log.

    SageMaker's ``FailureReason`` of a container that exits non-zero is only "AlgorithmError: See
    job logs for more information"; the step script's own reason is its ``ExitMessage`` (what it
    wrote to ``/opt/ml/output/message``), and the log holds the rest.

    :param name: the processing job.
    :param description: its DescribeProcessingJob response (empty when it could not be read).
    :param log_tail: the last lines of its CloudWatch log (see
        :func:`~boltzgen_airflow.sagemaker.hooks.processing_log_tail`).
    :param waiter_message: what the wait for the job said, shown when the job has no FailureReason.
    :param lines: how many of those lines to keep.
    """
    status = description.get("ProcessingJobStatus") or "unknown"
    parts = [f"job {name} ended {status}"]
    for field in ("FailureReason", "ExitMessage"):
        value = " ".join(str(description.get(field) or "").split())
        if value:
            parts.append(f"{field}: {value}")
    if waiter_message and not description.get("FailureReason"):
        parts.append(f"wait: {' '.join(waiter_message.split())}")
    text = "\n".join(parts)
    kept = [line.rstrip() for line in log_tail][-lines:] if lines > 0 else []
    if kept:
        text += f"\nlast {len(kept)} log lines:\n" + "\n".join(f"  {line}" for line in kept)
    return text

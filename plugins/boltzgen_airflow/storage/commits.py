"""
The S3 attempt/commit protocol: nothing is lost, nothing is done twice.

Every job writes to its own attempt prefix ``<prefix>/cache/<stage>/<key>/attempts/<job>/``, never
overwritten. Once an attempt's ``_manifest.json`` verifies, a single PutObject of a small JSON
(``_COMMITTED.json``) points the stage key at it; readers follow the commit. Verification is a pure
function of the manifest and a listing so the synchronous sensor and the async trigger share it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from boltzgen_airflow.exceptions import CommitError
from boltzgen_airflow.storage.s3 import join_key, list_sizes, read_json, with_retries

MANIFEST_FILE = "_manifest.json"
COMMIT_FILE = "_COMMITTED.json"
COMMIT_SCHEMA = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """
    The outcome of checking one attempt against its manifest.

    :param ok: whether the attempt may be committed.
    :param problems: what is wrong, one line each.
    :param designs_expected: designs the work asked for.
    :param designs_produced: designs the job produced.
    """

    ok: bool
    problems: list[str] = field(default_factory=list)
    designs_expected: int = 0
    designs_produced: int = 0


def verify_manifest(
    manifest: Mapping[str, Any], listing: Mapping[str, int], min_fraction: float, *, stage: str | None = None
) -> Verification:
    """
    Check a stage's manifest against what is in its attempt prefix.

    :param manifest: the parsed ``_manifest.json``.
    :param listing: relative path -> size of every object under the attempt prefix.
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param stage: the stage the manifest must belong to (not checked when None).
    """
    problems: list[str] = []
    if manifest.get("schema") != 1:
        problems.append(f"unsupported manifest schema {manifest.get('schema')!r} (expected 1)")
    if stage is not None and manifest.get("stage") != stage:
        problems.append(f"manifest is for stage {manifest.get('stage')!r}, expected {stage!r}")
    files = manifest.get("files")
    if not isinstance(files, list):
        problems.append("manifest has no 'files' list")
        files = []
    missing, wrong_size = [], []
    for entry in files:
        path, size = entry.get("path"), entry.get("size")
        if path not in listing:
            missing.append(path)
        elif size != listing[path]:
            wrong_size.append(f"{path} ({listing[path]} bytes, manifest says {size})")
    if missing:
        problems.append(f"{len(missing)} listed file(s) missing, e.g. {missing[:3]}")
    if wrong_size:
        problems.append(f"{len(wrong_size)} file(s) with the wrong size, e.g. {wrong_size[:3]}")
    try:
        expected = int(manifest.get("designs_expected", 0))
        produced = int(manifest.get("designs_produced", 0))
    except (TypeError, ValueError):
        problems.append("designs_expected/designs_produced are not integers")
        expected = produced = 0
    if expected > 0 and produced < min_fraction * expected:
        oom = " (GPU out of memory detected)" if manifest.get("oom_detected") else ""
        problems.append(
            f"produced {produced} of {expected} designs, below the minimum fraction {min_fraction:g}{oom}"
        )
    if expected > 0 and produced == 0:
        problems.append("no design produced")
    return Verification(not problems, problems, expected, produced)


def manifest_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """
    Reduce a manifest to what XCom and the run report carry (counts and timings, no file list).

    :param manifest: the parsed ``_manifest.json``.
    """
    timings = manifest.get("timings") or []
    return {
        "designs_expected": manifest.get("designs_expected", 0),
        "designs_produced": manifest.get("designs_produced", 0),
        "shortfall": manifest.get("shortfall", 0),
        "oom_detected": bool(manifest.get("oom_detected", False)),
        "files": len(manifest.get("files") or []),
        "seconds": round(sum(float(t.get("seconds", 0.0)) for t in timings), 3),
        "gpus": manifest.get("gpus"),
        "gpu_model": manifest.get("gpu_model"),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
    }


def commit_record(
    *, stage: str, key: str, bucket: str, attempt_prefix: str, job_name: str, manifest: Mapping[str, Any]
) -> dict[str, Any]:
    """
    Build the ``_COMMITTED.json`` document that points a stage key at a verified attempt.

    :param stage: the stage.
    :param key: the stage's cache key.
    :param bucket: the bucket of the attempt.
    :param attempt_prefix: the attempt's key prefix (ending in ``/``).
    :param job_name: the job that wrote the attempt.
    :param manifest: the attempt's manifest.
    """
    return {
        "schema": COMMIT_SCHEMA,
        "stage": stage,
        "key": key,
        "bucket": bucket,
        "attempt_prefix": attempt_prefix if attempt_prefix.endswith("/") else f"{attempt_prefix}/",
        "job_name": job_name,
        "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "shard": manifest.get("shard"),
        "design_ids": len(manifest.get("design_ids") or []),
        **manifest_summary(manifest),
    }


def read_commit(client: Any, bucket: str, commit_key: str) -> dict[str, Any] | None:
    """
    Return the commit of a stage key (a cache hit), or None when the stage is not committed.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    """
    record = read_json(client, bucket, commit_key)
    if record is None or record.get("schema") != COMMIT_SCHEMA or not record.get("attempt_prefix"):
        return None
    return record


def verify_attempt(
    client: Any, bucket: str, attempt_prefix: str, min_fraction: float, *, stage: str | None = None
) -> tuple[dict[str, Any] | None, Verification]:
    """
    Read an attempt's manifest and verify it against the objects under the prefix.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param attempt_prefix: the attempt's key prefix.
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param stage: the stage the manifest must belong to.
    :return: the manifest (None when absent) and the verification.
    """
    manifest = read_json(client, bucket, join_key(attempt_prefix, MANIFEST_FILE))
    if manifest is None:
        return None, Verification(False, [f"no {MANIFEST_FILE} under s3://{bucket}/{attempt_prefix}"])
    return manifest, verify_manifest(
        manifest, list_sizes(client, bucket, attempt_prefix), min_fraction, stage=stage
    )


def write_commit(client: Any, bucket: str, commit_key: str, record: Mapping[str, Any]) -> None:
    """
    Point a stage key at a verified attempt with a single PutObject (atomic in S3).

    Attempts are never touched; a later commit of the same key replaces only this pointer.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    :param record: see :func:`commit_record`.
    """
    if not commit_key.endswith(COMMIT_FILE):
        raise CommitError(f"refusing to write a commit to {commit_key!r}: not a {COMMIT_FILE}")
    body = json.dumps(record, sort_keys=True, indent=1).encode()
    with_retries(
        lambda: client.put_object(Bucket=bucket, Key=commit_key, Body=body, ContentType="application/json"),
        what=f"commit s3://{bucket}/{commit_key}",
    )


def commit_attempt(
    client: Any,
    *,
    bucket: str,
    stage: str,
    key: str,
    commit_key: str,
    attempt_prefix: str,
    job_name: str,
    min_fraction: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Verify an attempt and commit it.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param stage: the stage.
    :param key: the stage's cache key.
    :param commit_key: where the commit goes.
    :param attempt_prefix: the attempt to verify.
    :param job_name: the job that wrote it.
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param extra: more fields for the record (e.g. the Airflow run that committed it).
    :return: the commit record written.
    :raises CommitError: listing every problem when the attempt does not verify.
    """
    manifest, verification = verify_attempt(client, bucket, attempt_prefix, min_fraction, stage=stage)
    if manifest is None or not verification.ok:
        raise CommitError(
            f"{stage} attempt s3://{bucket}/{attempt_prefix} of job {job_name} is not committed: "
            + "; ".join(verification.problems)
        )
    record = commit_record(
        stage=stage,
        key=key,
        bucket=bucket,
        attempt_prefix=attempt_prefix,
        job_name=job_name,
        manifest=manifest,
    )
    record.update(extra or {})
    write_commit(client, bucket, commit_key, record)
    return record

"""
The S3 attempt/commit protocol: nothing is lost, nothing is done twice.

Every job writes to its own attempt prefix ``<prefix>/cache/<stage>/<key>/attempts/<job>/``, never
overwritten. Once an attempt's ``_manifest.json`` verifies, a single PutObject of a small JSON
(``_COMMITTED.json``) points the stage key at it, written only where none is (``If-None-Match``);
readers follow the commit. Verification is a pure
function of the manifest and a listing so the synchronous sensor and the async trigger share it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import ClientError

from boltzgen_airflow.exceptions import CommitError
from boltzgen_airflow.stages import FUSABLE_STAGES
from boltzgen_airflow.storage.claims import claim_lost
from boltzgen_airflow.storage.layout import COMMIT_FILE, MANIFEST_FILE, fused_attempt_prefix, fused_commit_key
from boltzgen_airflow.storage.s3 import join_key, list_sizes, read_json, with_retries

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


@dataclass(frozen=True)
class CommitRecord:
    """
    ``_COMMITTED.json``: the pointer of a stage key at its verified attempt, with the attempt's
    counts and timings (what XCom and the run report carry; no file list).

    :param stage: the stage.
    :param key: the stage's cache key.
    :param bucket: the bucket of the attempt.
    :param attempt_prefix: the attempt's key prefix (ending in ``/``).
    :param job_name: the job that wrote the attempt.
    :param committed_at: when it was committed (ISO 8601).
    :param shard: the shard (or filter id) of the manifest.
    :param design_ids: how many design ids the manifest lists.
    :param designs_expected: designs the work asked for.
    :param designs_produced: designs the job produced.
    :param shortfall: designs missing.
    :param oom_detected: whether the job ran out of GPU memory.
    :param files: how many files the attempt holds.
    :param seconds: the summed step time.
    :param gpus: GPUs of the job's instance.
    :param gpu_model: their model.
    :param started_at: when the job's work started.
    :param finished_at: when it finished.
    :param run_id: the Airflow run that committed it (a commit of another run counts as cached).
    :param designs_by_spec: design ids per spec of the attempt's items.
    :param instance_type: the instance type the job ran on (with fallbacks, the one SageMaker
        selected); None when unknown (the stage's own type then).
    """

    stage: str
    key: str
    bucket: str
    attempt_prefix: str
    job_name: str
    committed_at: str
    shard: str | None = None
    design_ids: int = 0
    designs_expected: int = 0
    designs_produced: int = 0
    shortfall: int = 0
    oom_detected: bool = False
    files: int = 0
    seconds: float = 0.0
    gpus: int | None = None
    gpu_model: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    run_id: str | None = None
    designs_by_spec: Mapping[str, int] | None = None
    instance_type: str | None = None

    @classmethod
    def of_attempt(
        cls,
        *,
        stage: str,
        key: str,
        bucket: str,
        attempt_prefix: str,
        job_name: str,
        manifest: Mapping[str, Any],
        run_id: str | None = None,
        instance_type: str | None = None,
    ) -> CommitRecord:
        """
        Build the record of a verified attempt from its manifest.

        :param stage: the stage.
        :param key: the stage's cache key.
        :param bucket: the bucket of the attempt.
        :param attempt_prefix: the attempt's key prefix.
        :param job_name: the job that wrote the attempt.
        :param manifest: the attempt's parsed ``_manifest.json``.
        :param run_id: the Airflow run that commits it.
        :param instance_type: the instance type the job ran on.
        """
        timings = manifest.get("timings") or []
        return cls(
            stage=stage,
            key=key,
            bucket=bucket,
            attempt_prefix=attempt_prefix if attempt_prefix.endswith("/") else f"{attempt_prefix}/",
            job_name=job_name,
            committed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            shard=manifest.get("shard"),
            design_ids=len(manifest.get("design_ids") or []),
            designs_expected=int(manifest.get("designs_expected", 0)),
            designs_produced=int(manifest.get("designs_produced", 0)),
            shortfall=int(manifest.get("shortfall", 0)),
            oom_detected=bool(manifest.get("oom_detected", False)),
            files=len(manifest.get("files") or []),
            seconds=round(sum(float(t.get("seconds", 0.0)) for t in timings), 3),
            gpus=manifest.get("gpus"),
            gpu_model=manifest.get("gpu_model"),
            started_at=manifest.get("started_at"),
            finished_at=manifest.get("finished_at"),
            run_id=run_id,
            designs_by_spec=designs_by_spec(manifest.get("design_ids") or [], manifest.get("items") or []),
            instance_type=instance_type,
        )

    def hours(self) -> float:
        """Return the hours the job worked (its timings' sum when the timestamps are unreadable)."""
        try:
            start = datetime.fromisoformat(str(self.started_at).replace("Z", "+00:00"))
            end = datetime.fromisoformat(str(self.finished_at).replace("Z", "+00:00"))
        except ValueError:
            return self.seconds / 3600
        return max(0.0, (end - start).total_seconds() / 3600)

    def to_json(self) -> dict[str, Any]:
        """Return the ``_COMMITTED.json`` document (schema 1)."""
        document = {"schema": COMMIT_SCHEMA, **asdict(self)}
        for optional in ("run_id", "designs_by_spec", "instance_type"):
            if document[optional] is None:
                del document[optional]
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> CommitRecord:
        """
        Inverse of :meth:`to_json` (fields this version does not know are ignored).

        :param document: the parsed ``_COMMITTED.json``.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in known})


@dataclass(frozen=True)
class CommittedStage:
    """
    A committed shard stage as one task hands it to the next through XCom: where its output is and
    what it holds (never the data). The stage sensors return it; the next stage's operator takes it.

    :param stage: the stage.
    :param shard: the shard (or filter id).
    :param bucket: the bucket.
    :param commit_key: the stage key's ``_COMMITTED.json``.
    :param attempt_prefix: the committed attempt (the next job's ``upstream`` input).
    :param job_name: the job that wrote it.
    :param committed_by: the Airflow run that committed it (None when unrecorded).
    :param designs_expected: designs the work asked for.
    :param designs_produced: designs the job produced.
    :param shortfall: designs missing.
    :param seconds: the job's summed step time.
    """

    stage: str
    shard: str
    bucket: str
    commit_key: str
    attempt_prefix: str
    job_name: str
    committed_by: str | None
    designs_expected: int
    designs_produced: int
    shortfall: int
    seconds: float

    @classmethod
    def of(cls, record: CommitRecord, *, shard: str, commit_key: str) -> CommittedStage:
        """
        Return the hand-over of a commit.

        :param record: the commit.
        :param shard: the shard whose stage it is.
        :param commit_key: where the commit is.
        """
        return cls(
            stage=record.stage,
            shard=shard,
            bucket=record.bucket,
            commit_key=commit_key,
            attempt_prefix=record.attempt_prefix,
            job_name=record.job_name,
            committed_by=record.run_id,
            designs_expected=record.designs_expected,
            designs_produced=record.designs_produced,
            shortfall=record.shortfall,
            seconds=record.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the XCom document."""
        return asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> CommittedStage:
        """
        Inverse of :meth:`to_json`.

        :param document: the XCom value.
        :raises CommitError: when it is not a committed stage (a missing field is named).
        """
        if not isinstance(document, Mapping):
            raise CommitError(f"expected a committed stage, got {type(document).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in document]
        if missing:
            raise CommitError(f"the committed stage handed over lacks {missing}")
        return cls(**{name: document[name] for name in names})


def designs_by_spec(design_ids: Sequence[str], items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """
    Count design ids per spec of the work items that produced them.

    A design id is ``<spec stem>_<index>...`` (the step scripts' ``design_id``); it belongs to the
    item of its stem whose index range holds the index, the longest stem first.

    :param design_ids: the ids a stage's manifest lists.
    :param items: the work items (``spec_name``, ``start``, ``count``).
    """
    ranges = sorted(
        (
            (PurePosixPath(str(i["spec_name"])).stem, int(i["start"]), int(i["count"]), str(i["spec_name"]))
            for i in items
        ),
        key=lambda r: -len(r[0]),
    )
    counts = {str(i["spec_name"]): 0 for i in items}
    for design in design_ids:
        for stem, start, count, spec in ranges:
            rest = design[len(stem) + 1 :] if design.startswith(stem + "_") else ""
            digits = rest.split("_", 1)[0]
            if digits.isdigit() and start <= int(digits) < start + count:
                counts[spec] += 1
                break
    return counts


def read_commit(client: Any, bucket: str, commit_key: str) -> CommitRecord | None:
    """
    Return the commit of a stage key (a cache hit), or None when the stage is not committed.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    """
    document = read_json(client, bucket, commit_key)
    if document is None or document.get("schema") != COMMIT_SCHEMA or not document.get("attempt_prefix"):
        return None
    return CommitRecord.from_json(document)


# Below botocore's default of 10 connections per client, which the reads share.
_READERS = 8


def read_commits(client: Any, bucket: str, commit_keys: Sequence[str]) -> list[CommitRecord | None]:
    """
    Return the commits of many stage keys (None where not committed), reading eight at a time.

    :param client: a boto3 S3 client (thread-safe).
    :param bucket: the bucket.
    :param commit_keys: the commit keys, in the order of the result.
    """
    if len(commit_keys) < 2:
        return [read_commit(client, bucket, key) for key in commit_keys]
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return list(pool.map(lambda key: read_commit(client, bucket, key), commit_keys))


def read_manifest(client: Any, bucket: str, attempt_prefix: str) -> dict[str, Any] | None:
    """
    Return an attempt's ``_manifest.json`` (None when absent).

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param attempt_prefix: the attempt's key prefix.
    """
    return read_json(client, bucket, join_key(attempt_prefix, MANIFEST_FILE))


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
    manifest = read_manifest(client, bucket, attempt_prefix)
    if manifest is None:
        return None, Verification(False, [f"no {MANIFEST_FILE} under s3://{bucket}/{attempt_prefix}"])
    return manifest, verify_manifest(
        manifest, list_sizes(client, bucket, attempt_prefix), min_fraction, stage=stage
    )


def write_commit(
    client: Any, bucket: str, commit_key: str, record: CommitRecord, *, replace: bool = False
) -> CommitRecord:
    """
    Point a stage key at a verified attempt with a single PutObject (atomic in S3).

    The PUT is conditional (``If-None-Match: *``): a commit never replaces another commit of the
    same key. When the key is already committed (another run committed it first, or a retried PUT
    had landed) the commit in S3 is returned and the attempt stays as it is, unused. Attempts are
    never touched.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    :param record: the commit.
    :param replace: replace an existing commit (a forced re-run asks for it).
    :return: the commit the key holds now.
    """
    if not commit_key.endswith(COMMIT_FILE):
        raise CommitError(f"refusing to write a commit to {commit_key!r}: not a {COMMIT_FILE}")
    body = json.dumps(record.to_json(), sort_keys=True, indent=1).encode()
    condition = {} if replace else {"IfNoneMatch": "*"}
    try:
        with_retries(
            lambda: client.put_object(
                Bucket=bucket, Key=commit_key, Body=body, ContentType="application/json", **condition
            ),
            what=f"commit s3://{bucket}/{commit_key}",
        )
    except ClientError as err:
        if replace or not claim_lost(err):
            raise
        existing = read_commit(client, bucket, commit_key)
        if existing is None:
            raise
        if existing.job_name != record.job_name:
            log.warning(
                "s3://%s/%s was committed by job %s first; the attempt of job %s is left unused",
                bucket,
                commit_key,
                existing.job_name,
                record.job_name,
            )
        return existing
    return record


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
    run_id: str | None = None,
    replace: bool = False,
    instance_type: str | None = None,
) -> CommitRecord:
    """
    Verify an attempt and commit it (see :func:`write_commit`), and the attempts of the stages
    fused into its job.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param stage: the stage.
    :param key: the stage's cache key.
    :param commit_key: where the commit goes.
    :param attempt_prefix: the attempt to verify.
    :param job_name: the job that wrote it.
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param run_id: the Airflow run that commits it.
    :param replace: replace an existing commit of the key (a forced re-run).
    :param instance_type: the instance type the job ran on.
    :return: the commit the key holds now (another job's when it was committed first).
    :raises CommitError: listing every problem when the attempt does not verify.
    """
    manifest, verification = verify_attempt(client, bucket, attempt_prefix, min_fraction, stage=stage)
    if manifest is None or not verification.ok:
        raise CommitError(
            f"{stage} attempt s3://{bucket}/{attempt_prefix} of job {job_name} is not committed: "
            + "; ".join(verification.problems)
        )
    record = CommitRecord.of_attempt(
        stage=stage,
        key=key,
        bucket=bucket,
        attempt_prefix=attempt_prefix,
        job_name=job_name,
        manifest=manifest,
        run_id=run_id,
        instance_type=instance_type,
    )
    written = write_commit(client, bucket, commit_key, record, replace=replace)
    commit_fused(
        client,
        manifest,
        bucket=bucket,
        commit_key=commit_key,
        attempt_prefix=attempt_prefix,
        job_name=job_name,
        min_fraction=min_fraction,
        run_id=run_id,
        instance_type=instance_type,
        replace=replace,
    )
    return written


def _fused_entries(manifest: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """(stage, key, filter id) of each stage (or spec's filtering) the attempt's job ran after its
    own, as its manifest lists them."""
    entries = []
    for entry in manifest.get("fused") or []:
        stage, key, shard = entry.get("stage"), entry.get("key"), entry.get("shard")
        if stage not in (*FUSABLE_STAGES, "filtering") or not isinstance(key, str):
            log.warning("ignoring a fused stage the manifest does not describe: %s", entry)
            continue
        entries.append((str(stage), key, str(shard) if shard else None))
    return entries


def commit_fused(
    client: Any,
    manifest: Mapping[str, Any],
    *,
    bucket: str,
    commit_key: str,
    attempt_prefix: str,
    job_name: str,
    min_fraction: float,
    run_id: str | None = None,
    instance_type: str | None = None,
    replace: bool = False,
) -> list[CommitRecord]:
    """
    Commit the attempts of the stages fused into a committed attempt's job (``stages.fuse``).

    Each fused stage left its own attempt, with its own manifest, in a folder of the host's
    attempt; it is committed under its own stage and key, so its task finds the commit and starts
    no job. One that does not verify is left uncommitted (its task then runs a job of its own).

    :param client: a boto3 S3 client.
    :param manifest: the host attempt's manifest.
    :param bucket: the bucket.
    :param commit_key: the host's commit key (the fused stages' commit keys sit beside it).
    :param attempt_prefix: the host's attempt.
    :param job_name: the job that wrote both.
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param run_id: the Airflow run that commits them.
    :param instance_type: the instance type the job ran on.
    :param replace: replace existing commits (a forced re-run).
    :return: the commits the keys hold now.
    """
    records = []
    for stage, key, shard in _fused_entries(manifest):
        try:
            guest_commit = fused_commit_key(commit_key, stage, key)
            prefix = fused_attempt_prefix(attempt_prefix, stage, shard)
        except ValueError as err:
            log.warning("%s run in job %s is not committed: %s", stage, job_name, err)
            continue
        guest, verification = verify_attempt(client, bucket, prefix, min_fraction, stage=stage)
        if guest is None or not verification.ok:
            log.warning(
                "%s run in job %s is not committed: %s", stage, job_name, "; ".join(verification.problems)
            )
            continue
        record = CommitRecord.of_attempt(
            stage=stage,
            key=key,
            bucket=bucket,
            attempt_prefix=prefix,
            job_name=job_name,
            manifest=guest,
            run_id=run_id,
            instance_type=instance_type,
        )
        records.append(write_commit(client, bucket, guest_commit, record, replace=replace))
    return records

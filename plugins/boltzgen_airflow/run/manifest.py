"""The run manifest (``run.json``) built from the commits in S3, and the run's published results."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.run.descriptors import ResolvedFiltering, RunPlan, ShardDescriptor
from boltzgen_airflow.run.spend import commit_usd
from boltzgen_airflow.stages import SHARD_STAGES
from boltzgen_airflow.storage.commits import (
    CommitRecord,
    designs_by_spec,
    read_commit,
    read_commits,
    read_manifest,
)
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import list_sizes, put_json, with_retries

#: a stage commit made by a job of this run is ``committed``; one made by an earlier run is ``cached``
DONE = ("committed", "cached")


@dataclass(frozen=True)
class StageStatus:
    """
    One stage of one shard in the run manifest.

    :param status: ``committed``, ``cached``, ``failed`` or ``skipped``.
    :param job_name: the job whose output is committed.
    :param seconds: its summed step time.
    :param designs_expected: designs its work asked for.
    :param designs_produced: designs it produced.
    """

    status: str
    job_name: str | None = None
    seconds: float | None = None
    designs_expected: int | None = None
    designs_produced: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document (only ``status`` when nothing is committed)."""
        if self.status not in DONE:
            return {"status": self.status}
        return {
            "status": self.status,
            "job_name": self.job_name,
            "seconds": self.seconds,
            "designs_expected": self.designs_expected,
            "designs_produced": self.designs_produced,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StageStatus:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            status=str(document["status"]),
            job_name=document.get("job_name"),
            seconds=document.get("seconds"),
            designs_expected=document.get("designs_expected"),
            designs_produced=document.get("designs_produced"),
        )


@dataclass(frozen=True)
class ShardStatus:
    """
    One shard in the run manifest.

    :param shard: the shard id.
    :param specs: its specs.
    :param stages: stage -> its status.
    """

    shard: str
    specs: tuple[str, ...]
    stages: Mapping[str, StageStatus]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "shard": self.shard,
            "specs": list(self.specs),
            "stages": {stage: status.to_json() for stage, status in self.stages.items()},
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ShardStatus:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            shard=str(document["shard"]),
            specs=tuple(document.get("specs", ())),
            stages={s: StageStatus.from_json(d) for s, d in document.get("stages", {}).items()},
        )


@dataclass(frozen=True)
class SpecStatus:
    """
    One spec in the run manifest.

    :param spec: the spec path.
    :param status: ``complete``, ``partial`` or ``failed``.
    :param shards_total: its shards.
    :param shards_committed: those whose analysis is committed.
    :param missing_shards: those its filtering lacked.
    :param designs_expected: what analysis should hand to filtering.
    :param designs_produced: what analysis handed over, counted per spec.
    :param final_designs: what filtering kept.
    """

    spec: str
    status: str
    shards_total: int
    shards_committed: int
    missing_shards: tuple[str, ...]
    designs_expected: int
    designs_produced: int
    final_designs: int

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "spec": self.spec,
            "shards_total": self.shards_total,
            "shards_committed": self.shards_committed,
            "missing_shards": list(self.missing_shards),
            "designs_expected": self.designs_expected,
            "designs_produced": self.designs_produced,
            "final_designs": self.final_designs,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SpecStatus:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            spec=str(document["spec"]),
            status=str(document["status"]),
            shards_total=int(document["shards_total"]),
            shards_committed=int(document["shards_committed"]),
            missing_shards=tuple(document.get("missing_shards", ())),
            designs_expected=int(document["designs_expected"]),
            designs_produced=int(document["designs_produced"]),
            final_designs=int(document["final_designs"]),
        )


@dataclass(frozen=True)
class RunManifest:
    """
    ``run.json``: what a run committed, what it cost, and where its results are.

    :param campaign: the campaign.
    :param run_id: the Airflow run id.
    :param dag_id: the campaign's DAG.
    :param started_at: when the run started.
    :param finished_at: when the manifest was built.
    :param status: ``complete``, ``partial`` or ``failed``.
    :param results_prefix: the run's results folder (``s3://``).
    :param estimate: the plan's estimate, with its instance hours summed.
    :param actual: instance hours and cost of this run's jobs, in all and per stage.
    :param specs: per spec, its progress.
    :param shards: per shard, its stages.
    :param filter_attempts: spec -> its committed filtering attempt.
    :param rounds: the campaign run this run is a round of: ``round``, ``campaign_run_id``,
        ``reason`` (why it ended, empty while rounds go on) and per spec its rounds, designs made,
        passing, pass rate, spend and why it stopped (:class:`~boltzgen_airflow.run.rounds.SpecRounds`).
    """

    campaign: str
    run_id: str
    dag_id: str
    started_at: str | None
    finished_at: str
    status: str
    results_prefix: str
    estimate: Mapping[str, Any]
    actual: Mapping[str, Any]
    specs: tuple[SpecStatus, ...]
    shards: tuple[ShardStatus, ...]
    filter_attempts: Mapping[str, str] = field(default_factory=dict)
    rounds: Mapping[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every spec is filtered over all of its shards."""
        return self.status == "complete"

    def to_json(self) -> dict[str, Any]:
        """Return the ``run.json`` document."""
        return {
            "campaign": self.campaign,
            "run_id": self.run_id,
            "dag_id": self.dag_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "status": self.status,
            "results_prefix": self.results_prefix,
            "estimate": dict(self.estimate),
            "actual": dict(self.actual),
            "specs": [s.to_json() for s in self.specs],
            "shards": [s.to_json() for s in self.shards],
            "filter_attempts": dict(self.filter_attempts),
            "rounds": dict(self.rounds),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RunManifest:
        """
        Inverse of :meth:`to_json`.

        :param document: the parsed ``run.json``.
        """
        return cls(
            campaign=str(document["campaign"]),
            run_id=str(document["run_id"]),
            dag_id=str(document.get("dag_id", "")),
            started_at=document.get("started_at"),
            finished_at=str(document.get("finished_at", "")),
            status=str(document["status"]),
            results_prefix=str(document.get("results_prefix", "")),
            estimate=dict(document.get("estimate") or {}),
            actual=dict(document.get("actual") or {}),
            specs=tuple(SpecStatus.from_json(s) for s in document.get("specs", [])),
            shards=tuple(ShardStatus.from_json(s) for s in document.get("shards", [])),
            filter_attempts=dict(document.get("filter_attempts") or {}),
            rounds=dict(document.get("rounds") or {}),
        )


class _Usage:
    """Instance hours, cost and jobs of this run's jobs per stage (commits of earlier runs cost nothing)."""

    def __init__(self, run_id: str, prices: Mapping[str, float]) -> None:
        self.run_id = run_id
        self.prices = prices
        self.stages: dict[str, dict[str, float]] = {}

    def cached(self, record: CommitRecord) -> bool:
        return record.run_id != self.run_id

    def add(self, stage: str, record: CommitRecord, instance_type: str, *, own_job: bool = True) -> None:
        if self.cached(record):
            return
        row = self.stages.setdefault(stage, {"instance_hours": 0.0, "cost_usd": 0.0, "jobs": 0})
        row["instance_hours"] += record.hours()
        row["cost_usd"] += commit_usd(record, self.prices.get(instance_type, 0.0))
        # A stage run in an earlier stage's job (stages.fuse) adds its hours, not a job.
        row["jobs"] += 1 if own_job else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_hours": round(sum(s["instance_hours"] for s in self.stages.values()), 4),
            "cost_usd": round(sum(s["cost_usd"] for s in self.stages.values()), 4),
            "stages": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in self.stages.items()},
        }


def _analysis_by_spec(client: Any, shard: ShardDescriptor, record: CommitRecord) -> dict[str, int]:
    """Designs a committed analysis attempt produced for each spec of its shard."""
    if len(shard.specs) == 1:
        return {shard.specs[0]: record.designs_produced}
    if record.designs_by_spec is not None:
        return dict(record.designs_by_spec)
    # A commit written before commits counted per spec: its manifest lists every design id.
    manifest = read_manifest(client, record.bucket, record.attempt_prefix) or {}
    return designs_by_spec(manifest.get("design_ids") or [], shard.items)


def _shard_commits(
    client: Any, bucket: str, shards: Sequence[ShardDescriptor]
) -> dict[str, CommitRecord | None]:
    """Commit key -> the commit of every stage of the shards (None where not committed)."""
    keys = [t.commit_key for shard in shards for stage in SHARD_STAGES if (t := shard.stages.get(stage))]
    return dict(zip(keys, read_commits(client, bucket, keys), strict=True))


def _shard_status(
    client: Any, shard: ShardDescriptor, usage: _Usage, commits: Mapping[str, CommitRecord | None]
) -> tuple[ShardStatus, dict[str, int] | None]:
    """The status of one shard's stages, and per spec the designs of its committed analysis."""
    stages: dict[str, StageStatus] = {}
    produced: dict[str, int] | None = None
    for stage in SHARD_STAGES:
        target = shard.stages.get(stage)
        if target is None:
            continue
        record = commits[target.commit_key]
        if record is None:
            stages[stage] = StageStatus("failed" if stage in shard.run_stages else "skipped")
            continue
        own = record.attempt_prefix.startswith(target.attempts_prefix)
        usage.add(stage, record, record.instance_type or target.resources.instance_type, own_job=own)
        stages[stage] = StageStatus(
            "cached" if usage.cached(record) else "committed",
            job_name=record.job_name,
            seconds=record.seconds,
            designs_expected=record.designs_expected,
            designs_produced=record.designs_produced,
        )
        if stage == "analysis":
            produced = _analysis_by_spec(client, shard, record)
    return ShardStatus(shard.shard, shard.specs, stages), produced


def _spec_status(
    client: Any,
    spec: str,
    *,
    shards: Sequence[str],
    expected: int,
    produced: int,
    committed_shards: int,
    filtering: ResolvedFiltering | None,
    usage: _Usage,
) -> tuple[SpecStatus, CommitRecord | None]:
    """One spec's status, and the commit of its filtering (None when it is not filtered)."""
    job = filtering.job if filtering else None
    target = filtering.target if filtering else None
    record = read_commit(client, job.bucket, target.commit_key) if job and target else None
    missing = filtering.missing_shards if filtering else tuple(shards)
    if record is not None and target is not None:
        usage.add("filtering", record, record.instance_type or target.resources.instance_type)
        status = "partial" if missing else "complete"
    else:
        status = "failed"
    entry = SpecStatus(
        spec=spec,
        status=status,
        shards_total=len(shards),
        shards_committed=committed_shards,
        missing_shards=tuple(missing),
        designs_expected=expected,
        designs_produced=produced,
        final_designs=record.designs_produced if record else 0,
    )
    return entry, record


def collect_run(
    client: Any,
    campaign: Campaign,
    run_id: str,
    *,
    plan: RunPlan,
    filters: Sequence[ResolvedFiltering],
    prices: Mapping[str, float],
    started_at: str | None = None,
) -> RunManifest:
    """
    Build the run manifest from the commits in S3.

    A stage committed by a job of this run is ``committed``; one committed earlier is ``cached``.
    A spec's ``designs_produced`` counts the designs of its own items in each committed analysis
    attempt, so a shard of several specs adds to each exactly what it produced for it.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param run_id: the Airflow run id.
    :param plan: the run's plan, its shards included.
    :param filters: the specs' filtering resolved now (the specs with a committed shard).
    :param prices: USD per hour by instance type.
    :param started_at: when the run started.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    usage = _Usage(run_id, prices)
    shards: list[ShardStatus] = []
    committed_shards: dict[str, int] = {}
    produced: dict[str, int] = {}
    commits = _shard_commits(client, layout.bucket, plan.shards)
    for shard in plan.shards:
        shard_status, by_spec = _shard_status(client, shard, usage, commits)
        shards.append(shard_status)
        for spec in shard.specs:
            if shard_status.stages.get("analysis", StageStatus("failed")).status in DONE:
                committed_shards[spec] = committed_shards.get(spec, 0) + 1
            produced[spec] = produced.get(spec, 0) + (by_spec or {}).get(spec, 0)

    design = campaign.design
    # What analysis should hand to filtering per spec: every design, times its inverse-folded sequences.
    per_backbone = 1 if design.skip_inverse_folding else design.inverse_fold_num_sequences
    # Designs planned per spec, over every round's shards the run holds.
    planned: dict[str, int] = {}
    for shard in plan.shards:
        for item in shard.items:
            name = str(item.get("spec_name", item["spec"]))
            planned[name] = planned.get(name, 0) + int(item["count"])
    by_name = {f.spec: f for f in filters}
    specs: list[SpecStatus] = []
    results: dict[str, str] = {}
    # By name: on PostgreSQL the plan's specs come back from XCom as JSONB, which keeps no key order.
    for spec, info in sorted(plan.specs.items()):
        filtering = by_name.get(spec)
        entry, record = _spec_status(
            client,
            spec,
            shards=info.shards,
            expected=planned.get(spec, 0) * per_backbone,
            produced=produced.get(spec, 0),
            committed_shards=committed_shards.get(spec, 0),
            filtering=filtering,
            usage=usage,
        )
        specs.append(entry)
        if record is not None:
            results[spec] = record.attempt_prefix

    statuses = {s.status for s in specs}
    status = "complete" if statuses == {"complete"} else "failed" if statuses <= {"failed"} else "partial"
    estimate = dict(plan.estimate)
    estimate["instance_hours"] = round(
        sum(s.get("instance_hours", 0.0) for s in estimate.get("stages", {}).values()), 4
    )
    return RunManifest(
        campaign=campaign.name,
        run_id=run_id,
        dag_id=campaign.dag_id,
        started_at=started_at,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        status=status,
        results_prefix=layout.uri(layout.results_prefix(campaign.name, run_id)),
        estimate=estimate,
        actual=usage.to_json(),
        specs=tuple(specs),
        shards=tuple(shards),
        filter_attempts=results,
    )


def publish_results(client: Any, campaign: Campaign, run_id: str, manifest: RunManifest) -> list[str]:
    """
    Copy each filtered spec's output to the run's results prefix and write the run manifest.

    :param client: a boto3 S3 client.
    :param campaign: the campaign.
    :param run_id: the Airflow run id.
    :param manifest: what :func:`collect_run` returned.
    :return: the keys written.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    written = []
    for spec, attempt in manifest.filter_attempts.items():
        results = layout.spec_results_prefix(campaign.name, run_id, spec)
        for rel in sorted(list_sizes(client, layout.bucket, attempt)):
            if rel.startswith("_"):
                continue
            copy = functools.partial(
                client.copy_object,
                Bucket=layout.bucket,
                Key=results + rel,
                CopySource={"Bucket": layout.bucket, "Key": attempt + rel},
            )
            with_retries(copy, what=f"copy {rel}")
            written.append(results + rel)
    run_key = layout.run_manifest_key(campaign.name, run_id)
    put_json(client, layout.bucket, run_key, manifest.to_json())
    written.append(run_key)
    return written

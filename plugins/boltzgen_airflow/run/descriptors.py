"""
What a run's tasks hand each other: typed, frozen descriptors, each with one JSON round trip.

``plan`` describes every shard (:class:`ShardDescriptor`) and publishes it to S3; the shard tasks
map over :class:`DescriptorRef` values (about 120 B each) and read their own descriptor.
``filter_specs`` does the same for each spec's filtering (:class:`SpecFiltering`), which its task
resolves against the analysis shards committed when it runs (:class:`ResolvedFiltering`). The JSON
documents are the formats kept in S3 (``shards/<shard>.json``, ``shards.json``,
``filtering/<filter id>/descriptor.json``) and in XCom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from boltzgen_airflow.run.spend import SpendCap
from boltzgen_airflow.sagemaker.requests import JobResources
from boltzgen_airflow.storage.layout import attempt_prefix_of

#: the fields of a reference, the map input of the shard and filtering tasks
REF_FIELDS = ("shard", "bucket", "descriptor")


def _items(items: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(dict(item) for item in items)


@dataclass(frozen=True)
class StageTarget:
    """
    Where one job of a stage reads its work and writes, verifies and commits its output.

    :param key: the cache key of the stage's output.
    :param commit_key: ``<prefix>/cache/<stage>/<key>/_COMMITTED.json``.
    :param attempts_prefix: ``<prefix>/cache/<stage>/<key>/attempts/``.
    :param work_prefix: the folder of the job's ``work.json``.
    :param resources: what the job runs on.
    """

    key: str
    commit_key: str
    attempts_prefix: str
    work_prefix: str
    resources: JobResources

    def attempt_prefix(self, job_name: str) -> str:
        """
        Return the attempt folder of one job (``.../attempts/<job-name>/``).

        :param job_name: the SageMaker job name.
        """
        return attempt_prefix_of(self.attempts_prefix, job_name)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document (the ``stages`` entries of a shard descriptor)."""
        return {
            "key": self.key,
            "commit_key": self.commit_key,
            "attempts_prefix": self.attempts_prefix,
            "work_prefix": self.work_prefix,
            "resources": self.resources.as_dict(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StageTarget:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            key=str(document["key"]),
            commit_key=str(document["commit_key"]),
            attempts_prefix=str(document["attempts_prefix"]),
            work_prefix=str(document["work_prefix"]),
            resources=JobResources.from_dict(document["resources"]),
        )


@dataclass(frozen=True)
class ShardDescriptor:
    """
    Everything a stage task of one shard needs, as planned (``shards/<shard>.json``).

    A spec's filtering job is described the same way, its filter id as ``shard`` (see
    :class:`ResolvedFiltering`).

    :param shard: the shard id (``s0000``) or filter id (``f0000``).
    :param bucket: the campaign's bucket.
    :param specs: the specs of its work items.
    :param designs: designs it produces.
    :param code_prefix: the staged step scripts.
    :param specs_manifest: the ManifestFile of its spec bundles (None until a filtering is resolved).
    :param min_fraction: the least fraction of expected designs an attempt needs to commit.
    :param force: redo stages even when committed.
    :param run_stages: the stages this run runs.
    :param items: the work items, as in ``work.json``.
    :param stages: stage -> where its job writes and commits.
    :param analysis_manifest: the ManifestFile of the committed analysis attempts (filtering only).
    :param spend_cap: the campaign run's spend cap (None: no cap).
    :param stage_usd: stage -> the estimated cost of its job (what the cap check adds to the spend).
    """

    shard: str
    bucket: str
    specs: tuple[str, ...]
    designs: int
    code_prefix: str
    specs_manifest: str | None
    min_fraction: float
    force: bool
    run_stages: tuple[str, ...]
    items: tuple[dict[str, Any], ...]
    stages: Mapping[str, StageTarget]
    analysis_manifest: str | None = None
    spend_cap: SpendCap | None = None
    stage_usd: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document published to S3."""
        document = {
            "shard": self.shard,
            "bucket": self.bucket,
            "specs": list(self.specs),
            "designs": self.designs,
            "code_prefix": self.code_prefix,
            "specs_manifest": self.specs_manifest,
            "min_fraction": self.min_fraction,
            "force": self.force,
            "run_stages": list(self.run_stages),
            "items": [dict(item) for item in self.items],
            "stages": {stage: target.to_json() for stage, target in self.stages.items()},
        }
        if self.analysis_manifest is not None:
            document["analysis_manifest"] = self.analysis_manifest
        if self.spend_cap is not None:
            document["spend_cap"] = self.spend_cap.to_json()
            document["stage_usd"] = {k: round(v, 6) for k, v in self.stage_usd.items()}
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ShardDescriptor:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        manifest = document.get("specs_manifest")
        analysis = document.get("analysis_manifest")
        return cls(
            shard=str(document["shard"]),
            bucket=str(document["bucket"]),
            specs=tuple(document.get("specs", ())),
            designs=int(document.get("designs", 0)),
            code_prefix=str(document["code_prefix"]),
            specs_manifest=None if manifest is None else str(manifest),
            min_fraction=float(document["min_fraction"]),
            force=bool(document.get("force", False)),
            run_stages=tuple(document.get("run_stages", ())),
            items=_items(document.get("items", ())),
            stages={s: StageTarget.from_json(t) for s, t in document.get("stages", {}).items()},
            analysis_manifest=None if analysis is None else str(analysis),
            spend_cap=SpendCap.from_json(document["spend_cap"]) if document.get("spend_cap") else None,
            stage_usd={str(k): float(v) for k, v in (document.get("stage_usd") or {}).items()},
        )

    def items_of(self, spec: str) -> tuple[dict[str, Any], ...]:
        """
        Return the work items of one spec.

        :param spec: the spec path (relative to the specs root).
        """
        return tuple(item for item in self.items if item["spec_name"] == spec)


@dataclass(frozen=True)
class DescriptorRef:
    """
    Where a descriptor is kept: what the shard and filtering tasks map over.

    Every mapped task instance pulls the whole map input, so full descriptors in XCom would make
    the bytes through the API server grow with the square of the shards.

    :param shard: the shard id or filter id the descriptor describes.
    :param bucket: its bucket.
    :param descriptor: its key.
    :param label: what the task instance is named in the UI when not the shard id (a spec's path).
    """

    shard: str
    bucket: str
    descriptor: str
    label: str = ""

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` of the descriptor."""
        return f"s3://{self.bucket}/{self.descriptor}"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document (the map input)."""
        document = {"shard": self.shard, "bucket": self.bucket, "descriptor": self.descriptor}
        if self.label:
            document["label"] = self.label
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DescriptorRef:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            shard=str(document.get("shard", "")),
            bucket=str(document.get("bucket", "")),
            descriptor=str(document.get("descriptor", "")),
            label=str(document.get("label", "")),
        )


@dataclass(frozen=True)
class SpecPlan:
    """
    One spec of a plan.

    :param filter_id: its filtering's id (``f0000``).
    :param bundle: its bundle hash.
    :param files: the bundle's files, the spec first.
    :param shards: the shards holding its work items.
    """

    filter_id: str
    bundle: str
    files: tuple[str, ...]
    shards: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "filter_id": self.filter_id,
            "bundle": self.bundle,
            "files": list(self.files),
            "shards": list(self.shards),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SpecPlan:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            filter_id=str(document["filter_id"]),
            bundle=str(document["bundle"]),
            files=tuple(document["files"]),
            shards=tuple(document["shards"]),
        )


@dataclass(frozen=True)
class RunPlan:
    """
    What ``plan`` decided for a run: its shards, its specs and the estimate.

    The shards are published to S3; the rest (:meth:`info_json`) is the ``plan_info`` XCom.

    :param bucket: the campaign's bucket.
    :param run_prefix: the run folder.
    :param estimate: the pooled estimate (:meth:`boltzgen_airflow.planning.plan.Estimate.to_json`).
    :param dry_run: whether the run stops after planning.
    :param shards: the shard descriptors, in plan order (empty for a dry run).
    :param specs: spec -> its plan.
    :param code_prefix: the staged step scripts (None for a dry run).
    :param filtering_resources: what a filtering job runs on (None for a dry run).
    """

    bucket: str
    run_prefix: str
    estimate: Mapping[str, Any]
    dry_run: bool
    shards: tuple[ShardDescriptor, ...] = ()
    specs: Mapping[str, SpecPlan] = field(default_factory=dict)
    code_prefix: str | None = None
    filtering_resources: JobResources | None = None

    def shard(self, shard_id: str) -> ShardDescriptor:
        """
        Return one shard's descriptor.

        :param shard_id: the shard id.
        """
        return next(s for s in self.shards if s.shard == shard_id)

    def info_json(self) -> dict[str, Any]:
        """Return the JSON document of everything but the shards (the ``plan_info`` XCom)."""
        info: dict[str, Any] = {
            "bucket": self.bucket,
            "run_prefix": self.run_prefix,
            "estimate": dict(self.estimate),
            "dry_run": self.dry_run,
            "specs": {spec: plan.to_json() for spec, plan in self.specs.items()},
        }
        if self.code_prefix is not None:
            info["code_prefix"] = self.code_prefix
        if self.filtering_resources is not None:
            info["filtering_resources"] = self.filtering_resources.as_dict()
        return info

    @classmethod
    def from_info_json(cls, info: Mapping[str, Any], shards: Sequence[ShardDescriptor] = ()) -> RunPlan:
        """
        Inverse of :meth:`info_json`, with the shards read back from S3.

        :param info: the ``plan_info`` document.
        :param shards: the shard descriptors.
        """
        resources = info.get("filtering_resources")
        return cls(
            bucket=str(info["bucket"]),
            run_prefix=str(info["run_prefix"]),
            estimate=dict(info.get("estimate") or {}),
            dry_run=bool(info.get("dry_run", False)),
            shards=tuple(shards),
            specs={spec: SpecPlan.from_json(p) for spec, p in (info.get("specs") or {}).items()},
            code_prefix=info.get("code_prefix"),
            filtering_resources=JobResources.from_dict(resources) if resources else None,
        )


@dataclass(frozen=True)
class AnalysisShard:
    """
    One analysis shard a spec's filtering may read.

    :param shard: the shard id.
    :param key: the cache key of its analysis stage.
    :param commit_key: where its analysis commit is.
    :param items: the spec's work items in that shard.
    """

    shard: str
    key: str
    commit_key: str
    items: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "shard": self.shard,
            "key": self.key,
            "commit_key": self.commit_key,
            "items": [dict(i) for i in self.items],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> AnalysisShard:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            shard=str(document["shard"]),
            key=str(document["key"]),
            commit_key=str(document["commit_key"]),
            items=_items(document["items"]),
        )


@dataclass(frozen=True)
class SpecFiltering:
    """
    The filtering of one spec as the run's settings determine it, before any shard is known to be
    committed (``filtering/<filter id>/descriptor.json``).

    :param filter_id: the spec's filter id.
    :param spec: the spec path.
    :param bucket: the campaign's bucket.
    :param prefix: the campaign's key prefix.
    :param code_prefix: the staged step scripts.
    :param force: redo the filtering even when committed.
    :param run_stages: the stages this run runs.
    :param bundle: the spec's bundle hash.
    :param files: the bundle's files, the spec first.
    :param params: the filtering parameters hashed into its cache key.
    :param image_uri: the processing image (part of the cache key).
    :param analysis: the analysis shards holding the spec's items.
    :param results_prefix: the run's results folder (``s3://``).
    :param work_prefix: the folder of the job's ``work.json``.
    :param analysis_manifest: the key of the ManifestFile of the committed analysis attempts.
    :param work: the job's ``work.json`` without its items (they depend on the committed shards).
    :param resources: what the job runs on.
    """

    filter_id: str
    spec: str
    bucket: str
    prefix: str
    code_prefix: str
    force: bool
    run_stages: tuple[str, ...]
    bundle: str
    files: tuple[str, ...]
    params: Mapping[str, Any]
    image_uri: str
    analysis: tuple[AnalysisShard, ...]
    results_prefix: str
    work_prefix: str
    analysis_manifest: str
    work: Mapping[str, Any]
    resources: JobResources

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document published to S3."""
        return {
            "shard": self.filter_id,
            "spec": self.spec,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "code_prefix": self.code_prefix,
            "min_fraction": 0.0,
            "force": self.force,
            "run_stages": list(self.run_stages),
            "bundle": self.bundle,
            "files": list(self.files),
            "params": dict(self.params),
            "image_uri": self.image_uri,
            "analysis": [a.to_json() for a in self.analysis],
            "results_prefix": self.results_prefix,
            "work_prefix": self.work_prefix,
            "analysis_manifest": self.analysis_manifest,
            "work": dict(self.work),
            "resources": self.resources.as_dict(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SpecFiltering:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            filter_id=str(document["shard"]),
            spec=str(document["spec"]),
            bucket=str(document["bucket"]),
            prefix=str(document["prefix"]),
            code_prefix=str(document["code_prefix"]),
            force=bool(document.get("force", False)),
            run_stages=tuple(document.get("run_stages", ())),
            bundle=str(document["bundle"]),
            files=tuple(document["files"]),
            params=dict(document["params"]),
            image_uri=str(document["image_uri"]),
            analysis=tuple(AnalysisShard.from_json(a) for a in document["analysis"]),
            results_prefix=str(document["results_prefix"]),
            work_prefix=str(document["work_prefix"]),
            analysis_manifest=str(document["analysis_manifest"]),
            work=dict(document["work"]),
            resources=JobResources.from_dict(document["resources"]),
        )


@dataclass(frozen=True)
class ResolvedFiltering:
    """
    A spec's filtering over the analysis shards committed now.

    :param spec: the spec path.
    :param shards_total: the spec's shards.
    :param missing_shards: those whose analysis is not committed.
    :param job: the filtering job's descriptor (None when no shard is committed).
    """

    spec: str
    shards_total: int
    missing_shards: tuple[str, ...]
    job: ShardDescriptor | None

    @property
    def shards_committed(self) -> int:
        """How many of the spec's shards are filtered."""
        return self.shards_total - len(self.missing_shards)

    @property
    def target(self) -> StageTarget | None:
        """Where the filtering job writes and commits (None when no shard is committed)."""
        return self.job.stages["filtering"] if self.job else None

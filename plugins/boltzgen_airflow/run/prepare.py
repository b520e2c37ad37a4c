"""
The plan task's S3 side: stage the inputs, cut the shards, write their work files and describe
them; publish the descriptors and read them back.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import RunOptions
from boltzgen_airflow.campaign.specs import SpecBundle, discover_bundles
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue, RunStateError
from boltzgen_airflow.planning.plan import (
    Plan,
    Shard,
    cache_key,
    cheapest_within,
    plan_campaign,
    stage_params,
)
from boltzgen_airflow.run.descriptors import DescriptorRef, RunPlan, ShardDescriptor, SpecPlan, StageTarget
from boltzgen_airflow.run.staging import (
    fetch_specs,
    select_bundles,
    stage_bundles,
    stage_code,
    work_document,
    write_specs_manifest,
)
from boltzgen_airflow.sagemaker.requests import JobResources
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import put_json, read_json

log = logging.getLogger(__name__)


def estimate_table(plan: Plan) -> str:
    """
    Format the plan's estimate as a text table for the task log.

    :param plan: the plan.
    """
    rows = [f"{'stage':<16}{'instance':<18}{'jobs':>6}{'inst-h':>10}{'GPU-h':>10}{'USD':>10}"]
    for name, stage in plan.estimate.stages.items():
        rows.append(
            f"{name:<16}{stage.instance_type:<18}{stage.jobs:>6}{stage.instance_hours:>10.2f}"
            f"{stage.gpu_hours:>10.2f}{stage.cost_usd:>10.2f}"
        )
    est = plan.estimate
    rows.append(
        f"{len(plan.shards)} shards; makespan {est.makespan_hours:.2f} h (lower bound "
        f"{est.lower_bound_hours:.2f} h); {est.gpu_hours:.2f} GPU-h; ${est.cost_usd:.2f}"
    )
    return "\n".join(rows)


def _discover(
    client: Any, campaign: Campaign, options: RunOptions, into: Path
) -> tuple[Path, list[SpecBundle]]:
    """Return the local specs root (fetched from S3 when it is a prefix) and the run's bundles."""
    root = campaign.specs_root()
    local_root = fetch_specs(client, root, into) if isinstance(root, str) else root
    bundles = discover_bundles(local_root, campaign.design.include)
    bad = [ConfigIssue("error", b.spec, "", e) for b in bundles for e in b.errors]
    if bad:
        raise CampaignError(bad)
    return local_root, select_bundles(campaign, bundles, options.specs)


def describe_shard(
    client: Any,
    campaign: Campaign,
    options: RunOptions,
    run_id: str,
    *,
    plan: Plan,
    shard: Shard,
    code_prefix: str,
    resources: dict[str, JobResources],
) -> ShardDescriptor:
    """
    Write one shard's specs ManifestFile and its ``work.json`` per stage, and describe the shard.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: the Airflow run id.
    :param plan: the run's plan.
    :param shard: the shard.
    :param code_prefix: the staged step scripts.
    :param resources: stage -> what its jobs run on.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    bundles = [plan.bundles[s] for s in shard.specs]
    items = [
        {**item.to_json(), "spec": f"{plan.bundles[item.spec].hash}/{item.spec}", "spec_name": item.spec}
        for item in shard.items
    ]
    stages: dict[str, StageTarget] = {}
    works: dict[str, dict[str, Any]] = {}
    upstream: str | None = None
    for stage in plan.stages:
        key = cache_key(
            stage,
            params=stage_params(campaign, stage),
            bundle_hashes=[b.hash for b in bundles],
            items=shard.items,
            image_uri=campaign.aws.image_uri,
            upstream_key=upstream,
        )
        work_prefix = layout.work_prefix(campaign.name, run_id, stage, shard.id)
        works[stage] = work_document(
            campaign, run_id, stage, shard.id, items=items, max_runtime=resources[stage].max_runtime_seconds
        )
        stages[stage] = StageTarget(
            key=key,
            commit_key=layout.commit_key(stage, key),
            attempts_prefix=layout.attempts_prefix(stage, key),
            work_prefix=work_prefix,
            resources=resources[stage],
        )
        upstream = key
    for guest, host in plan.fused.items():
        # The host's job runs the fused stage too and leaves its attempt in a folder of its own
        # output; the host's commit commits it under the fused stage's key (storage.commits).
        fused = {"stage": guest, "key": stages[guest].key, "work": works[guest]}
        works[host].setdefault("fused", []).append(fused)
    for stage, work in works.items():
        put_json(client, layout.bucket, layout.work_key(campaign.name, run_id, stage, shard.id), work)
    return ShardDescriptor(
        shard=shard.id,
        bucket=layout.bucket,
        specs=tuple(shard.specs),
        designs=shard.designs,
        code_prefix=code_prefix,
        specs_manifest=write_specs_manifest(client, layout, bundles),
        min_fraction=campaign.design.min_design_fraction,
        force=options.force,
        run_stages=tuple(options.stages),
        items=tuple(items),
        stages=stages,
    )


def _within_deadline(campaign: Campaign, bundles: Sequence[SpecBundle], hours: float) -> Campaign:
    """The campaign on the cheapest option ending within ``hours`` (``plan --deadline``'s choice)."""
    best = cheapest_within(campaign, bundles, hours)
    if best is None:
        file = str(campaign.source_path or campaign.name)
        raise CampaignError.single(
            file, "params.deadline_hours", f"no preset's estimate ends within {hours:g} h"
        )
    log.info("Deadline %g h: %s (%.2f h, $%.2f)", hours, best.label, best.makespan_hours, best.cost_usd)
    return campaign.with_overrides(best.overrides)


def plan_run(client: Any, campaign: Campaign, options: RunOptions, run_id: str) -> RunPlan:
    """
    Plan a run: discover and stage specs and code, cut shards, write work files, describe shards.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: the Airflow run id.
    :return: the plan; a dry run's has no shards and stages nothing.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    with tempfile.TemporaryDirectory(prefix="boltzgen-specs-") as tmp:
        local_root, bundles = _discover(client, campaign, options, Path(tmp))
        if options.deadline_hours:
            campaign = _within_deadline(campaign, bundles, options.deadline_hours)
        plan = plan_campaign(
            campaign, bundles, num_designs=options.num_designs, target_hours=options.target_hours
        )
        log.info("Plan of %s:\n%s", campaign.name, estimate_table(plan))
        planned = RunPlan(
            bucket=layout.bucket,
            run_prefix=layout.run_prefix(campaign.name, run_id),
            estimate=plan.estimate.to_json(),
            dry_run=options.dry_run,
        )
        if options.dry_run:
            return planned
        stage_bundles(client, layout, local_root, bundles)
    code_prefix = stage_code(client, layout)
    resources = {stage: JobResources.from_stage_resources(r) for stage, r in plan.resources.items()}
    shards = tuple(
        describe_shard(
            client,
            campaign,
            options,
            run_id,
            plan=plan,
            shard=s,
            code_prefix=code_prefix,
            resources=resources,
        )
        for s in plan.shards
    )
    specs = {
        spec: SpecPlan(
            filter_id=plan.filter_ids[spec],
            bundle=plan.bundles[spec].hash,
            files=tuple(plan.bundles[spec].all_files),
            shards=tuple(s.id for s in plan.shards_of(spec)),
        )
        for spec in sorted(plan.bundles)
    }
    return RunPlan(
        bucket=planned.bucket,
        run_prefix=planned.run_prefix,
        estimate=planned.estimate,
        dry_run=False,
        shards=shards,
        specs=specs,
        code_prefix=code_prefix,
        filtering_resources=resources["filtering"],
        filtering_packs=plan.filtering_jobs if len(plan.filtering_jobs) < len(plan.bundles) else (),
    )


def publish_shards(
    client: Any, campaign: Campaign, run_id: str, shards: Sequence[ShardDescriptor]
) -> list[DescriptorRef]:
    """
    Write each shard descriptor to S3, and all of them to ``shards.json``; return a reference to each.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param run_id: the Airflow run id.
    :param shards: the descriptors of :func:`plan_run`.
    :return: one reference per shard, in plan order (the map input of the shard tasks).
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    refs = [
        DescriptorRef(s.shard, layout.bucket, layout.shard_key(campaign.name, run_id, s.shard))
        for s in shards
    ]
    documents = [s.to_json() for s in shards]
    # boto3 clients are thread-safe; the run's writes are independent objects.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda r, d: put_json(client, r.bucket, r.descriptor, d), refs, documents))
    put_json(client, layout.bucket, layout.shards_key(campaign.name, run_id), {"shards": documents})
    return refs


def load_descriptor(client: Any, ref: DescriptorRef) -> dict[str, Any]:
    """
    Return the JSON document a reference points at.

    :param client: a boto3 S3 client.
    :param ref: the reference.
    :raises RunStateError: when the document is missing or describes another shard.
    """
    document = read_json(client, ref.bucket, ref.descriptor) if ref.bucket and ref.descriptor else None
    if document is None:
        raise RunStateError(f"{ref.uri}: shard: descriptor of shard {ref.shard!r} not found")
    if document.get("shard") != ref.shard:
        raise RunStateError(f"{ref.uri}: shard: holds shard {document.get('shard')!r}, not {ref.shard!r}")
    return document


def load_shard(client: Any, ref: DescriptorRef) -> ShardDescriptor:
    """
    Return the shard descriptor a reference points at.

    :param client: a boto3 S3 client.
    :param ref: a reference of :func:`publish_shards`.
    :raises RunStateError: when the descriptor is missing or is another shard's.
    """
    return ShardDescriptor.from_json(load_descriptor(client, ref))


def load_shards(
    client: Any, campaign: Campaign, run_id: str, refs: Sequence[DescriptorRef]
) -> list[ShardDescriptor]:
    """
    Return the descriptors of a run's shards with one read of ``shards.json``.

    :param client: a boto3 S3 client.
    :param campaign: the campaign.
    :param run_id: the Airflow run id.
    :param refs: the references of :func:`publish_shards`.
    :raises RunStateError: when ``shards.json`` is missing or lacks a shard.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    key = layout.shards_key(campaign.name, run_id)
    document = read_json(client, layout.bucket, key)
    if document is None:
        raise RunStateError(f"{layout.uri(key)}: shards: the run's shard descriptors are missing")
    by_id = {d["shard"]: d for d in document.get("shards", [])}
    missing = [r.shard for r in refs if r.shard not in by_id]
    if missing:
        raise RunStateError(f"{layout.uri(key)}: shards: lacks shards {missing}")
    return [ShardDescriptor.from_json(by_id[r.shard]) for r in refs]

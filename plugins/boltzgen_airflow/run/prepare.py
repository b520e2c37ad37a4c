"""
The plan task's S3 side: stage the inputs, cut the shards, write their work files and describe
them; publish the descriptors and read them back.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping, Sequence
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
    WorkItem,
    cache_key,
    campaign_time_model,
    cheapest_within,
    plan_campaign,
    stage_params,
)
from boltzgen_airflow.planning.summary import plan_table
from boltzgen_airflow.run import spend
from boltzgen_airflow.run.descriptors import DescriptorRef, RunPlan, ShardDescriptor, SpecPlan, StageTarget
from boltzgen_airflow.run.rounds import Ledger, RoundRecord, read_ledger, write_ledger
from boltzgen_airflow.run.spend import SpendCap
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
    spend_cap: SpendCap | None = None,
    stage_usd: Mapping[str, float] | None = None,
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
    :param spend_cap: the campaign run's spend cap (None: no cap).
    :param stage_usd: stage -> the estimated cost of the shard's job.
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
        spend_cap=spend_cap,
        stage_usd=dict(stage_usd or {}),
    )


def _previous_shards(
    client: Any, layout: Layout, campaign: Campaign, ledger: Ledger, round_number: int
) -> list[Shard]:
    """The shards of the rounds before this one, as the last of them planned them (cache hits now)."""
    earlier = ledger.before(round_number)
    if not earlier:
        return []
    key = layout.shards_key(campaign.name, earlier[-1].run_id)
    document = read_json(client, layout.bucket, key)
    if document is None:
        raise RunStateError(f"{layout.uri(key)}: shards: round {earlier[-1].round}'s shards are missing")
    shards = []
    for shard in document.get("shards", []):
        items = tuple(
            WorkItem(
                str(i["spec_name"]), int(i["start"]), int(i["count"]), int(i["width"]),
                int(i.get("residues", 0)), float(i.get("est_seconds", 0.0)),
            )
            for i in shard.get("items", [])
        )  # fmt: skip
        shards.append(Shard(str(shard["shard"]), items, max((i.est_seconds for i in items), default=0.0)))
    return shards


def _round_ledger(
    client: Any, layout: Layout, campaign: Campaign, options: RunOptions, run_id: str
) -> Ledger | None:
    """The ledger of the campaign run this run is a round of (None for round 1: it starts one)."""
    if options.round <= 1 or not options.campaign_run_id:
        return None
    ledger = read_ledger(client, layout, campaign.name, options.campaign_run_id)
    if ledger is None or not ledger.before(options.round):
        file = str(campaign.source_path or campaign.name)
        raise CampaignError.single(
            file,
            "params.campaign_run_id",
            f"campaign run {options.campaign_run_id!r} has no round before round {options.round} "
            f"({layout.uri(layout.rounds_key(campaign.name, options.campaign_run_id))})",
        )
    return ledger


def _new_designs(
    campaign: Campaign, options: RunOptions, bundles: Sequence[SpecBundle], before: Mapping[str, int]
) -> dict[str, int]:
    """Per spec, the designs this run adds after those of earlier rounds (``before``)."""
    file = str(campaign.source_path or campaign.name)
    unknown = sorted(set(options.designs_per_spec) - {b.spec for b in bundles})
    if unknown:
        raise CampaignError.single(
            file,
            "params.designs_per_spec",
            f"unknown spec(s) {unknown}; the run's specs are {sorted(b.spec for b in bundles)}",
        )
    return {b.spec: max(0, options.designs_of(b.spec) - before.get(b.spec, 0)) for b in bundles}


def _stage_usd(plan: Plan, shard_id: str, provisioning: float) -> dict[str, float]:
    """What each stage job of a new shard is estimated to cost (provisioning included)."""
    seconds = plan.stage_seconds.get(shard_id, {})
    return {
        stage: (provisioning + seconds.get(stage, 0.0))
        / 3600
        * plan.resources[stage].instance_type.price_per_hour
        for stage in plan.stages
    }


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
    ledger = _round_ledger(client, layout, campaign, options, run_id)
    previous = ledger.before(options.round)[-1] if ledger else None
    before = dict(previous.designs) if previous else {}
    with tempfile.TemporaryDirectory(prefix="boltzgen-specs-") as tmp:
        local_root, bundles = _discover(client, campaign, options, Path(tmp))
        if options.deadline_hours:
            campaign = _within_deadline(campaign, bundles, options.deadline_hours)
        new = _new_designs(campaign, options, bundles, before)
        carried = _previous_shards(client, layout, campaign, ledger, options.round) if ledger else []
        plan = plan_campaign(
            campaign,
            [b for b in bundles if new[b.spec] > 0] or bundles,
            num_designs=options.num_designs,
            target_hours=options.target_hours,
            designs={spec: n for spec, n in new.items() if n > 0} or None,
            starts=before,
            width=ledger.width if ledger else None,
        )
        log.info("Plan of round %d:\n%s", options.round, "\n".join(plan_table(plan, campaign.dag_id)))
        spent = ledger.spent_before(options.round) if ledger else 0.0
        if any(new.values()):
            spend.check_plan(
                str(campaign.source_path or campaign.name),
                estimate_usd=plan.estimate.cost_usd,
                cap_usd=campaign.design.max_cost_usd,
                spent_usd=spent,
            )
        # A dry run's plan shows its specs and their shards too (the campaign view reads them).
        specs = {
            spec: SpecPlan(
                filter_id=plan.filter_ids[spec],
                bundle=plan.bundles[spec].hash,
                files=tuple(plan.bundles[spec].all_files),
                shards=tuple(s.id for s in plan.shards_of(spec)),
            )
            for spec in sorted(plan.bundles)
        }
        planned = RunPlan(
            bucket=layout.bucket,
            run_prefix=layout.run_prefix(campaign.name, run_id),
            estimate=plan.estimate.to_json(),
            dry_run=options.dry_run,
            specs=specs,
        )
        if options.dry_run:
            return planned
        stage_bundles(client, layout, local_root, bundles)
    code_prefix = stage_code(client, layout)
    resources = {stage: JobResources.from_stage_resources(r) for stage, r in plan.resources.items()}
    # A spec with no new designs still has its earlier rounds' shards: the plan holds every bundle.
    plan = dataclasses.replace(plan, bundles={b.spec: b for b in bundles})
    fresh = [] if not any(new.values()) else list(plan.shards)
    renamed = [dataclasses.replace(s, id=f"s{len(carried) + i:04d}") for i, s in enumerate(fresh)]
    provisioning = campaign_time_model(campaign).provisioning_seconds
    cap = (
        spend.SpendCap(
            cap_usd=campaign.design.max_cost_usd,
            spent_usd=spent,
            shards_key=layout.shards_key(campaign.name, run_id),
            run_id=run_id,
            prices={r.instance_type.name: r.instance_type.price_per_hour for r in plan.resources.values()},
        )
        if campaign.design.max_cost_usd is not None
        else None
    )
    costs = {
        new_shard.id: _stage_usd(plan, old.id, provisioning)
        for old, new_shard in zip(fresh, renamed, strict=True)
    }
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
            spend_cap=cap,
            stage_usd=costs.get(s.id),
        )
        for s in [*carried, *renamed]
    )
    every = [*carried, *renamed]
    specs = {
        spec: SpecPlan(
            filter_id=f"f{index:04d}",
            bundle=plan.bundles[spec].hash,
            files=tuple(plan.bundles[spec].all_files),
            shards=tuple(s.id for s in every if any(item.spec == spec for item in s.items)),
        )
        for index, spec in enumerate(sorted(plan.bundles))
    }
    record = RoundRecord(
        round=options.round,
        run_id=run_id,
        designs={spec: before.get(spec, 0) + new[spec] for spec in sorted(plan.bundles)},
        new={spec: new[spec] for spec in sorted(plan.bundles)},
        estimate_usd=plan.estimate.cost_usd,
    )
    base = ledger or Ledger(campaign_run_id=run_id, width=plan.width)
    write_ledger(client, layout, campaign.name, base.with_round(record))
    return RunPlan(
        bucket=planned.bucket,
        run_prefix=planned.run_prefix,
        estimate=planned.estimate,
        dry_run=False,
        shards=shards,
        specs=specs,
        code_prefix=code_prefix,
        filtering_resources=resources["filtering"],
        filtering_packs=plan.filtering_jobs if any(len(job) > 1 for job in plan.filtering_jobs) else (),
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

"""
The plan task's S3 side: stage the inputs, cut the shards, write their work files and publish
their descriptors; and read the descriptors back.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import RunOptions
from boltzgen_airflow.campaign.specs import discover_bundles
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.planning.plan import Plan, cache_key, plan_campaign, stage_params
from boltzgen_airflow.run.staging import (
    fetch_specs,
    select_bundles,
    stage_bundles,
    stage_code,
    work_document,
    write_specs_manifest,
)
from boltzgen_airflow.sagemaker.requests import JobResources
from boltzgen_airflow.storage.commits import read_json
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import _put_json

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


def plan_run(client: Any, campaign: Campaign, options: RunOptions, run_id: str) -> dict[str, Any]:
    """
    Plan a run: discover and stage specs and code, cut shards, write work files, describe shards.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: the Airflow run id.
    :return: ``shards`` (descriptors), ``specs`` (per spec: filter id, bundle, shards), ``estimate``,
        ``run_prefix``, ``bucket``, ``dry_run``.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    design = campaign.design
    with tempfile.TemporaryDirectory(prefix="boltzgen-specs-") as tmp:
        root = campaign.specs_root()
        local_root = fetch_specs(client, root, Path(tmp)) if isinstance(root, str) else root
        bundles = discover_bundles(local_root, design.include)
        bad = [ConfigIssue("error", b.spec, "", e) for b in bundles for e in b.errors]
        if bad:
            raise CampaignError(bad)
        bundles = select_bundles(campaign, bundles, options.specs)
        plan = plan_campaign(
            campaign, bundles, num_designs=options.num_designs, target_hours=options.target_hours
        )
        log.info("Plan of %s:\n%s", campaign.name, estimate_table(plan))
        result: dict[str, Any] = {
            "bucket": layout.bucket,
            "run_prefix": layout.run_prefix(campaign.name, run_id),
            "estimate": plan.estimate.to_json(),
            "dry_run": options.dry_run,
            "shards": [],
            "specs": {},
        }
        if options.dry_run:
            return result
        stage_bundles(client, layout, local_root, bundles)
    code_prefix = stage_code(client, layout)
    resources = {stage: JobResources.from_stage_resources(r) for stage, r in plan.resources.items()}
    stages = plan.stages
    descriptors = []
    for shard in plan.shards:
        shard_bundles = [plan.bundles[s] for s in shard.specs]
        manifest_key = write_specs_manifest(client, layout, shard_bundles)
        items = []
        for item in shard.items:
            bundle = plan.bundles[item.spec]
            items.append({**item.to_json(), "spec": f"{bundle.hash}/{item.spec}", "spec_name": item.spec})
        upstream: str | None = None
        stage_info: dict[str, Any] = {}
        for stage in stages:
            key = cache_key(
                stage,
                params=stage_params(campaign, stage),
                bundle_hashes=[b.hash for b in shard_bundles],
                items=shard.items,
                image_uri=campaign.aws.image_uri,
                upstream_key=upstream,
            )
            work_prefix = layout.work_prefix(campaign.name, run_id, stage, shard.id)
            _put_json(
                client,
                layout.bucket,
                work_prefix + "work.json",
                work_document(
                    campaign,
                    run_id,
                    stage,
                    shard.id,
                    items=items,
                    max_runtime=resources[stage].max_runtime_seconds,
                ),
            )
            stage_info[stage] = {
                "key": key,
                "commit_key": layout.commit_key(stage, key),
                "attempts_prefix": layout.attempts_prefix(stage, key),
                "work_prefix": work_prefix,
                "resources": resources[stage].as_dict(),
            }
            upstream = key
        descriptors.append(
            {
                "shard": shard.id,
                "bucket": layout.bucket,
                "specs": list(shard.specs),
                "designs": shard.designs,
                "code_prefix": code_prefix,
                "specs_manifest": manifest_key,
                "min_fraction": design.min_design_fraction,
                "force": options.force,
                "run_stages": list(options.stages),
                "items": items,
                "stages": stage_info,
            }
        )
    result["shards"] = descriptors
    result["specs"] = {
        spec: {
            "filter_id": plan.filter_ids[spec],
            "bundle": plan.bundles[spec].hash,
            "files": list(plan.bundles[spec].all_files),
            "shards": [s.id for s in plan.shards_of(spec)],
        }
        for spec in sorted(plan.bundles)
    }
    result["code_prefix"] = code_prefix
    result["filtering_resources"] = resources["filtering"].as_dict()
    return result


#: what the shard tasks map over: a reference to a descriptor kept in S3
SHARD_REF_FIELDS = ("shard", "bucket", "descriptor")


def publish_shards(
    client: Any, campaign: Campaign, run_id: str, shards: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """
    Write the shard descriptors to S3 and return a reference to each, the map input of the shards.

    Every mapped task instance pulls the whole map input, so a run of N shards whose XCom held full
    descriptors (3 kB each) would move N x 3N kB through the API server; a reference is ~120 B
    and each task reads its own descriptor.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param run_id: the Airflow run id.
    :param shards: the descriptors :func:`plan_run` returned.
    :return: ``{"shard", "bucket", "descriptor"}`` per shard, in plan order.
    """
    from concurrent.futures import ThreadPoolExecutor

    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    keys = [layout.shard_key(campaign.name, run_id, str(s["shard"])) for s in shards]
    # boto3 clients are thread-safe; the run's writes are independent objects.
    pairs = list(zip(keys, shards, strict=True))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda pair: _put_json(client, layout.bucket, pair[0], pair[1]), pairs))
    _put_json(client, layout.bucket, layout.shards_key(campaign.name, run_id), {"shards": list(shards)})
    return [{"shard": s["shard"], "bucket": layout.bucket, "descriptor": key} for key, s in pairs]


def is_shard_ref(shard: Mapping[str, Any]) -> bool:
    """:param shard: a map input item; True for a reference from :func:`publish_shards`."""
    return "descriptor" in shard and "stages" not in shard


def load_shard(client: Any, shard: Mapping[str, Any]) -> dict[str, Any]:
    """
    Return the descriptor a shard reference points at (a full descriptor is returned as it is).

    :param client: a boto3 S3 client.
    :param shard: a reference from :func:`publish_shards`; anything else (a descriptor) is returned.
    :raises CampaignError: when the descriptor is missing or is another shard's.
    """
    if not is_shard_ref(shard):
        return dict(shard)
    bucket, key = str(shard.get("bucket", "")), str(shard.get("descriptor", ""))
    uri = f"s3://{bucket}/{key}"
    descriptor = read_json(client, bucket, key) if bucket and key else None
    if descriptor is None:
        raise CampaignError.single(uri, "shard", f"descriptor of shard {shard.get('shard')!r} not found")
    if descriptor.get("shard") != shard.get("shard"):
        raise CampaignError.single(
            uri, "shard", f"holds shard {descriptor.get('shard')!r}, not {shard.get('shard')!r}"
        )
    return descriptor


def load_shards(
    client: Any, campaign: Campaign, run_id: str, shards: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """
    Return the descriptors of a run's shards (one read of ``shards.json`` for references).

    :param client: a boto3 S3 client.
    :param campaign: the campaign.
    :param run_id: the Airflow run id.
    :param shards: the map input (references or descriptors).
    """
    if not any(is_shard_ref(s) for s in shards):
        return [dict(s) for s in shards]
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    key = layout.shards_key(campaign.name, run_id)
    uri = layout.uri(key)
    document = read_json(client, layout.bucket, key)
    if document is None:
        raise CampaignError.single(uri, "shards", "the run's shard descriptors are missing")
    by_id = {d["shard"]: d for d in document.get("shards", [])}
    missing = [s["shard"] for s in shards if is_shard_ref(s) and s["shard"] not in by_id]
    if missing:
        raise CampaignError.single(uri, "shards", f"lacks shards {missing}")
    return [by_id[s["shard"]] if is_shard_ref(s) else dict(s) for s in shards]

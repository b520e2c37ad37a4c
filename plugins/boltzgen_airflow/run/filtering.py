"""
The filtering of a spec: described from the plan, then resolved against the analysis shards that
are committed when it runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import RunOptions
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.planning.plan import cache_key, stage_params
from boltzgen_airflow.run.staging import work_document, write_specs_manifest
from boltzgen_airflow.storage.commits import list_sizes, read_commit
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import _put_json


def filter_specs(
    campaign: Campaign, options: RunOptions, run_id: str, plan: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """
    Describe the filtering of every spec of a plan, before any shard is known to be committed.

    Which analysis shards are committed is read later, when the spec's filtering runs
    (:func:`resolve_filtering`); this only gathers what the run's settings determine.

    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: the Airflow run id.
    :param plan: what :func:`plan_run` returned (the shards included).
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    shards = {s["shard"]: s for s in plan["shards"]}
    resources = plan.get("filtering_resources") or {}
    # A JSON round trip makes the key computed later from the XCom equal to one computed here.
    params = json.loads(json.dumps(stage_params(campaign, "filtering"), default=str))
    run_prefix = layout.run_prefix(campaign.name, run_id)
    entries = []
    for spec, info in plan["specs"].items():
        fid = info["filter_id"]
        analysis = []
        for shard_id in info["shards"]:
            stage = shards[shard_id]["stages"]["analysis"]
            own = [i for i in shards[shard_id]["items"] if i["spec_name"] == spec]
            analysis.append(
                {"shard": shard_id, "key": stage["key"], "commit_key": stage["commit_key"], "items": own}
            )
        entries.append(
            {
                "shard": fid,
                "spec": spec,
                "bucket": layout.bucket,
                "prefix": layout.prefix,
                "code_prefix": plan["code_prefix"],
                "min_fraction": 0.0,
                "force": options.force,
                "run_stages": list(options.stages),
                "bundle": info["bundle"],
                "files": list(info["files"]),
                "params": params,
                "image_uri": campaign.aws.image_uri,
                "analysis": analysis,
                "results_prefix": layout.uri(layout.results_prefix(campaign.name, run_id)),
                "work_prefix": layout.work_prefix(campaign.name, run_id, "filtering", fid),
                "analysis_manifest": f"{run_prefix}filtering/{fid}/analysis.manifest",
                "work": work_document(
                    campaign,
                    run_id,
                    "filtering",
                    fid,
                    items=[],
                    max_runtime=int(resources.get("max_runtime_seconds") or 0),
                ),
                "resources": resources,
            }
        )
    return entries


def resolve_filtering(client: Any, entry: Mapping[str, Any], *, write: bool = True) -> dict[str, Any]:
    """
    Find a spec's committed analysis shards now and describe its filtering job over them.

    The cache key hashes the committed analysis keys and items, so filtering over some of the
    shards never shares a commit with filtering over all of them. With ``write``, the spec's
    analysis ManifestFile (every file of every committed analysis attempt, under the prefix
    ``<prefix>/cache/analysis/``), its specs ManifestFile and its work.json are written.

    :param client: a boto3 S3 client.
    :param entry: one element of what :func:`filter_specs` returned.
    :param write: write the job's inputs (False only reads, e.g. for the report).
    :return: the stage operator's descriptor, with ``shards_total``, ``shards_committed`` and
        ``missing_shards``; ``stages`` is empty when no shard is committed.
    """
    layout = Layout(entry["bucket"], entry["prefix"])
    analysis_root = f"{layout.prefix}/cache/analysis/"
    committed: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    missing: list[str] = []
    for shard in entry["analysis"]:
        record = read_commit(client, layout.bucket, shard["commit_key"])
        if record is None:
            missing.append(shard["shard"])
        else:
            committed.append((shard, record))
    descriptor: dict[str, Any] = {
        **{k: v for k, v in entry.items() if k not in ("analysis", "work", "params", "files")},
        "shards_total": len(entry["analysis"]),
        "shards_committed": len(committed),
        "missing_shards": missing,
        "specs_manifest": None,
        "stages": {},
    }
    if not committed:
        return descriptor
    items = []
    for shard, _ in committed:
        own = shard["items"]
        first = min(own, key=lambda i: i["start"])
        items.append({**first, "count": sum(i["count"] for i in own), "shard": shard["shard"]})
    key = cache_key(
        "filtering",
        params=entry["params"],
        bundle_hashes=[entry["bundle"]],
        items=items,
        image_uri=entry["image_uri"],
        upstream_key=",".join(sorted(s["key"] for s, _ in committed)),
    )
    if write:
        entries: list[Any] = [{"prefix": layout.uri(analysis_root)}]
        for _, record in committed:
            attempt = record["attempt_prefix"]
            files = sorted(list_sizes(client, layout.bucket, attempt))
            entries.extend(f"{attempt[len(analysis_root) :]}{rel}" for rel in files)
        _put_json(client, layout.bucket, entry["analysis_manifest"], entries)
        bundle = SpecBundle(spec=entry["spec"], files=tuple(entry["files"][1:]), hash=entry["bundle"])
        descriptor["specs_manifest"] = write_specs_manifest(client, layout, [bundle])
        work = {**entry["work"], "items": items}
        _put_json(client, layout.bucket, entry["work_prefix"] + "work.json", work)
    descriptor["stages"] = {
        "filtering": {
            "key": key,
            "commit_key": layout.commit_key("filtering", key),
            "attempts_prefix": layout.attempts_prefix("filtering", key),
            "work_prefix": entry["work_prefix"],
            "resources": entry["resources"],
        }
    }
    return descriptor

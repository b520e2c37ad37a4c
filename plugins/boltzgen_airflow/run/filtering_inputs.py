"""
The filtering of a spec: described from the plan, published like a shard, then resolved against
the analysis shards that are committed when it runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import RunOptions
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.planning.plan import cache_key, stage_params
from boltzgen_airflow.run.descriptors import (
    AnalysisShard,
    DescriptorRef,
    ResolvedFiltering,
    RunPlan,
    ShardDescriptor,
    SpecFiltering,
    StageTarget,
)
from boltzgen_airflow.run.prepare import load_descriptor
from boltzgen_airflow.run.staging import work_document, write_specs_manifest
from boltzgen_airflow.storage.commits import CommitRecord, read_commit
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import list_sizes, put_json


def describe_filtering(
    campaign: Campaign, options: RunOptions, run_id: str, plan: RunPlan
) -> list[SpecFiltering]:
    """
    Describe the filtering of every spec of a plan, before any shard is known to be committed.

    Which analysis shards are committed is read later, when the spec's filtering runs
    (:func:`resolve_filtering`); this only gathers what the run's settings determine.

    :param campaign: the campaign with the run's overrides applied.
    :param options: the run's validated params.
    :param run_id: the Airflow run id.
    :param plan: the run's plan, its shards included.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    if plan.code_prefix is None or plan.filtering_resources is None:
        return []
    resources = plan.filtering_resources
    shards = {s.shard: s for s in plan.shards}
    # A JSON round trip makes the key computed later from the descriptor equal to one computed here.
    params = json.loads(json.dumps(stage_params(campaign, "filtering"), default=str))
    filters = []
    for spec, info in plan.specs.items():
        fid = info.filter_id
        analysis = []
        for shard_id in info.shards:
            target = shards[shard_id].stages["analysis"]
            analysis.append(
                AnalysisShard(shard_id, target.key, target.commit_key, shards[shard_id].items_of(spec))
            )
        filters.append(
            SpecFiltering(
                filter_id=fid,
                spec=spec,
                bucket=layout.bucket,
                prefix=layout.prefix,
                code_prefix=plan.code_prefix,
                force=options.force,
                run_stages=tuple(options.stages),
                bundle=info.bundle,
                files=info.files,
                params=params,
                image_uri=campaign.aws.image_uri,
                analysis=tuple(analysis),
                results_prefix=layout.uri(layout.results_prefix(campaign.name, run_id)),
                work_prefix=layout.work_prefix(campaign.name, run_id, "filtering", fid),
                analysis_manifest=layout.analysis_manifest_key(campaign.name, run_id, fid),
                work=work_document(
                    campaign, run_id, "filtering", fid, items=[], max_runtime=resources.max_runtime_seconds
                ),
                resources=resources,
            )
        )
    return filters


def publish_filtering(
    client: Any, campaign: Campaign, run_id: str, filters: Sequence[SpecFiltering]
) -> list[DescriptorRef]:
    """
    Write each spec's filtering descriptor to S3 and return a reference to each.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param run_id: the Airflow run id.
    :param filters: what :func:`describe_filtering` returned.
    :return: one reference per spec (the map input of the filtering tasks).
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    refs = [
        DescriptorRef(
            f.filter_id, layout.bucket, layout.filtering_key(campaign.name, run_id, f.filter_id), label=f.spec
        )
        for f in filters
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda r, f: put_json(client, r.bucket, r.descriptor, f.to_json()), refs, filters))
    return refs


def pack_refs(
    refs: Sequence[DescriptorRef], filters: Sequence[SpecFiltering], packs: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    """
    The map input of the filtering tasks: one reference per spec, or with packs (``sharding.
    pack_filtering``) ``{"pack": [reference, ...]}`` for each job of several specs.

    :param refs: from :func:`publish_filtering`.
    :param filters: the descriptions they point at (same order).
    :param packs: the specs of each filtering job (empty: one per spec). A spec in no pack gets a
        job of its own: a round's packs cover only the specs with new designs, and a spec whose
        shards all come from earlier rounds is still filtered (a cache hit when nothing changed).
    """
    by_spec = {f.spec: ref.to_json() for ref, f in zip(refs, filters, strict=True)}
    documents: list[dict[str, Any]] = []
    for pack in packs:
        members = [by_spec.pop(spec) for spec in pack if spec in by_spec]
        if len(members) == 1:
            documents.append(members[0])
        elif members:
            documents.append({"pack": members})
    return documents + list(by_spec.values())


def unpack_refs(documents: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """
    Every spec's reference among the map input of :func:`pack_refs`.

    :param documents: the filtering tasks' map input.
    """
    return [member for d in documents for member in d.get("pack", [d])]


def load_filtering(client: Any, ref: DescriptorRef) -> SpecFiltering:
    """
    Return the filtering descriptor a reference points at.

    :param client: a boto3 S3 client.
    :param ref: a reference of :func:`publish_filtering`.
    :raises RunStateError: when the descriptor is missing or is another spec's.
    """
    return SpecFiltering.from_json(load_descriptor(client, ref))


def _merged_items(committed: Sequence[AnalysisShard]) -> list[dict[str, Any]]:
    """The spec once per committed shard: that shard's items merged, with its shard id."""
    items = []
    for shard in committed:
        first = min(shard.items, key=lambda i: i["start"])
        items.append({**first, "count": sum(i["count"] for i in shard.items), "shard": shard.shard})
    return items


def _write_inputs(
    client: Any,
    filtering: SpecFiltering,
    committed: Sequence[tuple[AnalysisShard, CommitRecord]],
    items: list[dict[str, Any]],
) -> str:
    """Write the analysis and specs ManifestFiles and work.json; return the specs manifest's key."""
    layout = Layout(filtering.bucket, filtering.prefix)
    records = [record for _, record in committed]
    put_json(client, layout.bucket, filtering.analysis_manifest, _analysis_entries(client, layout, records))
    bundle = SpecBundle(spec=filtering.spec, files=tuple(filtering.files[1:]), hash=filtering.bundle)
    specs_manifest = write_specs_manifest(client, layout, [bundle])
    put_json(client, layout.bucket, filtering.work_prefix + "work.json", {**filtering.work, "items": items})
    return specs_manifest


def _analysis_entries(client: Any, layout: Layout, records: Sequence[CommitRecord]) -> list[Any]:
    """The analysis ManifestFile of committed attempts: every file, relative to ``<prefix>/cache/``."""
    root = layout.cache_root()
    entries: list[Any] = [{"prefix": layout.uri(root)}]
    for record in records:
        attempt = record.attempt_prefix
        entries.extend(
            f"{attempt[len(root) :]}{rel}" for rel in sorted(list_sizes(client, layout.bucket, attempt))
        )
    return entries


def resolve_filtering(client: Any, filtering: SpecFiltering, *, write: bool = True) -> ResolvedFiltering:
    """
    Find a spec's committed analysis shards now and describe its filtering job over them.

    The cache key hashes the committed analysis keys and items, so filtering over some of the
    shards never shares a commit with filtering over all of them. With ``write``, the spec's
    analysis ManifestFile (every file of every committed analysis attempt, under the prefix
    ``<prefix>/cache/``), its specs ManifestFile and its work.json are written.

    :param client: a boto3 S3 client.
    :param filtering: the spec's filtering as :func:`describe_filtering` described it.
    :param write: write the job's inputs (False only reads, e.g. for the report).
    """
    layout = Layout(filtering.bucket, filtering.prefix)
    committed: list[tuple[AnalysisShard, CommitRecord]] = []
    missing: list[str] = []
    for shard in filtering.analysis:
        record = read_commit(client, layout.bucket, shard.commit_key)
        if record is None:
            missing.append(shard.shard)
        else:
            committed.append((shard, record))
    resolved = ResolvedFiltering(filtering.spec, len(filtering.analysis), tuple(missing), None)
    if not committed:
        return resolved
    items = _merged_items([shard for shard, _ in committed])
    key = cache_key(
        "filtering",
        params=filtering.params,
        bundle_hashes=[filtering.bundle],
        items=items,
        image_uri=filtering.image_uri,
        upstream_key=",".join(sorted(s.key for s, _ in committed)),
    )
    specs_manifest = _write_inputs(client, filtering, committed, items) if write else None
    job = ShardDescriptor(
        shard=filtering.filter_id,
        bucket=filtering.bucket,
        specs=(filtering.spec,),
        designs=0,
        code_prefix=filtering.code_prefix,
        specs_manifest=specs_manifest,
        min_fraction=0.0,
        force=filtering.force,
        run_stages=filtering.run_stages,
        items=tuple(items),
        stages={
            "filtering": StageTarget(
                key=key,
                commit_key=layout.commit_key("filtering", key),
                attempts_prefix=layout.attempts_prefix("filtering", key),
                work_prefix=filtering.work_prefix,
                resources=filtering.resources,
            )
        },
        analysis_manifest=filtering.analysis_manifest,
    )
    return ResolvedFiltering(filtering.spec, len(filtering.analysis), tuple(missing), job)


def write_pack_inputs(
    client: Any,
    host: tuple[SpecFiltering, ResolvedFiltering],
    others: Sequence[tuple[SpecFiltering, ResolvedFiltering]],
    *,
    write: bool = True,
) -> ShardDescriptor:
    """
    Describe one filtering job for several specs (``sharding.pack_filtering``): the first spec's
    job, whose ``work.json`` lists the others under ``fused`` (each filtered after it into its own
    attempt, committed under its own key), over the union of their analysis and specs ManifestFiles.

    :param client: a boto3 S3 client.
    :param host: the spec whose job it is, described and resolved (:func:`resolve_filtering`, written).
    :param others: the other specs to filter in that job, each resolved with a job.
    :param write: write the job's inputs (False: describe them only, once they were written).
    :return: the host's job descriptor with the union's inputs.
    """
    described, resolved = host
    job = resolved.job
    if job is None:
        raise ValueError(f"{described.spec}: no committed analysis shard to filter")
    layout = Layout(described.bucket, described.prefix)
    every = [host, *others]
    bundles = [SpecBundle(spec=d.spec, files=tuple(d.files[1:]), hash=d.bundle) for d, _ in every]
    if not write:
        return dataclasses.replace(job, specs=tuple(d.spec for d, _ in every))
    # The attempts each spec's resolution found committed (its items name their shards).
    records: dict[str, CommitRecord] = {}
    for d, r in every:
        filtered = {str(i.get("shard")) for i in (r.job.items if r.job else ())}
        for shard in d.analysis:
            record = read_commit(client, layout.bucket, shard.commit_key) if shard.shard in filtered else None
            if record is not None:
                records[record.attempt_prefix] = record
    entries = _analysis_entries(client, layout, [records[k] for k in sorted(records)])
    put_json(client, layout.bucket, described.analysis_manifest, entries)
    fused = [
        {"stage": "filtering", "key": r.target.key, "work": {**d.work, "items": list(r.job.items)}}
        for d, r in others
        if r.job is not None and r.target is not None
    ]
    work = {**described.work, "items": list(job.items), "fused": fused}
    put_json(client, layout.bucket, described.work_prefix + "work.json", work)
    return dataclasses.replace(
        job,
        specs=tuple(d.spec for d, _ in every),
        specs_manifest=write_specs_manifest(client, layout, bundles),
    )

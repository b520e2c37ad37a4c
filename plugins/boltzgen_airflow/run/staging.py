"""
What the plan, filtering-preparation and report tasks do, free of Airflow.

Each function takes a boto3 S3 client and plain values, and returns the small JSON-ready
descriptors that travel through XCom; the data itself stays in S3.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from boltzgen_airflow.commit import list_sizes, read_commit, read_json, with_retries
from boltzgen_airflow.config import Campaign, split_s3_uri
from boltzgen_airflow.errors import CampaignError, ConfigIssue
from boltzgen_airflow.jobs import JobResources
from boltzgen_airflow.layout import Layout
from boltzgen_airflow.params import RunOptions
from boltzgen_airflow.planning import Plan, cache_key, plan_campaign, stage_params
from boltzgen_airflow.specs import SpecBundle, discover_bundles
from boltzgen_airflow.stages import SHARD_STAGES

log = logging.getLogger(__name__)
WORK_SCHEMA = 1


def step_scripts_dir() -> Path:
    """Return the folder of the step scripts (``BOLTZGEN_STEP_SCRIPTS_DIR`` wins)."""
    override = os.environ.get("BOLTZGEN_STEP_SCRIPTS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "include" / "step_scripts"


def _put_json(client: Any, bucket: str, key: str, document: Any) -> None:
    body = json.dumps(document, sort_keys=True, indent=1).encode()
    with_retries(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json"),
        what=f"write s3://{bucket}/{key}",
    )


def code_hash(folder: Path) -> tuple[str, list[Path]]:
    """
    Hash the step scripts (names and contents) so staged code is content-addressed.

    :param folder: the step scripts folder.
    """
    files = sorted(p for p in folder.glob("*.py") if p.is_file())
    if not files:
        raise CampaignError.single(str(folder), "", "no step scripts found")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32], files


def stage_code(client: Any, layout: Layout, folder: Path | None = None) -> str:
    """
    Upload the step scripts to ``<prefix>/code/<code-hash>/`` unless already there.

    :param client: a boto3 S3 client.
    :param layout: the campaign's S3 layout.
    :param folder: the step scripts (default: :func:`step_scripts_dir`).
    :return: the code prefix.
    """
    digest, files = code_hash(folder or step_scripts_dir())
    prefix = layout.code_prefix(digest)
    present = list_sizes(client, layout.bucket, prefix)
    for path in files:
        if present.get(path.name) != path.stat().st_size:
            data = path.read_bytes()
            with_retries(
                functools.partial(client.put_object, Bucket=layout.bucket, Key=prefix + path.name, Body=data),
                what=f"stage {path.name}",
            )
    return prefix


def fetch_specs(client: Any, uri: str, into: Path) -> Path:
    """
    Copy a specs folder from an ``s3://`` prefix to a local folder, keeping the layout.

    :param client: a boto3 S3 client.
    :param uri: ``s3://bucket/prefix``.
    :param into: an empty local folder.
    """
    bucket, prefix = split_s3_uri(uri)
    for rel in list_sizes(client, bucket, prefix):
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts:
            raise CampaignError.single(uri, "design.specs", f"object key {rel!r} leaves the specs prefix")
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        key = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        body = with_retries(functools.partial(client.get_object, Bucket=bucket, Key=key), what=f"read {key}")
        target.write_bytes(body["Body"].read())
    return into


def select_bundles(
    campaign: Campaign, bundles: Sequence[SpecBundle], subset: Sequence[str]
) -> list[SpecBundle]:
    """
    Keep the bundles a run asked for, naming every requested spec that does not exist.

    :param campaign: the campaign.
    :param bundles: every bundle of the campaign.
    :param subset: the requested spec paths (empty: all).
    """
    if not subset:
        return list(bundles)
    known = {b.spec: b for b in bundles}
    unknown = [s for s in subset if s not in known]
    if unknown:
        raise CampaignError.single(
            str(campaign.source_path or campaign.name),
            "params.specs",
            f"unknown spec(s) {unknown}; the campaign's specs are {sorted(known)}",
        )
    return [known[s] for s in subset]


def stage_bundles(client: Any, layout: Layout, root: Path, bundles: Iterable[SpecBundle]) -> int:
    """
    Upload spec bundles to ``<prefix>/inputs/<bundle-hash>/`` (content-addressed: existing files stay).

    :param client: a boto3 S3 client.
    :param layout: the campaign's S3 layout.
    :param root: the local specs root.
    :param bundles: the bundles.
    :return: the number of files uploaded.
    """
    uploaded = 0
    for bundle in bundles:
        present = list_sizes(client, layout.bucket, layout.bundle_prefix(bundle.hash))
        for rel in bundle.all_files:
            path = root / rel
            if present.get(rel) == path.stat().st_size:
                continue
            data = path.read_bytes()
            key = layout.bundle_file_key(bundle.hash, rel)
            with_retries(
                functools.partial(client.put_object, Bucket=layout.bucket, Key=key, Body=data),
                what=f"stage {rel}",
            )
            uploaded += 1
    return uploaded


def write_specs_manifest(client: Any, layout: Layout, bundles: Iterable[SpecBundle]) -> str:
    """
    Write the ManifestFile listing the files of some bundles (content-addressed key).

    :param client: a boto3 S3 client.
    :param layout: the campaign's S3 layout.
    :param bundles: the bundles the job reads.
    :return: the manifest's key.
    """
    entries = sorted({f"{b.hash}/{rel}" for b in bundles for rel in b.all_files})
    document: list[Any] = [{"prefix": layout.uri(layout.inputs_prefix())}, *entries]
    digest = hashlib.sha256(json.dumps(document).encode()).hexdigest()[:32]
    key = layout.specs_manifest_key(digest)
    _put_json(client, layout.bucket, key, document)
    return key


def _boltzgen_options(campaign: Campaign) -> dict[str, Any]:
    design = campaign.design
    return {
        "diffusion_batch_size": design.batch_size,
        "inverse_fold_num_sequences": design.inverse_fold_num_sequences,
        "skip_inverse_folding": design.skip_inverse_folding,
        "step_config": design.step_config,
    }


def _filtering_options(campaign: Campaign) -> dict[str, Any]:
    design = campaign.design
    return {
        "budget": design.budget,
        "alpha": design.alpha,
        "filter_biased": design.filter_biased,
        "metrics_override": dict(design.metrics_override),
        "additional_filters": list(design.additional_filters),
        "size_buckets": list(design.size_buckets),
        "refolding_rmsd_threshold": design.refolding_rmsd_threshold,
    }


def work_document(
    campaign: Campaign,
    run_id: str,
    stage: str,
    shard: str,
    *,
    items: Iterable[Mapping[str, Any]],
    max_runtime: int,
) -> dict[str, Any]:
    """
    Build a ``work.json`` (schema 1) for one job.

    :param campaign: the campaign (with the run's overrides).
    :param run_id: the Airflow run id.
    :param stage: the stage.
    :param shard: the shard id or the spec's filter id.
    :param items: the work items, each with ``spec`` (bundle path) and ``spec_name``.
    :param max_runtime: the job's max runtime in seconds.
    """
    return {
        "schema": WORK_SCHEMA,
        "campaign": campaign.name,
        "run_id": run_id,
        "stage": stage,
        "shard": shard,
        "protocol": campaign.design.protocol,
        "items": list(items),
        "boltzgen": _boltzgen_options(campaign),
        "filtering": _filtering_options(campaign),
        "max_runtime_seconds": max_runtime,
    }


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


def _hours(record: Mapping[str, Any]) -> float:
    try:
        start = datetime.fromisoformat(str(record["started_at"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(record["finished_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return float(record.get("seconds") or 0.0) / 3600
    return max(0.0, (end - start).total_seconds() / 3600)


def collect_run(
    client: Any,
    campaign: Campaign,
    run_id: str,
    *,
    plan: Mapping[str, Any],
    filters: Sequence[Mapping[str, Any]],
    prices: Mapping[str, float],
    started_at: str | None = None,
) -> dict[str, Any]:
    """
    Build the run manifest (see :class:`boltzgen_airflow.report.RunManifest`) from the commits in S3.

    A stage committed by a job of this run is ``committed``; one committed earlier is ``cached``.

    :param client: a boto3 S3 client.
    :param campaign: the campaign with the run's overrides applied.
    :param run_id: the Airflow run id.
    :param plan: what :func:`plan_run` returned.
    :param filters: what :func:`resolve_filtering` returned for the specs with a committed shard.
    :param prices: USD per hour by instance type.
    :param started_at: when the run started.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    bucket = layout.bucket
    shard_entries: list[dict[str, Any]] = []
    actual: dict[str, dict[str, float]] = {}
    committed_shards: dict[str, int] = {}
    produced: dict[str, int] = {}

    def account(stage: str, record: Mapping[str, Any], instance: str, cached: bool) -> None:
        if cached:
            return
        hours = _hours(record)
        row = actual.setdefault(stage, {"instance_hours": 0.0, "cost_usd": 0.0, "jobs": 0})
        row["instance_hours"] += hours
        row["cost_usd"] += hours * prices.get(instance, 0.0)
        row["jobs"] += 1

    for shard in plan["shards"]:
        stages: dict[str, Any] = {}
        for stage in SHARD_STAGES:
            info = shard["stages"].get(stage)
            if info is None:
                continue
            record = read_commit(client, bucket, info["commit_key"])
            if record is None:
                stages[stage] = {"status": "failed" if stage in shard["run_stages"] else "skipped"}
                continue
            cached = record.get("run_id") != run_id
            account(stage, record, info["resources"]["instance_type"], cached)
            stages[stage] = {
                "status": "cached" if cached else "committed",
                "job_name": record.get("job_name"),
                "seconds": record.get("seconds"),
                "designs_expected": record.get("designs_expected"),
                "designs_produced": record.get("designs_produced"),
            }
        last = stages.get("analysis", {})
        if last.get("status") in ("committed", "cached"):
            for spec in shard["specs"]:
                committed_shards[spec] = committed_shards.get(spec, 0) + 1
        for spec in shard["specs"]:
            produced[spec] = produced.get(spec, 0) + int(last.get("designs_produced") or 0) // max(
                1, len(shard["specs"])
            )
        shard_entries.append({"shard": shard["shard"], "specs": shard["specs"], "stages": stages})

    by_spec = {f["spec"]: f for f in filters}
    design = campaign.design
    # What analysis should hand to filtering per spec: every design, times its inverse-folded sequences.
    per_backbone = 1 if design.skip_inverse_folding else design.inverse_fold_num_sequences
    spec_entries = []
    results: dict[str, str] = {}
    for spec, info in plan["specs"].items():
        entry: dict[str, Any] = {
            "spec": spec,
            "shards_total": len(info["shards"]),
            "shards_committed": committed_shards.get(spec, 0),
            "missing_shards": [],
            "designs_expected": design.num_designs * per_backbone,
            "designs_produced": produced.get(spec, 0),
            "final_designs": 0,
        }
        flt = by_spec.get(spec)
        record = read_commit(client, bucket, flt["stages"]["filtering"]["commit_key"]) if flt else None
        if flt:
            entry["missing_shards"] = flt["missing_shards"]
        else:
            entry["missing_shards"] = list(info["shards"])
        if record is not None:
            cached = record.get("run_id") != run_id
            account("filtering", record, flt["stages"]["filtering"]["resources"]["instance_type"], cached)  # type: ignore[index]
            entry["final_designs"] = int(record.get("designs_produced") or 0)
            results[spec] = record["attempt_prefix"]
            complete = not entry["missing_shards"]
            entry["status"] = "complete" if complete else "partial"
        else:
            entry["status"] = "failed"
        spec_entries.append(entry)

    statuses = {e["status"] for e in spec_entries}
    status = "complete" if statuses == {"complete"} else "failed" if statuses <= {"failed"} else "partial"
    estimate = plan["estimate"]
    actual_total = {
        "instance_hours": round(sum(s["instance_hours"] for s in actual.values()), 4),
        "cost_usd": round(sum(s["cost_usd"] for s in actual.values()), 4),
        "stages": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in actual.items()},
    }
    return {
        "campaign": campaign.name,
        "run_id": run_id,
        "dag_id": campaign.dag_id,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": status,
        "results_prefix": layout.uri(layout.results_prefix(campaign.name, run_id)),
        "estimate": {
            **estimate,
            "instance_hours": round(
                sum(s.get("instance_hours", 0.0) for s in estimate.get("stages", {}).values()), 4
            ),
        },
        "actual": actual_total,
        "specs": spec_entries,
        "shards": shard_entries,
        "filter_attempts": results,
    }


def publish_results(client: Any, campaign: Campaign, run_id: str, manifest: Mapping[str, Any]) -> list[str]:
    """
    Copy each filtered spec's output to the run's results prefix and write the run manifest.

    :param client: a boto3 S3 client.
    :param campaign: the campaign.
    :param run_id: the Airflow run id.
    :param manifest: what :func:`collect_run` returned.
    :return: the keys written.
    """
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    results = layout.results_prefix(campaign.name, run_id)
    written = []
    for spec, attempt in manifest.get("filter_attempts", {}).items():
        stem = PurePosixPath(spec).with_suffix("").as_posix()
        for rel in sorted(list_sizes(client, layout.bucket, attempt)):
            if rel.startswith("_"):
                continue
            key = f"{results}{stem}/{rel}"
            with_retries(
                functools.partial(
                    client.copy_object,
                    Bucket=layout.bucket,
                    Key=key,
                    CopySource={"Bucket": layout.bucket, "Key": attempt + rel},
                ),
                what=f"copy {rel}",
            )
            written.append(key)
    run_key = layout.run_manifest_key(campaign.name, run_id)
    _put_json(client, layout.bucket, run_key, dict(manifest))
    written.append(run_key)
    return written

"""
What a run stages in S3 before any job starts: the step scripts, the spec bundles, the ManifestFile
lists of bundle files, and each job's ``work.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.settings import step_scripts_dir
from boltzgen_airflow.storage.layout import Layout, split_s3_uri
from boltzgen_airflow.storage.s3 import list_sizes, put_json, with_retries

log = logging.getLogger(__name__)
WORK_SCHEMA = 1


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
    put_json(client, layout.bucket, key, document)
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

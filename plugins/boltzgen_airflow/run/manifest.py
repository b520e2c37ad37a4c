"""The run manifest (``run.json``) built from the commits in S3, and the run's published results."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.stages import SHARD_STAGES
from boltzgen_airflow.storage.commits import list_sizes, read_commit, with_retries
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import _put_json


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
    Build the run manifest (see :class:`boltzgen_airflow.report.model.RunManifest`) from the commits in S3.

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

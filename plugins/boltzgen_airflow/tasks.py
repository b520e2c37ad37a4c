"""The bodies of the plan, filter_specs and report tasks: Airflow context in, small XComs out."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException

from boltzgen_airflow import runtime
from boltzgen_airflow.commit import list_sizes
from boltzgen_airflow.config import Campaign
from boltzgen_airflow.errors import CampaignError
from boltzgen_airflow.hooks import s3_client
from boltzgen_airflow.layout import Layout
from boltzgen_airflow.links import CampaignViewLink
from boltzgen_airflow.params import RunOptions, validate_run_params

log = logging.getLogger(__name__)
PLAN_INFO_KEY = "plan_info"
REPORT_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".csv": "text/csv; charset=utf-8"}


def _options(campaign: Campaign, context: Mapping[str, Any]) -> tuple[RunOptions, Campaign]:
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    try:
        return validate_run_params(campaign, context["params"], conf)
    except CampaignError as err:
        raise AirflowFailException(f"invalid run parameters:\n{err}") from None


def plan_task(campaign: Campaign, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    Validate the run, stage inputs, cut shards and return their descriptors.

    :param campaign: the DAG's campaign.
    :param context: the task context.
    :return: the shard descriptors (mapped over); the specs, estimate and prefixes go to the XCom
        ``plan_info``.
    """
    options, run_campaign = _options(campaign, context)
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    try:
        result = runtime.plan_run(client, run_campaign, options, str(context["run_id"]))
    except CampaignError as err:
        raise AirflowFailException(f"the campaign cannot run:\n{err}") from None
    shards: list[dict[str, Any]] = result.pop("shards")
    context["ti"].xcom_push(key=PLAN_INFO_KEY, value=result)
    if options.dry_run:
        log.info("Dry run: planned, no job started")
        return shards
    return runtime.publish_shards(client, run_campaign, str(context["run_id"]), shards)


def _plan(client: Any, campaign: Campaign, run_id: str, shards: Any, info: Any) -> dict[str, Any]:
    if shards is None or info is None:
        raise AirflowSkipException("the plan did not complete")
    if info.get("dry_run"):
        raise AirflowSkipException("dry run: nothing to filter or report")
    try:
        descriptors = runtime.load_shards(client, campaign, run_id, list(shards))
    except CampaignError as err:
        raise AirflowFailException(str(err)) from None
    return {**info, "shards": descriptors}


def filter_specs_task(
    campaign: Campaign, shards: Any, info: Any, context: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """
    Describe the filtering of every planned spec (mapped over; empty for a dry run).

    Which shards each spec filters is read when its filtering task runs, so clearing a failed shard
    and its spec's filtering is enough to filter the spec again.

    :param campaign: the DAG's campaign.
    :param shards: the plan's shard descriptors.
    :param info: the plan's ``plan_info`` XCom.
    :param context: the task context.
    """
    if info is not None and info.get("dry_run"):
        return []
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    plan = _plan(client, campaign, str(context["run_id"]), shards, info)
    options, run_campaign = _options(campaign, context)
    return runtime.filter_specs(run_campaign, options, str(context["run_id"]), plan)


def _spec_results(client: Any, bucket: str, attempts: Mapping[str, str], into: Path) -> dict[str, Any]:
    from boltzgen_airflow.report import SpecResult

    results: dict[str, Any] = {}
    for spec, attempt in attempts.items():
        listing = list_sizes(client, bucket, attempt)
        csvs = [rel for rel in listing if rel.endswith("final_ranked_designs/all_designs_metrics.csv")]
        if not csvs:
            continue
        folder = csvs[0].rsplit("/", 1)[0]
        target = into / spec.replace("/", "__")
        target.mkdir(parents=True, exist_ok=True)
        for rel in listing:
            inner = rel[len(folder) + 1 :] if rel.startswith(folder + "/") else ""
            # The metric CSVs, and the final designs' structures (final_<budget>_designs/*.cif)
            # that the report's 3D view embeds.
            wanted = ("/" not in inner and inner.endswith(".csv")) or (
                inner.startswith("final_") and inner.count("/") == 1 and inner.endswith(".cif")
            )
            if wanted:
                body = client.get_object(Bucket=bucket, Key=attempt + rel)["Body"].read()
                (target / inner).parent.mkdir(parents=True, exist_ok=True)
                (target / inner).write_bytes(body)
        results[spec] = SpecResult.from_directory(target)
    return results


def report_task(
    campaign: Campaign,
    asset: Any,
    *,
    shards: Any,
    info: Any,
    specs: Any,
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """
    Write the run manifest, final designs and the report to S3 and emit the campaign's Asset event.

    :param campaign: the DAG's campaign.
    :param asset: the campaign's Asset.
    :param shards: the plan's shard descriptors.
    :param info: the plan's ``plan_info`` XCom.
    :param specs: what filter_specs returned (None when it did not run).
    :param context: the task context.
    """
    from boltzgen_airflow.catalog import load_catalog

    run_id = str(context["run_id"])
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    plan = _plan(client, campaign, run_id, shards, info)
    _, run_campaign = _options(campaign, context)
    resolved = [runtime.resolve_filtering(client, entry, write=False) for entry in specs or []]
    filters = [f for f in resolved if f["shards_committed"]]
    for entry in resolved:
        if not entry["shards_committed"]:
            log.warning("%s: no committed analysis shard, not filtered", entry["spec"])
    catalog = load_catalog()
    prices = {
        name: catalog.get(name).price_per_hour for name in _instance_types(plan, filters) if name in catalog
    }
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    manifest = runtime.collect_run(
        client,
        run_campaign,
        run_id,
        plan=plan,
        filters=filters,
        prices=prices,
        started_at=started.isoformat() if started else None,
    )
    written = runtime.publish_results(client, run_campaign, run_id, manifest)
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    report_prefix = layout.report_prefix(campaign.name, run_id)
    try:
        from boltzgen_airflow.report import build_report, write_report

        with tempfile.TemporaryDirectory(prefix="boltzgen-report-") as tmp:
            results = _spec_results(
                client, layout.bucket, manifest.get("filter_attempts", {}), Path(tmp) / "in"
            )
            files = write_report(build_report(manifest, results), Path(tmp) / "out")
            for path in files:
                client.put_object(
                    Bucket=layout.bucket,
                    Key=report_prefix + path.name,
                    Body=path.read_bytes(),
                    # A presigned URL then opens the report in the browser instead of saving it.
                    ContentType=REPORT_CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                )
                written.append(report_prefix + path.name)
    except Exception as err:  # the manifest and designs are already safe; a report bug must not hide them
        log.exception("The HTML report could not be written: %s", err)
    log.info(
        "Run %s of %s is %s; results under %s",
        run_id,
        campaign.name,
        manifest["status"],
        manifest["results_prefix"],
    )
    for spec in manifest["specs"]:
        log.info(
            "  %s: %s, %d/%d shards, %d final designs",
            spec["spec"],
            spec["status"],
            spec["shards_committed"],
            spec["shards_total"],
            spec["final_designs"],
        )
    if manifest["status"] != "complete":
        # The partial results are published; failing keeps the run failed (a successful leaf would
        # mark it successful) and lets "clear failed tasks" bring the report back once shards commit.
        missing = {e["spec"]: e["missing_shards"] for e in manifest["specs"] if e["status"] != "complete"}
        raise AirflowFailException(
            f"run is {manifest['status']}: results under {manifest['results_prefix']} lack shards {missing}"
        )
    context["outlet_events"][asset].extra = {
        "campaign": campaign.name,
        "run_id": run_id,
        "status": manifest["status"],
        "results_prefix": manifest["results_prefix"],
        "report": layout.uri(report_prefix + "index.html"),
        "view": CampaignViewLink().get_link(None, ti_key=context["ti"]),
    }
    return {
        "status": manifest["status"],
        "results_prefix": manifest["results_prefix"],
        "run_manifest": layout.uri(layout.run_manifest_key(campaign.name, run_id)),
        "report": layout.uri(report_prefix + "index.html"),
        "files": len(written),
    }


def _instance_types(plan: Mapping[str, Any], filters: Any) -> set[str]:
    names = {s["resources"]["instance_type"] for shard in plan["shards"] for s in shard["stages"].values()}
    names.update(f["stages"]["filtering"]["resources"]["instance_type"] for f in filters or [])
    return names

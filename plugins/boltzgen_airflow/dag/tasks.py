"""The bodies of the plan, filter_specs and report tasks: Airflow context in, small XComs out."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException

from boltzgen_airflow.campaign.catalog import load_catalog
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import RunOptions, validate_run_params
from boltzgen_airflow.exceptions import CampaignError, RunStateError
from boltzgen_airflow.run import filtering_inputs as filtering
from boltzgen_airflow.run import manifest as run_manifest
from boltzgen_airflow.run import prepare, rounds
from boltzgen_airflow.run.descriptors import DescriptorRef, ResolvedFiltering, RunPlan
from boltzgen_airflow.sagemaker.hooks import s3_client
from boltzgen_airflow.sagemaker.links import CampaignViewLink
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.storage.s3 import list_sizes

log = logging.getLogger(__name__)
PLAN_TASK_ID = "plan"
FILTER_SPECS_TASK_ID = "filter_specs"
PLAN_INFO_KEY = "plan_info"
# The plan's error, for the report of a run whose plan failed.
PLAN_ERROR_KEY = "plan_error"
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
    Validate the run, stage inputs, cut shards, publish their descriptors and return references.

    :param campaign: the DAG's campaign.
    :param context: the task context.
    :return: one :class:`~boltzgen_airflow.run.descriptors.DescriptorRef` document per shard (mapped
        over; empty for a dry run); the specs, estimate and prefixes go to the XCom ``plan_info``.
    """
    try:
        return _plan_and_publish(campaign, context)
    except Exception as err:
        try:
            context["ti"].xcom_push(key=PLAN_ERROR_KEY, value=str(err)[:4000])
        except Exception as push_error:  # the plan's own error is what must surface
            log.warning("Could not keep the plan's error for the report: %s", push_error)
        raise


def _plan_and_publish(campaign: Campaign, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    options, run_campaign = _options(campaign, context)
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    run_id = str(context["run_id"])
    try:
        plan = prepare.plan_run(client, run_campaign, options, run_id)
    except CampaignError as err:
        raise AirflowFailException(f"the campaign cannot run:\n{err}") from None
    context["ti"].xcom_push(key=PLAN_INFO_KEY, value=plan.info_json())
    if options.dry_run:
        log.info("Dry run: planned, no job started")
        return []
    return [ref.to_json() for ref in prepare.publish_shards(client, run_campaign, run_id, plan.shards)]


def _plan(client: Any, campaign: Campaign, run_id: str, shards: Any, info: Any) -> RunPlan:
    """Read the plan back: ``plan_info`` and the shard descriptors (one read of ``shards.json``)."""
    if shards is None or info is None:
        raise AirflowSkipException("the plan did not complete")
    if info.get("dry_run"):
        raise AirflowSkipException("dry run: nothing to filter or report")
    refs = [DescriptorRef.from_json(s) for s in shards]
    try:
        descriptors = prepare.load_shards(client, campaign, run_id, refs)
    except RunStateError as err:
        raise AirflowFailException(str(err)) from None
    return RunPlan.from_info_json(info, descriptors)


def filter_specs_task(
    campaign: Campaign, shards: Any, info: Any, context: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """
    Describe and publish the filtering of every planned spec; return references (mapped over).

    Which shards each spec filters is read when its filtering task runs, so clearing a failed shard
    and its spec's filtering is enough to filter the spec again.

    :param campaign: the DAG's campaign.
    :param shards: the plan's shard references.
    :param info: the plan's ``plan_info`` XCom.
    :param context: the task context.
    :return: one :class:`~boltzgen_airflow.run.descriptors.DescriptorRef` document per spec (empty
        for a dry run).
    """
    if info is not None and info.get("dry_run"):
        return []
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    run_id = str(context["run_id"])
    plan = _plan(client, campaign, run_id, shards, info)
    options, run_campaign = _options(campaign, context)
    described = filtering.describe_filtering(run_campaign, options, run_id, plan)
    return [ref.to_json() for ref in filtering.publish_filtering(client, run_campaign, run_id, described)]


def _resolve_specs(client: Any, specs: Sequence[Mapping[str, Any]] | None) -> list[ResolvedFiltering]:
    """Resolve every spec's filtering now, reading only (the report writes no job inputs)."""
    resolved = []
    for document in specs or []:
        try:
            described = filtering.load_filtering(client, DescriptorRef.from_json(document))
        except RunStateError as err:
            log.warning("%s; its spec is reported as not filtered", err)
            continue
        entry = filtering.resolve_filtering(client, described, write=False)
        if entry.job is None:
            log.warning("%s: no committed analysis shard, not filtered", entry.spec)
        resolved.append(entry)
    return [f for f in resolved if f.job is not None]


def _prices(plan: RunPlan, filters: Sequence[ResolvedFiltering]) -> dict[str, float]:
    """USD per hour of every instance type the run's jobs ran on."""
    names = {t.resources.instance_type for shard in plan.shards for t in shard.stages.values()}
    names.update(f.target.resources.instance_type for f in filters if f.target)
    catalog = load_catalog()
    return {name: catalog.get(name).price_per_hour for name in names if name in catalog}


def _spec_results(client: Any, bucket: str, attempts: Mapping[str, str], into: Path) -> dict[str, Any]:
    """Download each filtered spec's final metrics CSVs and read them."""
    from boltzgen_airflow.report.model import SpecResult

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


def _write_report(
    client: Any, layout: Layout, report_prefix: str, manifest: run_manifest.RunManifest
) -> list[str]:
    """Render the HTML report and its CSVs into S3; a report bug is logged, never raised."""
    written: list[str] = []
    try:
        from boltzgen_airflow.report.model import build_report
        from boltzgen_airflow.report.rendering import write_report

        with tempfile.TemporaryDirectory(prefix="boltzgen-report-") as tmp:
            results = _spec_results(client, layout.bucket, manifest.filter_attempts, Path(tmp) / "in")
            files = write_report(build_report(manifest.to_json(), results), Path(tmp) / "out")
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
    return written


def _log_outcome(manifest: run_manifest.RunManifest) -> None:
    log.info(
        "Run %s of %s is %s; results under %s",
        manifest.run_id,
        manifest.campaign,
        manifest.status,
        manifest.results_prefix,
    )
    for spec in manifest.specs:
        log.info(
            "  %s: %s, %d/%d shards, %d final designs",
            spec.spec,
            spec.status,
            spec.shards_committed,
            spec.shards_total,
            spec.final_designs,
        )


def _planned(context: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """
    Return what plan (shard references, ``plan_info``) and filter_specs returned, failing the task
    for good with the plan's error when the plan did not complete.

    The report reads them itself rather than through task arguments: an argument from a task that
    failed raises XComNotFound before the task's body runs, and the report would retry for minutes.
    """
    ti = context["ti"]
    shards = ti.xcom_pull(task_ids=PLAN_TASK_ID)
    info = ti.xcom_pull(task_ids=PLAN_TASK_ID, key=PLAN_INFO_KEY)
    if shards is None or info is None:
        error = ti.xcom_pull(task_ids=PLAN_TASK_ID, key=PLAN_ERROR_KEY)
        raise AirflowFailException(
            f"the plan did not complete, nothing to report: {error}"
            if error
            else "the plan did not complete, nothing to report (see the plan task's log)"
        )
    return shards, info, ti.xcom_pull(task_ids=FILTER_SPECS_TASK_ID)


def report_task(campaign: Campaign, asset: Any, *, context: Mapping[str, Any]) -> dict[str, Any]:
    """
    Write the run manifest, final designs and the report to S3 and emit the campaign's Asset event.

    The plan's shard references and ``plan_info`` and what filter_specs returned (None when it did
    not run) are read from XCom; a run whose plan failed fails here at once, with the plan's error.

    :param campaign: the DAG's campaign.
    :param asset: the campaign's Asset.
    :param context: the task context.
    """
    shards, info, specs = _planned(context)
    run_id = str(context["run_id"])
    client = s3_client(campaign.aws.conn_id, campaign.aws.region)
    plan = _plan(client, campaign, run_id, shards, info)
    options, run_campaign = _options(campaign, context)
    filters = _resolve_specs(client, specs)
    started = getattr(context.get("dag_run"), "start_date", None)
    manifest = run_manifest.collect_run(
        client,
        run_campaign,
        run_id,
        plan=plan,
        filters=filters,
        prices=_prices(plan, filters),
        started_at=started.isoformat() if started else None,
    )
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    conf = dict(getattr(context.get("dag_run"), "conf", None) or {})
    closed = rounds.close_round(
        client, layout, run_campaign, options, run_id=run_id, manifest=manifest, conf=conf
    )
    if closed is not None:
        manifest = dataclasses.replace(manifest, rounds=closed.summary)
    written = run_manifest.publish_results(client, run_campaign, run_id, manifest)
    report_prefix = layout.report_prefix(campaign.name, run_id)
    written += _write_report(client, layout, report_prefix, manifest)
    _log_outcome(manifest)
    if manifest.rounds.get("reason"):
        log.info("Campaign run %s ends: %s", manifest.rounds["campaign_run_id"], manifest.rounds["reason"])
    if not manifest.complete:
        # The partial results are published; failing keeps the run failed (a successful leaf would
        # mark it successful) and lets "clear failed tasks" bring the report back once shards commit.
        missing = {s.spec: list(s.missing_shards) for s in manifest.specs if s.status != "complete"}
        raise AirflowFailException(
            f"run is {manifest.status}: results under {manifest.results_prefix} lack shards {missing}"
        )
    report_uri = layout.uri(report_prefix + "index.html")
    context["outlet_events"][asset].extra = {
        "campaign": campaign.name,
        "run_id": run_id,
        "status": manifest.status,
        "results_prefix": manifest.results_prefix,
        "report": report_uri,
        "view": CampaignViewLink().get_link(None, ti_key=context["ti"]),
    }
    return {
        "status": manifest.status,
        "results_prefix": manifest.results_prefix,
        "run_manifest": layout.uri(layout.run_manifest_key(campaign.name, run_id)),
        "report": report_uri,
        "files": len(written),
        "next_round": dict(closed.next_conf) if closed and closed.next_conf else None,
        "next_run_id": closed.next_run_id if closed else None,
    }


def next_round_task(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """
    The conf of the next round's run, or None when the campaign run ends (its trigger is skipped).

    :param result: what ``report`` returned.
    """
    conf = (result or {}).get("next_round")
    if conf:
        log.info("Round %s starts as run %s", conf["round"], result and result.get("next_run_id"))
    return dict(conf) if conf else None

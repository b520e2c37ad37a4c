"""
Campaign -> DAG.

Parsing reads the campaign files and nothing else: no AWS, no S3, no spec files. Everything that
needs them happens in the ``plan`` task of a run. A campaign file that does not validate becomes a
DAG of its own whose documentation shows the error and whose one task fails with it, so it is seen
in the UI and the other campaigns are unaffected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.param import ParamsDict

from boltzgen_airflow.campaign.loading import campaign_files, load_campaign
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.params import campaign_params
from boltzgen_airflow.dag.docs import _doc_md
from boltzgen_airflow.dag.pools import stage_pools
from boltzgen_airflow.dag.shared_params import _share_param_schemas
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.sagemaker.operators import BoltzGenFilteringOperator, BoltzGenStageOperator
from boltzgen_airflow.sagemaker.requests import JobSettings
from boltzgen_airflow.settings import campaigns_dir, check_interval
from boltzgen_airflow.stages import SHARD_STAGES

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)
MAP_INDEX_TEMPLATE = "{{ shard_id }}"
_DAG_ID_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def build_dag(campaign: Campaign) -> DAG:
    """
    Build the DAG of one campaign.

    :param campaign: a validated campaign.
    """
    from airflow.sdk import DAG, Asset, XComArg, task, task_group

    from boltzgen_airflow.dag import tasks

    interval = check_interval()
    pools = stage_pools(campaign)
    settings = JobSettings.from_aws(campaign.aws)
    aws: dict[str, Any] = {"aws_conn_id": campaign.aws.conn_id, "region_name": campaign.aws.region}
    asset = Asset(
        f"s3://{campaign.aws.bucket}/{campaign.aws.prefix}/campaigns/{campaign.name}",
        extra={"campaign": campaign.name},
    )
    default_args: dict[str, Any] = {
        "owner": campaign.owner,
        "retries": campaign.retries,
        "retry_delay": timedelta(seconds=campaign.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
    }
    callbacks: dict[str, Any] = {}
    if campaign.notifications.sns_topic_arn:
        from boltzgen_airflow.dag.notifications import RunSnsNotifier

        notifier = RunSnsNotifier(
            aws_conn_id=campaign.aws.conn_id,
            region_name=campaign.aws.region,
            target_arn=campaign.notifications.sns_topic_arn,
            subject=f"BoltzGen campaign {campaign.name}",
            message="Run {{ run_id }} of {{ dag.dag_id }} ended {{ dag_run.state }}.",
        )
        if campaign.notifications.on_failure:
            callbacks["on_failure_callback"] = notifier
        if campaign.notifications.on_success:
            callbacks["on_success_callback"] = notifier

    def stage_operator(stage: str, shard: Any, upstream: Any) -> BoltzGenStageOperator:
        pool, _ = pools[stage]
        return BoltzGenStageOperator(
            task_id=stage,
            stage=stage,
            campaign_name=campaign.name,
            settings=settings,
            shard=shard,
            upstream=upstream,
            check_interval=interval,
            pool=pool,
            pool_slots=1,
            map_index_template=MAP_INDEX_TEMPLATE,
            **aws,
        )

    with DAG(
        dag_id=campaign.dag_id,
        description=(campaign.description or f"BoltzGen campaign {campaign.name}")[:200],
        schedule=campaign.schedule,
        start_date=campaign.start_date,
        catchup=campaign.catchup,
        max_active_runs=campaign.max_active_runs,
        tags=sorted({"boltzgen", *campaign.tags}),
        default_args=default_args,
        params=ParamsDict(campaign_params(campaign)),
        doc_md=_doc_md(campaign, pools),
        **callbacks,
    ) as dag:
        _share_param_schemas(dag)

        @task(task_id="plan", retries=min(campaign.retries, 2))
        def plan(**context: Any) -> list[dict[str, Any]]:
            return tasks.plan_task(campaign, context)

        planned: Any = plan()
        plan_info = XComArg(planned.operator, key=tasks.PLAN_INFO_KEY)
        shard_stages = [
            s for s in SHARD_STAGES if not (s == "inverse_folding" and campaign.design.skip_inverse_folding)
        ]

        @task_group(group_id="shard")
        def shard_chain(shard: Any) -> Any:
            # Each stage hands its commit (attempt prefix, counts) to the next through XCom.
            last = None
            for stage in shard_stages:
                last = stage_operator(stage, shard, last.output if last is not None else None)
            return last

        chains = shard_chain.expand(shard=planned)

        @task(task_id="filter_specs", retries=min(campaign.retries, 2))
        def filter_specs(shards: Any, info: Any, **context: Any) -> list[dict[str, Any]]:
            return tasks.filter_specs_task(campaign, shards, info, context)

        specs = filter_specs(planned, plan_info)
        filtering_pool, _ = pools["filtering"]
        # One task per spec (job, verification and commit): see BoltzGenFilteringOperator.
        filtered = BoltzGenFilteringOperator.partial(
            task_id="filtering",
            campaign_name=campaign.name,
            settings=settings,
            check_interval=interval,
            pool=filtering_pool,
            pool_slots=1,
            trigger_rule="all_done",
            map_index_template=MAP_INDEX_TEMPLATE,
            **aws,
        ).expand(spec=specs)
        chains >> filtered

        @task(task_id="report", trigger_rule="all_done", outlets=[asset], retries=min(campaign.retries, 2))
        def report(shards: Any, info: Any, specs: Any, **context: Any) -> dict[str, Any]:
            return tasks.report_task(campaign, asset, shards=shards, info=info, specs=specs, context=context)

        reported = report(planned, plan_info, specs)
        filtered >> reported
    return dag


def broken_dag(path: Path, error: Exception, dag_id: str) -> DAG:
    """
    Build the stand-in DAG of a campaign file that does not validate.

    :param path: the campaign file.
    :param error: what is wrong (a :class:`CampaignError` lists file, field and message).
    :param dag_id: the DAG id to use.
    """
    from airflow.providers.common.compat.sdk import AirflowFailException
    from airflow.sdk import DAG, task

    message = str(error)
    lines = "\n".join(f"    {line}" for line in message.splitlines())
    with DAG(
        dag_id=dag_id,
        description=f"Invalid campaign file {path.name}",
        schedule=None,
        tags=["boltzgen", "invalid"],
        doc_md=(
            f"# Invalid campaign file\n\n`{path}` does not validate:\n\n{lines}\n\n"
            "Fix the file; the DAG reappears as the campaign once it validates."
        ),
    ) as dag:

        @task(task_id="campaign_error", retries=0)
        def campaign_error() -> None:
            raise AirflowFailException(f"invalid campaign file {path}:\n{message}")

        campaign_error()
    return dag


def _broken_id(path: Path, taken: Iterable[str]) -> str:
    # Cut so that a suffix still fits Airflow's 250-character limit: a longer id raises while
    # parsing and would hide every campaign of the folder.
    base = ("boltzgen_" + _DAG_ID_RE.sub("_", path.stem).strip("_"))[:200]
    dag_id, count = base, 0
    while dag_id in taken:
        count += 1
        dag_id = f"{base}_invalid" if count == 1 else f"{base}_invalid{count}"
    return dag_id


def build_dags(folder: str | Path | None = None) -> dict[str, DAG]:
    """
    Build one DAG per campaign file of a folder; an invalid file yields its stand-in DAG.

    :param folder: the campaigns folder (default: :func:`campaigns_dir`).
    :return: dag id -> DAG.
    """
    dags: dict[str, DAG] = {}
    broken: list[tuple[Path, CampaignError]] = []
    for path in campaign_files(folder or campaigns_dir()):
        try:
            campaign = load_campaign(path)
            if campaign.dag_id in dags:
                raise CampaignError.single(
                    str(path), "name", f"another campaign file already uses name {campaign.name!r}"
                )
            dags[campaign.dag_id] = build_dag(campaign)
        except CampaignError as err:
            log.error("Campaign file %s is invalid:\n%s", path, err)
            broken.append((path, err))
    # Stand-ins are named last, so a broken file named after a campaign never takes its DAG id.
    for path, error in broken:
        dag_id = _broken_id(path, dags)
        dags[dag_id] = broken_dag(path, error, dag_id)
    return dags

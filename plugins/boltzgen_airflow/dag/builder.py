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
from boltzgen_airflow.dag.docs import doc_md
from boltzgen_airflow.dag.pools import stage_pools
from boltzgen_airflow.dag.shared_params import share_param_schemas
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.sagemaker.links import CampaignViewLink
from boltzgen_airflow.sagemaker.operators import BoltzGenFilteringOperator, BoltzGenStageOperator
from boltzgen_airflow.sagemaker.requests import JobSettings
from boltzgen_airflow.sagemaker.sensors import StageCommittedSensor
from boltzgen_airflow.settings import campaigns_dir, check_interval
from boltzgen_airflow.stages import shard_stages
from boltzgen_airflow.storage.layout import Layout

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)
# Airflow renders it before execute (the reference's label or shard id: the UI names a task that
# fails before reading its descriptor), then after execute, failed or not (``shard_id``, which
# the operator sets from the descriptor).
MAP_INDEX_TEMPLATE = (
    "{{ shard_id if shard_id is defined else (task.shard.get('label') or task.shard.get('shard')) }}"
)
_DAG_ID_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _default_args(campaign: Campaign) -> dict[str, Any]:
    return {
        "owner": campaign.owner,
        "retries": campaign.retries,
        "retry_delay": timedelta(seconds=campaign.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
    }


def _callbacks(campaign: Campaign) -> dict[str, Any]:
    """The DAG's run callbacks: an SNS message on failure and/or success, when the campaign asks."""
    notifications = campaign.notifications
    if not notifications.sns_topic_arn:
        return {}
    from boltzgen_airflow.dag.notifications import RunSnsNotifier

    notifier = RunSnsNotifier(
        aws_conn_id=campaign.aws.conn_id,
        region_name=campaign.aws.region,
        target_arn=notifications.sns_topic_arn,
        subject=f"BoltzGen campaign {campaign.name}",
        message="Run {{ run_id }} of {{ dag.dag_id }} ended {{ dag_run.state }}.",
    )
    callbacks: dict[str, Any] = {}
    if notifications.on_failure:
        callbacks["on_failure_callback"] = notifier
    if notifications.on_success:
        callbacks["on_success_callback"] = notifier
    return callbacks


def _operator_args(campaign: Campaign) -> dict[str, Any]:
    """What every stage and filtering task of the campaign is built with."""
    return {
        "campaign_name": campaign.name,
        "settings": JobSettings.from_aws(campaign.aws),
        "check_interval": check_interval(),
        "pool_slots": 1,
        "map_index_template": MAP_INDEX_TEMPLATE,
        "aws_conn_id": campaign.aws.conn_id,
        "region_name": campaign.aws.region,
    }


def _sensor_args(campaign: Campaign) -> dict[str, dict[str, Any]]:
    """What each stage's sensor is built with: its timeout from the stage's maximum runtime."""
    from boltzgen_airflow.campaign.catalog import resolve_resources

    resources = resolve_resources(campaign, campaign.design.num_designs)
    return {
        stage: {
            "max_runtime_seconds": res.max_runtime_seconds,
            "poke_interval": check_interval(),
            "map_index_template": MAP_INDEX_TEMPLATE,
            "aws_conn_id": campaign.aws.conn_id,
            "region_name": campaign.aws.region,
        }
        for stage, res in resources.items()
    }


def build_dag(campaign: Campaign) -> DAG:
    """
    Build the DAG of one campaign.

    :param campaign: a validated campaign.
    """
    from airflow.sdk import DAG

    pools = stage_pools(campaign)
    with DAG(
        dag_id=campaign.dag_id,
        description=(campaign.description or f"BoltzGen campaign {campaign.name}")[:200],
        schedule=campaign.schedule,
        start_date=campaign.start_date,
        catchup=campaign.catchup,
        max_active_runs=campaign.max_active_runs,
        tags=sorted({"boltzgen", *campaign.tags}),
        default_args=_default_args(campaign),
        params=ParamsDict(campaign_params(campaign)),
        doc_md=doc_md(campaign, pools),
        **_callbacks(campaign),
    ) as dag:
        share_param_schemas(dag)
        _add_tasks(campaign, pools)
    return dag


def _add_tasks(campaign: Campaign, pools: dict[str, tuple[str, int]]) -> None:
    """Add plan -> shard chains -> filter_specs -> filtering -> report to the DAG being built."""
    from airflow.sdk import Asset, XComArg, task, task_group

    from boltzgen_airflow.dag import tasks

    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    asset = Asset(layout.uri(layout.campaign_prefix(campaign.name)), extra={"campaign": campaign.name})
    operator_args = _operator_args(campaign)
    retries = min(campaign.retries, 2)

    @task(task_id=tasks.PLAN_TASK_ID, retries=retries)
    def plan(**context: Any) -> list[dict[str, Any]]:
        return tasks.plan_task(campaign, context)

    planned: Any = plan()
    plan_info = XComArg(planned.operator, key=tasks.PLAN_INFO_KEY)

    sensor_args = _sensor_args(campaign)

    @task_group(group_id="shard")
    def shard_chain(shard: Any) -> Any:
        # stage -> <stage>_committed -> next stage: the sensor hands the commit (attempt prefix,
        # counts) to the next stage through XCom, whoever committed it.
        committed = None
        stages = shard_stages(campaign.design.skip_inverse_folding)
        for index, stage in enumerate(stages):
            last = BoltzGenStageOperator(
                task_id=stage,
                stage=stage,
                shard=shard,
                upstream=committed.output if committed is not None else None,
                pool=pools[stage][0],
                **operator_args,
            )
            if index + 1 < len(stages):
                committed = StageCommittedSensor(
                    task_id=f"{stage}_committed", stage=stage, shard=shard, **sensor_args[stage]
                )
                last >> committed
        return last

    chains = shard_chain.expand(shard=planned)

    @task(task_id=tasks.FILTER_SPECS_TASK_ID, retries=retries)
    def filter_specs(shards: Any, info: Any, **context: Any) -> list[dict[str, Any]]:
        return tasks.filter_specs_task(campaign, shards, info, context)

    specs = filter_specs(planned, plan_info)
    # One task per spec (job, verification and commit): see BoltzGenFilteringOperator.
    filtered = BoltzGenFilteringOperator.partial(
        task_id="filtering", pool=pools["filtering"][0], trigger_rule="all_done", **operator_args
    ).expand(spec=specs)
    chains >> filtered

    # The report reads plan's and filter_specs' XComs itself: see tasks.report_task.
    @task(task_id="report", trigger_rule="all_done", outlets=[asset], retries=retries)
    def report(**context: Any) -> dict[str, Any]:
        return tasks.report_task(campaign, asset, context=context)

    reported: Any = report()
    reported.operator.operator_extra_links = (CampaignViewLink(),)
    [planned, specs, filtered] >> reported
    _add_next_round(campaign, reported, retries)


def _add_next_round(campaign: Campaign, reported: Any, retries: int) -> None:
    """After report: start the next round as a new run of this DAG when report asks for one."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import task

    from boltzgen_airflow.dag import tasks

    @task.short_circuit(task_id="next_round", retries=retries)
    def next_round(result: Any) -> dict[str, Any] | None:
        return tasks.next_round_task(result)

    conf: Any = next_round(reported)
    TriggerDagRunOperator(
        task_id="start_next_round",
        trigger_dag_id=campaign.dag_id,
        trigger_run_id="{{ ti.xcom_pull(task_ids='report')['next_run_id'] }}",
        conf=conf,
        logical_date=None,
        # A cleared or retried try finds the round already started instead of failing.
        skip_when_already_exists=True,
        # The conf holds the DAG's params only; anything else is refused by plan.
        openlineage_inject_parent_info=False,
        retries=retries,
    )


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

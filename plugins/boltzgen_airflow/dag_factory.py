"""
Campaign -> DAG.

Parsing reads the campaign files and nothing else: no AWS, no S3, no spec files. Everything that
needs them happens in the ``plan`` task of a run. A campaign file that does not validate becomes a
DAG of its own whose documentation shows the error and whose one task fails with it, so it is seen
in the UI and the other campaigns are unaffected.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.param import ParamsDict

from boltzgen_airflow.config import Campaign, campaign_files, load_campaign
from boltzgen_airflow.errors import CampaignError
from boltzgen_airflow.jobs import JobSettings
from boltzgen_airflow.links import CampaignViewLink
from boltzgen_airflow.operators import BoltzGenFilteringOperator, BoltzGenStageOperator, pool_name
from boltzgen_airflow.params import campaign_params
from boltzgen_airflow.stages import SHARD_STAGES
from boltzgen_airflow.ui.paths import view_path

if TYPE_CHECKING:
    from airflow.sdk import DAG

log = logging.getLogger(__name__)
MAP_INDEX_TEMPLATE = "{{ shard_id }}"
_DAG_ID_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def campaigns_dir() -> Path:
    """Return the campaigns folder (``BOLTZGEN_CAMPAIGNS_DIR`` wins over ``include/configs/campaigns``)."""
    override = os.environ.get("BOLTZGEN_CAMPAIGNS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "include" / "configs" / "campaigns"


def check_interval() -> int:
    """Seconds between SageMaker and S3 polls (``BOLTZGEN_CHECK_INTERVAL``, default 30)."""
    try:
        return max(1, int(os.environ.get("BOLTZGEN_CHECK_INTERVAL", "30")))
    except ValueError:
        return 30


def stage_pools(campaign: Campaign) -> dict[str, tuple[str, int]]:
    """
    Return the pool and its size for each stage: one pool per instance type, sized by the stage's
    ``max_parallel_jobs`` (the larger when stages share an instance type).

    Resolved from the campaign file alone (the ``auto`` preset is sized by one spec's designs), so
    parsing stays free of spec reading.

    :param campaign: the campaign.
    """
    from boltzgen_airflow.catalog import resolve_resources

    resources = resolve_resources(campaign, campaign.design.num_designs)
    sizes: dict[str, int] = {}
    result: dict[str, tuple[str, int]] = {}
    for stage, res in resources.items():
        name = pool_name(res.instance_type.name)
        sizes[name] = max(sizes.get(name, 0), res.max_parallel_jobs)
        result[stage] = (name, 0)
    return {stage: (name, sizes[name]) for stage, (name, _) in result.items()}


def ensure_pools(campaigns: list[Campaign]) -> dict[str, int]:
    """
    Create or resize the pools the campaigns use (``include_deferred=True``: a deferred job holds its slot).

    Runs where the metadata database is reachable (a setup step, the CLI, tests), never at parse time.

    :param campaigns: the campaigns.
    :return: pool name -> slots.
    """
    from airflow.models.pool import Pool

    wanted: dict[str, int] = {}
    for campaign in campaigns:
        for name, slots in stage_pools(campaign).values():
            wanted[name] = max(wanted.get(name, 0), slots)
    for name, slots in wanted.items():
        Pool.create_or_update_pool(
            name=name,
            slots=slots,
            description="SageMaker Processing jobs of this instance type (BoltzGen campaigns)",
            include_deferred=True,
        )
    return wanted


class SharedSchemaParams(ParamsDict):
    """
    A DAG's params whose copies share each param's JSON schema.

    Airflow deep-copies the DAG's params into every operator it builds (``BaseOperator``'s
    ``apply_defaults``). The schemas (form sections, descriptions, enums) are never changed after
    parsing, so copying them for each of a campaign's ~45 operators only costs parse time. A copy
    holds new :class:`~airflow.sdk.Param` objects with their own ``source`` and value, and is a
    plain :class:`ParamsDict`, so operators and their serialization are as before.
    """

    def __deepcopy__(self, memo: dict[int, Any] | None) -> ParamsDict:
        copies = {}
        for key in self:
            param = self.get_param(key)
            # A new Param with the same attributes (the schema shared); ``Param.__copy__`` would
            # re-check the default's JSON for each operator.
            clone = param.__class__.__new__(param.__class__)
            clone.__dict__.update(param.__dict__)
            if isinstance(param.value, (list, dict)):
                clone.value = copy.deepcopy(param.value, memo)
            copies[key] = clone
        return ParamsDict(copies, self.suppress_exception)


def _share_param_schemas(dag: DAG) -> None:
    """
    Replace the params of a DAG by a :class:`SharedSchemaParams` holding the same params.

    :param dag: a DAG before its tasks are added.
    """
    shared = SharedSchemaParams({key: dag.params.get_param(key) for key in dag.params})
    # Assigning ``dag.params`` runs the DAG's converter, which makes a plain ParamsDict again.
    object.__setattr__(dag, "params", shared)


def _doc_md(campaign: Campaign, pools: dict[str, tuple[str, int]]) -> str:
    design = campaign.design
    stages = " → ".join(
        s
        for s in (*SHARD_STAGES, "filtering")
        if not (s == "inverse_folding" and design.skip_inverse_folding)
    )
    pool_rows = "\n".join(f"| {stage} | `{name}` | {slots} |" for stage, (name, slots) in pools.items())
    return f"""# BoltzGen campaign `{campaign.name}`

{campaign.description or ""}

*File:* `{campaign.source_path}` · *Specs:* `{design.specs}` (`{design.include}`)
· *Protocol:* `{design.protocol}` · *Designs per spec:* {design.num_designs} · *Budget:* {design.budget}
· *Results:* `s3://{campaign.aws.bucket}/{campaign.aws.prefix}/campaigns/{campaign.name}/runs/<run>/`

**[Results of every run in the campaign view]({view_path(campaign.dag_id).lstrip("/")})**: designs,
3D structures, metric distributions, shards and the report (also the *Campaign results* link of
each run's `report` task).

**Stages**: plan → per shard ({stages.replace(" → filtering", "")}), each one task: a SageMaker
Processing job, then the verification and commit of its output → filtering per spec (one task: job,
verification and commit over the spec's committed shards) → report.

| stage | pool | slots |
|---|---|---|
{pool_rows}

**Re-running failed shards.** Every stage output is committed in S3 under a key of what determines
it, so nothing committed runs twice. A run with a failed shard still filters each spec over its
committed shards and publishes these partial results, but the spec's `filtering` task and the
`report` fail, naming the missing shards. Clear the run's *failed tasks*
(`airflow dags clear {campaign.dag_id} --run-id <run> --only-failed`, or *Clear* → *Only failed*
in the UI): the failed shards' uncommitted stages start jobs, then the partial specs are filtered
again over every shard and the report is rewritten; committed shards and complete specs are left
alone. Triggering the campaign again works the same way; set `force` to redo committed stages,
`stages` to resume from a stage, `dry_run` to see the plan and estimate only.
"""


def build_dag(campaign: Campaign) -> DAG:
    """
    Build the DAG of one campaign.

    :param campaign: a validated campaign.
    """
    from airflow.sdk import DAG, Asset, XComArg, task, task_group

    from boltzgen_airflow import tasks

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
        from boltzgen_airflow.notifications import RunSnsNotifier

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

        reported: Any = report(planned, plan_info, specs)
        reported.operator.operator_extra_links = (CampaignViewLink(),)
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

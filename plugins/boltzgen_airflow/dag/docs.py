"""The documentation shown on a campaign's DAG page."""

from __future__ import annotations

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.stages import shard_stages
from boltzgen_airflow.storage.layout import Layout
from boltzgen_airflow.ui.paths import view_path


def doc_md(campaign: Campaign, pools: dict[str, tuple[str, int]]) -> str:
    """
    Return the Markdown of a campaign's DAG page: what it runs, its pools, how to re-run failed shards.

    :param campaign: the campaign.
    :param pools: stage -> (pool, slots).
    """
    design = campaign.design
    layout = Layout(campaign.aws.bucket, campaign.aws.prefix)
    stages = " → ".join(s for s in (*shard_stages(design.skip_inverse_folding), "filtering"))
    pool_rows = "\n".join(f"| {stage} | `{name}` | {slots} |" for stage, (name, slots) in pools.items())
    return f"""# BoltzGen campaign `{campaign.name}`

{campaign.description or ""}

*File:* `{campaign.source_path}` · *Specs:* `{design.specs}` (`{design.include}`)
· *Protocol:* `{design.protocol}` · *Designs per spec:* {design.num_designs} · *Budget:* {design.budget}
· *Results:* `{layout.uri(layout.campaign_prefix(campaign.name))}/runs/<run>/`

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

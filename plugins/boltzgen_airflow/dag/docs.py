"""The documentation shown on a campaign's DAG page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.stages import SHARD_STAGES

if TYPE_CHECKING:
    pass


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

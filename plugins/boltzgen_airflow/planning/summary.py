"""A plan as a text table: what ``boltzgen-airflow plan`` prints and the ``plan`` task logs."""

from __future__ import annotations

from boltzgen_airflow.planning.plan import Plan


def plan_table(plan: Plan, title: str) -> list[str]:
    """
    Return the plan's headline, its estimate per stage and the totals, one line each.

    :param plan: the plan.
    :param title: what is planned (the campaign's DAG id).
    """
    est = plan.estimate
    lines = [
        f"{title}: {len(plan.bundles)} specs x {plan.num_designs} designs, {len(plan.shards)} shards",
        f"{'stage':16} {'instance':16} {'jobs':>6} {'parallel':>8} {'inst-h':>9} {'gpu-h':>9} "
        f"{'span-h':>8} {'cost $':>10}",
    ]
    for stage, s in est.stages.items():
        lines.append(
            f"{stage:16} {s.instance_type:16} {s.jobs:6d} {plan.resources[stage].max_parallel_jobs:8d} "
            f"{s.instance_hours:9.2f} {s.gpu_hours:9.2f} {s.makespan_hours:8.2f} {s.cost_usd:10.2f}"
        )
    lines.append(
        f"total: makespan {est.makespan_hours:.2f} h (lower bound {est.lower_bound_hours:.2f} h), "
        f"{est.gpu_hours:.1f} GPU-h, ${est.cost_usd:,.2f}"
    )
    lines.extend(f"auto {setting}: {why}" for setting, why in plan.choices.items())
    return lines

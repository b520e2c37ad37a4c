"""
One Airflow pool per instance type: its name, its size from the campaign file, and its creation where
the metadata database is reachable (a setup step, the CLI, tests; never at parse time).
"""

from __future__ import annotations

import re

from boltzgen_airflow.campaign.model import Campaign

_POOL_RE = re.compile(r"[^a-z0-9_]+")


def pool_name(instance_type: str) -> str:
    """
    Return the Airflow pool of an instance type, e.g. ``sagemaker_ml_g5_2xlarge``.

    :param instance_type: the SageMaker instance type.
    """
    return "sagemaker_" + _POOL_RE.sub("_", instance_type.lower()).strip("_")


def stage_pools(campaign: Campaign) -> dict[str, tuple[str, int]]:
    """
    Return the pool and its size for each stage: one pool per instance type, sized by the stage's
    ``max_parallel_jobs`` (the larger when stages share an instance type).

    Resolved from the campaign file alone (the ``auto`` preset is sized by one spec's designs), so
    parsing stays free of spec reading.

    :param campaign: the campaign.
    """
    from boltzgen_airflow.campaign.catalog import resolve_resources

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

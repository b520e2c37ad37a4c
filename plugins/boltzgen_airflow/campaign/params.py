"""The params of a campaign DAG's manual runs, and their validation in ``plan``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.sagemaker.limits import INSTANCE_TYPE_PATTERN
from boltzgen_airflow.stages import PROTOCOLS, STAGES

if TYPE_CHECKING:
    from airflow.sdk import Param

    from boltzgen_airflow.campaign.model import Campaign


def instance_param(stage: str) -> str:
    """
    Return the name of the param overriding a stage's instance type.

    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    """
    return f"{stage}_instance_type"


def campaign_params(campaign: Campaign) -> dict[str, Param]:
    """
    Build the params of a campaign's DAG, defaulting to the campaign's settings.

    :param campaign: the campaign.
    """
    from airflow.sdk import Param

    design = campaign.design
    params: dict[str, Param] = {
        "num_designs": Param(
            design.num_designs,
            type="integer",
            minimum=1,
            maximum=10_000_000,
            title="Designs per spec",
            description="How many designs BoltzGen makes for each spec (split over shards).",
            section="Design",
        ),
        "budget": Param(
            design.budget,
            type="integer",
            minimum=1,
            title="Final designs per spec",
            description="Designs filtering selects per spec; changing only this re-runs only filtering.",
            section="Design",
        ),
        "protocol": Param(
            design.protocol,
            type="string",
            enum=list(PROTOCOLS),
            title="Protocol",
            description="BoltzGen's design protocol.",
            section="Design",
        ),
        "specs": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            title="Specs subset",
            description="Spec paths (relative to the specs folder) to run; empty runs every spec.",
            section="Design",
        ),
        "target_hours": Param(
            campaign.sharding.target_hours,
            type=["number", "string"],
            pattern="^auto$",
            exclusiveMinimum=0,
            maximum=216,
            title="Target hours per shard",
            description=(
                "Runtime the planner aims at for one shard job, or auto: the granularity whose plan "
                "ends first within the jobs' limits."
            ),
            section="Execution",
        ),
        "deadline_hours": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Deadline (hours)",
            description=(
                "Run on the cheapest preset whose estimate ends within this many hours, as "
                "`boltzgen-airflow plan --deadline` marks it (empty: the campaign's scaling)."
            ),
            section="Execution",
        ),
        "stages": Param(
            list(STAGES),
            type="array",
            items={"type": "string", "enum": list(STAGES)},
            minItems=1,
            uniqueItems=True,
            title="Stages to run",
            description=(
                "Stages that may start jobs. Stages left out use their committed output when there is "
                "one, so listing the later stages resumes a campaign from there."
            ),
            section="Execution",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Validate, plan and estimate only; no job is started.",
            section="Execution",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Run the selected stages again even where their output is committed.",
            section="Execution",
        ),
    }
    for stage in STAGES:
        params[instance_param(stage)] = Param(
            None,
            type=["null", "string"],
            pattern=INSTANCE_TYPE_PATTERN,
            title=f"{stage} instance type",
            description=f"Instance type of the {stage} jobs (empty: the campaign's setting).",
            section="Instances",
        )
    return params


@dataclass(frozen=True)
class RunOptions:
    """
    A run's validated params.

    :param num_designs: designs per spec.
    :param budget: final designs per spec.
    :param protocol: BoltzGen protocol.
    :param specs: spec paths to run (empty: all).
    :param target_hours: target runtime per shard job in hours, or ``auto``.
    :param stages: stages that may start jobs.
    :param dry_run: plan only.
    :param force: ignore committed outputs of the selected stages.
    :param instance_types: per-stage instance type overrides.
    :param deadline_hours: plan on the cheapest preset ending within it (None: as the campaign says).
    """

    num_designs: int
    budget: int
    protocol: str
    specs: tuple[str, ...] = ()
    target_hours: float | str = "auto"
    stages: tuple[str, ...] = STAGES
    dry_run: bool = False
    force: bool = False
    instance_types: Mapping[str, str] = field(default_factory=dict)
    deadline_hours: float | None = None

    def overrides(self) -> dict[str, Any]:
        """The campaign settings these options replace (dotted keys for ``Campaign.with_overrides``)."""
        result: dict[str, Any] = {
            "design.num_designs": self.num_designs,
            "design.budget": self.budget,
            "design.protocol": self.protocol,
            "sharding.target_hours": self.target_hours,
        }
        for stage, instance in self.instance_types.items():
            result[f"scaling.{stage}.instance_type"] = instance
        return result


def _issue(file: str, key: str, message: str) -> ConfigIssue:
    return ConfigIssue("error", file, f"params.{key}", message)


def validate_run_params(
    campaign: Campaign, params: Mapping[str, Any], conf: Mapping[str, Any] | None = None
) -> tuple[RunOptions, Campaign]:
    """
    Validate a run's params and conf and apply them to the campaign.

    :param campaign: the campaign of the DAG.
    :param params: the run's resolved params.
    :param conf: the run's conf as triggered; keys the DAG does not declare are rejected.
    :return: the options and the campaign with the overrides applied.
    :raises CampaignError: naming every bad key and value.
    """
    file = str(campaign.source_path or campaign.name)
    declared = set(campaign_params(campaign))
    issues = [
        _issue(file, key, f"unknown param {key!r}; the DAG accepts {sorted(declared)}")
        for key in sorted(set(conf or {}) - declared)
    ]

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = params.get(key, default)
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            issues.append(_issue(file, key, f"expected a number, got {value!r}"))
            return default
        if not isinstance(value, kind):
            issues.append(_issue(file, key, f"expected {getattr(kind, '__name__', kind)}, got {value!r}"))
            return default
        return value

    design = campaign.design
    num_designs = get("num_designs", int, design.num_designs)
    budget = get("budget", int, design.budget)
    protocol = get("protocol", str, design.protocol)
    specs = get("specs", (list, tuple), [])
    target = get("target_hours", (int, float, str), campaign.sharding.target_hours)
    stages = get("stages", (list, tuple), list(STAGES))
    dry_run = get("dry_run", bool, False)
    force = get("force", bool, False)
    deadline = get("deadline_hours", (int, float, type(None)), None)
    if deadline is not None and not deadline > 0:
        issues.append(_issue(file, "deadline_hours", f"must be above 0 hours, got {deadline!r}"))
    if protocol not in PROTOCOLS:
        issues.append(
            _issue(file, "protocol", f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
        )
    if any(not isinstance(s, str) or not s for s in specs):
        issues.append(_issue(file, "specs", f"spec paths must be non-empty strings, got {specs!r}"))
    bad_stages = [s for s in stages if s not in STAGES]
    if bad_stages or not stages:
        issues.append(
            _issue(
                file, "stages", f"unknown or no stages {bad_stages or stages!r}; stages are {list(STAGES)}"
            )
        )
    instances: dict[str, str] = {}
    for stage in STAGES:
        value = params.get(instance_param(stage))
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            issues.append(_issue(file, instance_param(stage), f"expected an instance type, got {value!r}"))
            continue
        instances[stage] = value
    if issues:
        raise CampaignError(issues)
    options = RunOptions(
        num_designs=num_designs,
        budget=budget,
        protocol=protocol,
        specs=tuple(specs),
        target_hours=target if isinstance(target, str) else float(target),
        stages=tuple(s for s in STAGES if s in stages),
        dry_run=dry_run,
        force=force,
        instance_types=instances,
        deadline_hours=float(deadline) if deadline else None,
    )
    try:
        updated = campaign.with_overrides(options.overrides())
    except CampaignError as err:
        names = {
            "design.num_designs": "num_designs",
            "design.budget": "budget",
            "design.protocol": "protocol",
            "sharding.target_hours": "target_hours",
            **{f"scaling.{s}.instance_type": instance_param(s) for s in STAGES},
        }
        raise CampaignError(_issue(file, names.get(i.path, i.path), i.message) for i in err.issues) from None
    return options, updated

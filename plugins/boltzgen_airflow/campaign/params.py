"""The params of a campaign DAG's manual runs, and their validation in ``plan``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boltzgen_airflow.campaign.catalog import load_catalog, resolve_resources, stage_instance
from boltzgen_airflow.campaign.model import MAX_ROUNDS
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.sagemaker.limits import INSTANCE_TYPE_PATTERN
from boltzgen_airflow.stages import GPU_STAGES, PROTOCOLS, STAGES

# Airflow's own run id pattern: what a triggered round carries as its campaign run.
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.~:+-]{1,250}\Z")

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
        "designs_per_spec": Param(
            None,
            type=["null", "object"],
            additionalProperties={"type": "integer", "minimum": 1, "maximum": 10_000_000},
            title="Designs of each spec",
            description=(
                "Spec path -> designs of that spec (designs 0 to N-1), for the specs that should not "
                "get 'Designs per spec'. A next round sets it from the pass rates it saw."
            ),
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
        # "null" among the types: the form marks every field whose type lacks it as required.
        "specs": Param(
            [],
            type=["null", "array"],
            items={"type": "string", "minLength": 1},
            title="Specs subset",
            description="Spec paths (relative to the specs folder), one a line; empty runs every spec.",
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
        # An array with examples is the form's multi-select.
        "stages": Param(
            list(STAGES),
            type="array",
            items={"type": "string", "enum": list(STAGES)},
            examples=list(STAGES),
            values_display={stage: stage.replace("_", " ").capitalize() for stage in STAGES},
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
        **_round_params(campaign),
    }
    for stage, (shown, choices) in instance_choices(campaign).items():
        params[instance_param(stage)] = Param(
            shown,
            type=["null", "string"],
            pattern=INSTANCE_TYPE_PATTERN,
            examples=choices,
            title=f"{stage.replace('_', ' ').capitalize()} instance type",
            description=(
                f"Instance type of the {stage.replace('_', ' ')} jobs; {shown} is the campaign's "
                "(left as it is or emptied, the campaign's setting decides)."
            ),
            section="Instances",
        )
    return params


def instance_choices(campaign: Campaign) -> dict[str, tuple[str, list[str]]]:
    """
    Return, per stage, the campaign's instance type and the catalog's types that can run the stage.

    The campaign's type is resolved from its file alone, as its pools are (an ``auto`` preset is
    chosen by one spec's designs; the plan chooses it again from all of them).

    :param campaign: the campaign.
    """
    catalog = load_catalog()
    resources = resolve_resources(campaign, campaign.design.num_designs, catalog)
    result = {}
    for stage, res in resources.items():
        fits = sorted(n for n, t in catalog.instances.items() if t.is_gpu or stage not in GPU_STAGES)
        result[stage] = (res.instance_type.name, fits)
    return result


def _round_params(campaign: Campaign) -> dict[str, Param]:
    """The params of rounds and of the spend cap (docs/architecture.md, "Rounds and the spend cap")."""
    from airflow.sdk import Param

    design = campaign.design
    return {
        "until_passing": Param(
            design.until_passing,
            type=["null", "integer"],
            minimum=1,
            title="Designs that must pass, per spec",
            description=(
                "Rounds go on until each spec has this many designs passing BoltzGen's filters "
                "(empty: one round)."
            ),
            section="Rounds",
        ),
        "max_rounds": Param(
            design.rounds,
            type="integer",
            minimum=1,
            maximum=MAX_ROUNDS,
            title="Most rounds",
            description="Runs of this DAG one campaign run may take, the first included.",
            section="Rounds",
        ),
        "max_cost_usd": Param(
            design.max_cost_usd,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Spend cap (USD)",
            description=(
                "On-demand cost all rounds may spend: plan refuses a run estimated above what is "
                "left, and no job starts once the spend would pass it (empty: no cap)."
            ),
            section="Rounds",
        ),
        "round": Param(
            1,
            type="integer",
            minimum=1,
            maximum=MAX_ROUNDS,
            title="Round",
            description="Set by the run that starts the next round; 1 starts a campaign run.",
            section="Rounds",
        ),
        "campaign_run_id": Param(
            None,
            type=["null", "string"],
            title="Campaign run",
            description="Set by the run that starts the next round: the run id of its round 1.",
            section="Rounds",
        ),
    }


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
    :param designs_per_spec: spec -> designs of that spec, where it differs from ``num_designs``.
    :param until_passing: passing designs each spec needs (None: one round).
    :param max_rounds: rounds the campaign run may take.
    :param max_cost_usd: what all rounds may spend (None: no cap).
    :param round: this run's round, from 1.
    :param campaign_run_id: the run id of round 1 (None in round 1).
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
    designs_per_spec: Mapping[str, int] = field(default_factory=dict)
    until_passing: int | None = None
    max_rounds: int = 1
    max_cost_usd: float | None = None
    round: int = 1
    campaign_run_id: str | None = None

    def designs_of(self, spec: str) -> int:
        """
        Designs of one spec in this run.

        :param spec: a spec path.
        """
        return self.designs_per_spec.get(spec, self.num_designs)

    def overrides(self) -> dict[str, Any]:
        """The campaign settings these options replace (dotted keys for ``Campaign.with_overrides``)."""
        result: dict[str, Any] = {
            "design.num_designs": self.num_designs,
            "design.budget": self.budget,
            "design.protocol": self.protocol,
            "sharding.target_hours": self.target_hours,
            "design.until_passing": self.until_passing,
            "design.max_rounds": self.max_rounds,
            "design.max_cost_usd": self.max_cost_usd,
        }
        for stage, instance in self.instance_types.items():
            result[f"scaling.{stage}.instance_type"] = instance
        return result


def _issue(file: str, key: str, message: str) -> ConfigIssue:
    return ConfigIssue("error", file, f"params.{key}", message)


def _round_options(
    file: str,
    params: Mapping[str, Any],
    campaign: Campaign,
    issues: list[ConfigIssue],
    get: Callable[[str, type | tuple[type, ...], Any], Any],
) -> dict[str, Any]:
    """The options of rounds and of the spend cap, with an issue for each bad value."""
    design = campaign.design
    counts = get("designs_per_spec", (dict, type(None)), None) or {}
    bad = {k: v for k, v in counts.items() if not isinstance(k, str) or not k or not _count(v)}
    if bad:
        issues.append(
            _issue(file, "designs_per_spec", f"expected spec path -> designs (an integer from 1), got {bad}")
        )
    until = params.get("until_passing", design.until_passing)
    if until is not None and not _count(until):
        issues.append(_issue(file, "until_passing", f"expected designs (an integer from 1), got {until!r}"))
    cap = params.get("max_cost_usd", design.max_cost_usd)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0):
        issues.append(_issue(file, "max_cost_usd", f"expected USD above 0, got {cap!r}"))
    run_round = get("round", int, 1)
    campaign_run = params.get("campaign_run_id")
    if (run_round > 1) != bool(campaign_run):
        issues.append(
            _issue(
                file,
                "campaign_run_id",
                "only a round after the first names its campaign run, and it must",
            )
        )
    if campaign_run is not None and (not isinstance(campaign_run, str) or not _RUN_ID_RE.match(campaign_run)):
        issues.append(_issue(file, "campaign_run_id", f"not a run id: {campaign_run!r}"))
    return {
        "designs_per_spec": {k: v for k, v in counts.items() if k not in bad},
        "until_passing": until if _count(until) else None,
        "max_rounds": get("max_rounds", int, design.rounds),
        "max_cost_usd": float(cap) if isinstance(cap, int | float) and not isinstance(cap, bool) else None,
        "round": run_round,
        "campaign_run_id": campaign_run or None,
    }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000_000


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
    specs = get("specs", (list, tuple, type(None)), []) or []
    target = get("target_hours", (int, float, str), campaign.sharding.target_hours)
    stages = get("stages", (list, tuple), list(STAGES))
    dry_run = get("dry_run", bool, False)
    force = get("force", bool, False)
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
    shown = {stage: name for stage, (name, _) in instance_choices(campaign).items()}
    for stage in STAGES:
        value = params.get(instance_param(stage))
        if value in (None, "", shown[stage]):
            continue
        if not isinstance(value, str):
            issues.append(_issue(file, instance_param(stage), f"expected an instance type, got {value!r}"))
            continue
        issues.extend(_instance_issues(file, stage, value))
        instances[stage] = value
    rounds = _round_options(file, params, campaign, issues, get)
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
        **rounds,
    )
    names = {
        "design.num_designs": "num_designs",
        "design.budget": "budget",
        "design.protocol": "protocol",
        "sharding.target_hours": "target_hours",
        "design.until_passing": "until_passing",
        "design.max_rounds": "max_rounds",
        "design.max_cost_usd": "max_cost_usd",
        **{f"scaling.{s}.instance_type": instance_param(s) for s in STAGES},
    }
    # A param already found wrong keeps the campaign's value, so it is reported once.
    wrong = {issue.path for issue in issues}
    overrides = {k: v for k, v in options.overrides().items() if f"params.{names[k]}" not in wrong}
    try:
        updated = campaign.with_overrides(overrides)
    except CampaignError as err:
        issues.extend(_issue(file, names.get(i.path, i.path), i.message) for i in err.issues)
    if issues:
        raise CampaignError(issues)
    return options, updated


def _instance_issues(file: str, stage: str, name: str) -> list[ConfigIssue]:
    """The catalog's verdict on a stage's instance type param (unknown, or no GPU on a GPU stage)."""
    _, issue = stage_instance(load_catalog(), stage, name, file)
    return [_issue(file, instance_param(stage), issue.message)] if issue else []

"""Instance types (GPUs, memory, price), scaling presets and per-stage resources."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from boltzgen_airflow.exceptions import CampaignError, ConfigIssue, UnknownInstanceTypeError
from boltzgen_airflow.sagemaker.limits import MAX_RUNTIME_SECONDS
from boltzgen_airflow.settings import configs_dir
from boltzgen_airflow.stages import GPU_STAGES, STAGES

if TYPE_CHECKING:
    from boltzgen_airflow.campaign.model import Campaign

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    """
    Read a YAML data file of this package.

    :param path: the file.
    :raises CampaignError: when the file is missing or not valid YAML.
    """
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as err:
        raise CampaignError.single(str(path), "", f"cannot read data file: {err}") from None


@dataclass(frozen=True)
class InstanceType:
    """
    One SageMaker Processing instance type.

    :param name: e.g. ``ml.g5.12xlarge``.
    :param gpus: number of GPUs (0 for CPU types).
    :param gpu_model: e.g. ``A10G`` (None for CPU types).
    :param gpu_memory_gb: memory per GPU.
    :param vcpus: virtual CPUs.
    :param memory_gb: host memory.
    :param price_per_hour: on-demand USD per hour in us-east-1.
    """

    name: str
    gpus: int
    gpu_model: str | None
    gpu_memory_gb: float
    vcpus: int
    memory_gb: float
    price_per_hour: float
    estimated_price: bool = False

    @property
    def is_gpu(self) -> bool:
        """Whether the type has at least one GPU."""
        return self.gpus > 0


@dataclass(frozen=True)
class Catalog:
    """The instance types the planner and job builder know, by name."""

    instances: Mapping[str, InstanceType]
    source: str = ""
    recorded: str = ""

    def get(self, name: str) -> InstanceType:
        """
        Look up an instance type.

        :param name: e.g. ``ml.g5.2xlarge``.
        :raises UnknownInstanceTypeError: naming the type and the known families.
        """
        try:
            return self.instances[name]
        except KeyError:
            families = sorted({n.rsplit(".", 1)[0] for n in self.instances})
            raise UnknownInstanceTypeError(
                f"unknown instance type {name!r}; the catalog knows the families {', '.join(families)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.instances


@functools.lru_cache(maxsize=8)
def _load_catalog(path: Path) -> Catalog:
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("instances"), dict):
        raise CampaignError.single(str(path), "instances", "expected a mapping of instance types")
    instances: dict[str, InstanceType] = {}
    issues: list[ConfigIssue] = []
    for name, spec in data["instances"].items():
        try:
            instances[name] = InstanceType(
                name=name,
                gpus=int(spec["gpus"]),
                gpu_model=spec.get("gpu_model"),
                gpu_memory_gb=float(spec.get("gpu_memory_gb") or 0),
                vcpus=int(spec["vcpus"]),
                memory_gb=float(spec["memory_gb"]),
                price_per_hour=float(spec["price_per_hour"]),
                estimated_price=bool(spec.get("estimated", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            issues.append(ConfigIssue("error", str(path), f"instances.{name}", f"invalid entry: {err}"))
    if issues:
        raise CampaignError(issues)
    return Catalog(instances, str(data.get("source", "")), str(data.get("recorded", "")))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """
    Load the instance catalog (cached per path).

    :param path: a catalog YAML; default ``include/configs/instances.yaml``.
    """
    return _load_catalog(Path(path) if path else configs_dir() / "instances.yaml")


@functools.lru_cache(maxsize=8)
def _load_presets(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if not isinstance(data, dict) or not {"auto", "defaults", "presets"} <= set(data):
        raise CampaignError.single(str(path), "", "expected the keys auto, defaults and presets")
    return data


def load_presets(path: str | Path | None = None) -> dict[str, Any]:
    """
    Load the scaling presets (cached per path).

    :param path: a presets YAML; default ``include/configs/presets.yaml``.
    """
    return _load_presets(Path(path) if path else configs_dir() / "presets.yaml")


def auto_preset(total_designs: int, presets: Mapping[str, Any] | None = None) -> str:
    """
    Pick the preset for a campaign of ``total_designs`` designs (over all specs).

    :param total_designs: designs over all specs.
    :param presets: loaded presets (default: the packaged file).
    """
    rules = (presets or load_presets())["auto"]
    for rule in rules:
        limit = rule.get("max_total_designs")
        if limit is None or total_designs <= limit:
            return str(rule["preset"])
    return str(rules[-1]["preset"])


@dataclass(frozen=True)
class StageResources:
    """
    What one stage's jobs run on.

    :param stage: the stage.
    :param instance_type: the instance type.
    :param max_parallel_jobs: how many jobs of the stage may run at once.
    :param volume_gb: the ML storage volume per job.
    :param max_runtime_seconds: SageMaker's StoppingCondition (at most 777600).
    :param fallbacks: types SageMaker may start a job on, in order, when ``instance_type`` has no
        capacity (``InstancePreferences``).
    :param pool_type: the instance type whose Airflow pool the stage's jobs take (default: its own;
        another when estimating jobs that started on a fallback).
    """

    stage: str
    instance_type: InstanceType
    max_parallel_jobs: int
    volume_gb: int
    max_runtime_seconds: int
    fallbacks: tuple[InstanceType, ...] = ()
    pool_type: str | None = None

    @property
    def pool(self) -> str:
        """The instance type naming the Airflow pool of the stage's jobs."""
        return self.pool_type or self.instance_type.name


def stage_instance(
    catalog: Catalog, stage: str, type_name: str, file: str
) -> tuple[InstanceType | None, ConfigIssue | None]:
    """
    Look up a stage's instance type: unknown types and a CPU type on a GPU stage are issues.

    :param catalog: the instance catalog.
    :param stage: the stage it would run.
    :param type_name: the instance type asked for.
    :param file: the campaign file, for the issue.
    """
    setting = f"scaling.{stage}.instance_type"
    try:
        instance = catalog.get(type_name)
    except UnknownInstanceTypeError as err:
        return None, ConfigIssue("error", file, setting, str(err))
    if stage in GPU_STAGES and not instance.is_gpu:
        return None, ConfigIssue("error", file, setting, f"{type_name} has no GPU; {stage} needs one")
    return instance, None


def stage_fallbacks(
    catalog: Catalog, stage: str, names: Sequence[str], primary: InstanceType, file: str
) -> tuple[tuple[InstanceType, ...], list[ConfigIssue]]:
    """
    Look up a stage's fallback instance types: each must be known, other than the stage's own, and
    on a GPU stage have as many GPUs as it (the plan puts one work item on each GPU).

    :param catalog: the instance catalog.
    :param stage: the stage.
    :param names: ``scaling.<stage>.fallback_instance_types``.
    :param primary: the stage's instance type.
    :param file: the campaign file, for the issues.
    """
    setting = f"scaling.{stage}.fallback_instance_types"
    found: list[InstanceType] = []
    issues: list[ConfigIssue] = []
    for name in names:
        instance, issue = stage_instance(catalog, stage, name, file)
        if instance is None:
            issues.append(ConfigIssue("error", file, setting, issue.message if issue else name))
        elif instance.name == primary.name:
            issues.append(ConfigIssue("error", file, setting, f"{name} is the stage's own instance type"))
        elif stage in GPU_STAGES and instance.gpus != primary.gpus:
            message = (
                f"{name} has {instance.gpus} GPUs, {primary.name} {primary.gpus}; a fallback needs as many"
            )
            issues.append(ConfigIssue("error", file, setting, message))
        else:
            found.append(instance)
    return tuple(found), issues


def resolve_resources(
    campaign: Campaign,
    total_designs: int,
    catalog: Catalog | None = None,
    presets: Mapping[str, Any] | None = None,
) -> dict[str, StageResources]:
    """
    Combine the campaign's preset with its per-stage overrides.

    :param campaign: the campaign.
    :param total_designs: designs over all specs (chooses the ``auto`` preset).
    :param catalog: the instance catalog (default: packaged).
    :param presets: the presets (default: packaged).
    :raises CampaignError: for unknown instance types or a CPU type on a GPU stage, naming the setting.
    """
    catalog = catalog or load_catalog()
    presets = presets or load_presets()
    name: str = campaign.scaling.preset
    if name == "auto":
        name = auto_preset(total_designs, presets)
    preset = presets["presets"][name]
    defaults = presets["defaults"]
    file = str(campaign.source_path or "<campaign>")
    issues: list[ConfigIssue] = []
    result: dict[str, StageResources] = {}
    for stage in STAGES:
        override = campaign.scaling.stage(stage)
        base = preset[stage]
        type_name = override.instance_type or base["instance_type"]
        instance, issue = stage_instance(catalog, stage, type_name, file)
        if instance is None:
            issues.extend([issue] if issue else [])
            continue
        hours = override.max_runtime_hours or float(
            base.get("max_runtime_hours", defaults["max_runtime_hours"][stage])
        )
        fallbacks, bad = stage_fallbacks(catalog, stage, override.fallback_instance_types, instance, file)
        issues.extend(bad)
        result[stage] = StageResources(
            stage=stage,
            instance_type=instance,
            max_parallel_jobs=override.max_parallel_jobs or int(base["max_parallel_jobs"]),
            volume_gb=override.volume_gb or int(base.get("volume_gb", defaults["volume_gb"][stage])),
            max_runtime_seconds=min(MAX_RUNTIME_SECONDS, math.ceil(round(hours * 3600, 3))),
            fallbacks=fallbacks,
        )
    if issues:
        raise CampaignError(issues)
    return result

"""
The campaign model (pydantic): every key of a campaign file, checked where it is declared.

A campaign YAML becomes one DAG (``boltzgen_<name>``); :mod:`boltzgen_airflow.campaign.loading`
reads a file into this model.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from boltzgen_airflow.campaign.schedule import validate_schedule
from boltzgen_airflow.exceptions import CampaignError, ConfigIssue
from boltzgen_airflow.sagemaker.limits import (
    INSTANCE_TYPE_RE,
    MAX_RUNTIME_SECONDS,
    instance_preferences_supported,
)
from boltzgen_airflow.settings import step_scripts_dir
from boltzgen_airflow.stages import FUSABLE_STAGES, STAGES
from boltzgen_airflow.storage.layout import PREFIX_RE, split_s3_uri, validate_bucket_name

# Longest MaxRuntimeInSeconds SageMaker Processing accepts (9 days).
# Airflow maps at most 1024 task instances per mapped task by default; keep a margin.
MAX_SHARDS = 1000
# Rounds of one campaign run when design.until_passing is set and max_rounds is not.
DEFAULT_MAX_ROUNDS = 5
MAX_ROUNDS = 50
# SageMaker's InstancePreferences holds at most five types: the stage's own and four fallbacks.
MAX_FALLBACKS = 4
BOLTZGEN_STEPS = (
    "design",
    "inverse_folding",
    "folding",
    "design_folding",
    "affinity",
    "analysis",
    "filtering",
)
SPOT_REASON = (
    "use_spot is not supported: SageMaker Processing jobs have no managed spot capacity "
    "(only training jobs do); remove the key"
)

_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}\Z")
_SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d:\d{12}:[\w-]{1,256}\Z")
_KMS_RE = re.compile(
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/+=,.@-]+|alias/[\w/+=,.@-]+|"
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|mrk-[0-9a-f]{32})$"
)
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d\Z")
# A container image reference: registry/repository[:tag][@digest]; SageMaker caps it at 255.
_IMAGE_RE = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(:\d+)?(/[a-z0-9._-]+)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)
_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}\Z")
_SG_RE = re.compile(r"^sg-[0-9a-f]{8,17}\Z")

CampaignName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", min_length=1, max_length=64)
]


@functools.cache
def step_contract() -> Any:
    """The step scripts' ``contract`` module (rules shared with the jobs), loaded from their folder."""
    path = step_scripts_dir() / "contract.py"
    spec = importlib.util.spec_from_file_location("boltzgen_step_contract", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the step scripts' contract from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class AwsSettings(_Model):
    """Where and as whom the campaign runs on AWS."""

    conn_id: str = Field("aws_default", min_length=1, max_length=250)
    region: str = "us-east-1"
    bucket: str
    prefix: str = "boltzgen"
    role_arn: str
    image_uri: str = Field(min_length=1, max_length=255)
    subnets: list[str] = Field(default_factory=list, max_length=16)
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    kms_key_id: str | None = None
    network_isolation: bool = True
    tags: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION_RE.match(value):
            raise ValueError(f"invalid AWS region {value!r} (expected e.g. us-east-1)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return validate_bucket_name(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if not value or len(value) > 200 or not PREFIX_RE.match(value) or ".." in value.split("/"):
            raise ValueError(
                f"invalid S3 prefix {value!r}: 1-200 characters of letters, digits and !_.*'()- "
                "separated by '/'"
            )
        return value

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not _ROLE_ARN_RE.match(value):
            raise ValueError(
                f"invalid IAM role ARN {value!r} (expected arn:aws:iam::<12-digit account>:role/<name>)"
            )
        return value

    @field_validator("image_uri")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE_RE.match(value):
            raise ValueError(
                f"invalid container image {value!r} (expected <registry>/<repository>[:tag][@sha256:...])"
            )
        return value

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not _SUBNET_RE.match(s)]
        if bad:
            raise ValueError(f"invalid subnet id(s) {bad} (expected subnet-<hex>)")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not _SG_RE.match(s)]
        if bad:
            raise ValueError(f"invalid security group id(s) {bad} (expected sg-<hex>)")
        return value

    @field_validator("kms_key_id")
    @classmethod
    def _kms(cls, value: str | None) -> str | None:
        if value is not None and not _KMS_RE.match(value):
            raise ValueError(f"invalid KMS key {value!r} (expected a key id, alias/<name> or a key ARN)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag in value.items():
            if not 1 <= len(key) <= 128 or len(tag) > 256:
                raise ValueError(f"tag {key!r}: keys are 1-128 characters, values at most 256")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag {key!r}: the aws: prefix is reserved")
        return value

    @model_validator(mode="after")
    def _vpc(self) -> AwsSettings:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("subnets and security_group_ids go together: give both or neither")
        return self


class DesignSettings(_Model):
    """What to design and the BoltzGen options of every stage."""

    specs: str = Field(min_length=1)
    include: str = Field("**/*.yaml", min_length=1)
    protocol: Literal[
        "protein-anything",
        "peptide-anything",
        "protein-small_molecule",
        "nanobody-anything",
        "antibody-anything",
        "protein-redesign",
    ] = "protein-anything"
    num_designs: int = Field(100, ge=1, le=10_000_000)
    budget: int = Field(10, ge=1)
    diffusion_batch_size: int | None = Field(None, ge=1, le=1000)
    inverse_fold_num_sequences: int = Field(1, ge=1, le=100)
    skip_inverse_folding: bool = False
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    filter_biased: bool | None = None
    metrics_override: dict[str, float] = Field(default_factory=dict)
    additional_filters: list[str] = Field(default_factory=list)
    size_buckets: list[str] = Field(default_factory=list)
    refolding_rmsd_threshold: float | None = Field(None, gt=0.0)
    step_config: dict[str, dict[str, Any]] = Field(default_factory=dict)
    min_design_fraction: float = Field(0.9, gt=0.0, le=1.0)
    until_passing: int | None = Field(None, ge=1, le=10_000_000)
    max_rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS)
    max_cost_usd: float | None = Field(None, gt=0.0)

    @field_validator("specs")
    @classmethod
    def _specs(cls, value: str) -> str:
        if value.startswith("s3://"):
            split_s3_uri(value)
        elif "://" in value:
            raise ValueError(
                f"specs {value!r}: use a folder relative to the campaign file or an s3:// prefix"
            )
        return value

    @field_validator("include")
    @classmethod
    def _include(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"include {value!r} must be a relative glob inside the specs folder")
        return value

    @field_validator("additional_filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        # The filtering job's own parser: what passes here is what BoltzGen filtering accepts.
        step_contract().parse_additional_filters(value)
        return value

    @field_validator("size_buckets")
    @classmethod
    def _buckets(cls, value: list[str]) -> list[str]:
        for bucket in step_contract().parse_size_buckets(value):
            if bucket["min"] > bucket["max"]:
                raise ValueError(f"invalid size bucket {bucket}: min is above max")
        return value

    @field_validator("metrics_override")
    @classmethod
    def _metrics(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [m for m in value if not re.match(r"^[A-Za-z_][\w-]*\Z", m)]
        if bad:
            raise ValueError(f"invalid metric name(s) {bad}")
        return value

    @field_validator("step_config")
    @classmethod
    def _steps(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        bad = sorted(set(value) - set(BOLTZGEN_STEPS))
        if bad:
            raise ValueError(f"unknown BoltzGen step(s) {bad}; steps are {list(BOLTZGEN_STEPS)}")
        for step, options in value.items():
            for key in options:
                if not re.match(r"^[A-Za-z_][\w.]*\Z", str(key)):
                    raise ValueError(f"step_config.{step}: invalid option name {key!r}")
        return value

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: int, info: ValidationInfo) -> int:
        num_designs = info.data.get("num_designs")
        if isinstance(num_designs, int) and value > num_designs:
            raise ValueError(f"budget ({value}) cannot exceed num_designs ({num_designs})")
        return value

    @field_validator("max_rounds")
    @classmethod
    def _max_rounds(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > 1 and info.data.get("until_passing") is None:
            raise ValueError(
                f"max_rounds ({value}) needs until_passing: a next round starts only for the specs "
                "with fewer passing designs than until_passing"
            )
        return value

    @property
    def rounds(self) -> int:
        """Rounds a campaign run may take: ``max_rounds``, or its default when ``until_passing`` is set."""
        if self.max_rounds is not None:
            return self.max_rounds
        return DEFAULT_MAX_ROUNDS if self.until_passing is not None else 1

    @property
    def batch_size(self) -> int:
        """The diffusion batch size passed to BoltzGen (its own default when not set)."""
        if self.diffusion_batch_size is not None:
            return self.diffusion_batch_size
        return 1 if self.num_designs < 100 else 10


class StageScaling(_Model):
    """Per-stage overrides of the preset."""

    instance_type: str | None = None
    max_parallel_jobs: int | None = Field(None, ge=1, le=1000)
    volume_gb: int | None = Field(None, ge=1, le=16384)
    max_runtime_hours: float | None = Field(None, gt=0.0, le=MAX_RUNTIME_SECONDS / 3600)
    fallback_instance_types: list[str] = Field(default_factory=list, max_length=MAX_FALLBACKS)

    @field_validator("instance_type")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is not None and not INSTANCE_TYPE_RE.fullmatch(value):
            raise ValueError(f"invalid instance type {value!r} (expected e.g. ml.g5.2xlarge)")
        return value

    @field_validator("fallback_instance_types")
    @classmethod
    def _fallbacks(cls, value: list[str]) -> list[str]:
        for name in value:
            if not INSTANCE_TYPE_RE.fullmatch(name):
                raise ValueError(f"invalid instance type {name!r} (expected e.g. ml.g5.2xlarge)")
        if len(set(value)) != len(value):
            raise ValueError(f"an instance type is listed twice in {value}")
        if value and not instance_preferences_supported():
            import botocore

            raise ValueError(
                f"fallback instance types need SageMaker's InstancePreferences, which botocore "
                f"{botocore.__version__} installed here does not know; upgrade botocore or remove them"
            )
        return value


class ScalingSettings(_Model):
    """How many of which instances each stage uses."""

    preset: Literal["auto", "small", "medium", "large", "xlarge"] = "auto"
    design: StageScaling = Field(default_factory=StageScaling)
    inverse_folding: StageScaling = Field(default_factory=StageScaling)
    folding: StageScaling = Field(default_factory=StageScaling)
    analysis: StageScaling = Field(default_factory=StageScaling)
    filtering: StageScaling = Field(default_factory=StageScaling)

    def stage(self, stage: str) -> StageScaling:
        """
        Return the overrides of one stage.

        :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
        """
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}")
        result: StageScaling = getattr(self, stage)
        return result


class ShardingSettings(_Model):
    """How the planner cuts the work into SageMaker jobs."""

    target_hours: float | Literal["auto"] = "auto"
    max_shards: int = Field(MAX_SHARDS, ge=1, le=MAX_SHARDS)
    max_job_usd: float = Field(250.0, gt=0.0)
    time_model: str | None = None
    # ``auto``: filter several specs in one job where the estimate says it pays; ``true``: always
    # pack (the best size of planning.plan.FILTER_PACK_HOURS); ``false``: one job per spec.
    pack_filtering: bool | Literal["auto"] = "auto"

    @field_validator("time_model")
    @classmethod
    def _time_model(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith((".yaml", ".yml")):
            raise ValueError(f"expected a YAML file (.yaml or .yml), got {value!r}")
        return value

    @field_validator("target_hours", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected hours (a number) or 'auto', got {value!r}")
        if not 0 < value <= MAX_RUNTIME_SECONDS / 3600:
            raise ValueError(f"must be greater than 0 and at most {MAX_RUNTIME_SECONDS // 3600} hours")
        return float(value)


class StagesSettings(_Model):
    """How the shard stages map onto SageMaker jobs."""

    # ``auto``: the planner picks the fusing its estimate finds fastest, then cheapest
    # (planning.plan.AUTO_FUSE); ``none`` or a list: exactly those stages.
    fuse: list[Literal["inverse_folding", "folding", "analysis"]] | Literal["auto"] = "auto"

    @field_validator("fuse", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return [] if value == "none" or value is None else value

    @field_validator("fuse")
    @classmethod
    def _fuse(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        if len(set(value)) != len(value):
            raise ValueError(f"a stage is listed twice in {value}")
        return [s for s in FUSABLE_STAGES if s in value]


class NotificationSettings(_Model):
    """Where campaign events go."""

    sns_topic_arn: str | None = None
    on_failure: bool = True
    on_success: bool = False

    @field_validator("sns_topic_arn")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not _SNS_ARN_RE.match(value):
            raise ValueError(f"invalid SNS topic ARN {value!r}")
        return value


class Campaign(_Model):
    """One campaign file: it becomes the DAG ``boltzgen_<name>``."""

    name: CampaignName
    description: str = ""
    owner: str = Field("boltzgen", min_length=1, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=20)
    schedule: str | None = None
    start_date: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    catchup: bool = False
    max_active_runs: int = Field(1, ge=1, le=100)
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: int = Field(60, ge=1, le=3600)
    aws: AwsSettings
    design: DesignSettings
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    sharding: ShardingSettings = Field(default_factory=ShardingSettings)
    stages: StagesSettings = Field(default_factory=StagesSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    _source_path: Path | None = PrivateAttr(default=None)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return validate_schedule(value)

    @field_validator("start_date")
    @classmethod
    def _start(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("tags")
    @classmethod
    def _dag_tags(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not t or len(t) > 100]
        if bad:
            raise ValueError(f"tags must be 1-100 characters: {bad}")
        return value

    @property
    def source_path(self) -> Path | None:
        """The file the campaign was loaded from (None when built in code)."""
        return self._source_path

    @property
    def dag_id(self) -> str:
        """The id of the campaign's DAG."""
        return f"boltzgen_{self.name}"

    def specs_root(self) -> Path | str:
        """Return the specs folder: a resolved local Path, or the ``s3://`` prefix as given."""
        if self.design.specs.startswith("s3://"):
            return self.design.specs
        base = self._source_path.parent if self._source_path else Path.cwd()
        return (base / self.design.specs).resolve()

    def with_source(self, path: Path | None) -> Campaign:
        """
        Return this campaign remembering the file it came from.

        :param path: the campaign file.
        """
        self._source_path = path
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Campaign:
        """
        Return a re-validated copy with dotted keys replaced, e.g. ``{"design.num_designs": 20}``.

        :param overrides: dotted key -> value; strings are converted like YAML scalars by pydantic.
        :raises CampaignError: naming each key that is unknown or whose value is invalid.
        """
        file = str(self._source_path) if self._source_path else "<overrides>"
        data = self.model_dump(mode="python")
        issues: list[ConfigIssue] = []
        for key, value in overrides.items():
            parts = key.split(".")
            node: Any = data
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or parts[-1] not in node or not all(parts):
                issues.append(ConfigIssue("error", file, key, f"unknown setting {key!r}"))
                continue
            if parts[-1] == "use_spot":
                issues.append(ConfigIssue("error", file, key, SPOT_REASON))
                continue
            node[parts[-1]] = value
        if issues:
            raise CampaignError(issues)
        try:
            campaign = Campaign.model_validate(data)
        except ValidationError as err:
            raise CampaignError(issues_from_validation(err, file)) from None
        return campaign.with_source(self._source_path)


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def issues_from_validation(err: ValidationError, file: str) -> list[ConfigIssue]:
    issues = []
    for error in err.errors(include_url=False):
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see docs for the campaign keys)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        issues.append(ConfigIssue("error", file, _dotted(error["loc"]), message))
    return issues

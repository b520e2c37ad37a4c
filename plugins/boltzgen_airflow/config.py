"""
Campaign files: the pydantic model, ``${VAR}`` substitution, ``.env`` files and loading.

A campaign YAML becomes one DAG (``boltzgen_<name>``). Loading never touches the network and is
cheap, because the DAG processor calls it on every parse.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
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

from boltzgen_airflow.errors import CampaignError, ConfigIssue
from boltzgen_airflow.stages import STAGES

# Longest MaxRuntimeInSeconds SageMaker Processing accepts (9 days).
MAX_RUNTIME_SECONDS = 777_600
# Airflow maps at most 1024 task instances per mapped task by default; keep a margin.
MAX_SHARDS = 1000
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

_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}\Z")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*\Z")
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
_INSTANCE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+\Z")
_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_CRON_PRESETS = frozenset(
    {"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
)
# (low, high) of the five cron fields: minute, hour, day of month, month, day of week.
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_CRON_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {m: i + 1 for i, m in enumerate(_MONTHS)},
    {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
)

CampaignName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", min_length=1, max_length=64)
]


def validate_bucket_name(name: str) -> str:
    """
    Check an S3 bucket name against the general-purpose bucket naming rules.

    :param name: the bucket name.
    :return: the name unchanged.
    :raises ValueError: naming the rule that fails.
    """
    if not _S3_BUCKET_RE.match(name):
        raise ValueError(
            f"invalid S3 bucket name {name!r}: 3-63 characters of lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in name or _IPV4_RE.match(name):
        raise ValueError(f"invalid S3 bucket name {name!r}: no '..' and not an IP address")
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3", "--x-s3")):
        raise ValueError(f"invalid S3 bucket name {name!r}: reserved prefix or suffix")
    return name


def split_s3_uri(uri: str) -> tuple[str, str]:
    """
    Split ``s3://bucket/key`` into bucket and key, validating the bucket.

    :param uri: an ``s3://`` URI.
    :raises ValueError: when the URI is not an S3 URI or the bucket name is invalid.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    validate_bucket_name(bucket)
    if key and not _PREFIX_RE.match(key.rstrip("/")):
        raise ValueError(f"invalid S3 key prefix {key!r} in {uri!r}")
    return bucket, key


def _check_cron_field(field: str, index: int) -> None:
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES[index]
    for part in field.split(","):
        body, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"bad step {step!r}")
        if body in ("*", "?"):
            continue
        for bound in body.split("-", 1):
            value = names.get(bound.lower(), bound)
            if isinstance(value, str) and not value.isdigit():
                raise ValueError(f"bad value {bound!r}")
            if not low <= int(value) <= high:
                raise ValueError(f"{bound} is outside {low}-{high}")


def validate_schedule(value: str | None) -> str | None:
    """
    Accept None, an Airflow preset (``@daily``...) or a five-field cron expression.

    :param value: the schedule string.
    :raises ValueError: naming the offending cron field.
    """
    if value is None:
        return None
    text = value.strip()
    if text.startswith("@"):
        if text not in _CRON_PRESETS:
            raise ValueError(f"unknown schedule preset {text!r}; use one of {sorted(_CRON_PRESETS)}")
        return text
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {text!r} must have 5 fields (minute hour day month weekday)")
    labels = ("minute", "hour", "day of month", "month", "day of week")
    for index, field in enumerate(fields):
        try:
            _check_cron_field(field, index)
        except ValueError as err:
            raise ValueError(f"cron expression {text!r}: {labels[index]} field {field!r}: {err}") from None
    return text


@functools.cache
def step_contract() -> Any:
    """The step scripts' ``contract`` module (rules shared with the jobs), loaded from their folder."""
    from boltzgen_airflow.runtime import step_scripts_dir

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
        if not value or len(value) > 200 or not _PREFIX_RE.match(value) or ".." in value.split("/"):
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
        if value is not None and not _INSTANCE_RE.match(value):
            raise ValueError(f"invalid instance type {value!r} (expected e.g. ml.g5.2xlarge)")
        return value

    @field_validator("fallback_instance_types")
    @classmethod
    def _fallbacks(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _INSTANCE_RE.match(name):
                raise ValueError(f"invalid instance type {name!r} (expected e.g. ml.g5.2xlarge)")
        if len(set(value)) != len(value):
            raise ValueError(f"an instance type is listed twice in {value}")
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
            raise CampaignError(_issues_from_validation(err, file)) from None
        return campaign.with_source(self._source_path)


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _issues_from_validation(err: ValidationError, file: str) -> list[ConfigIssue]:
    issues = []
    for error in err.errors(include_url=False):
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see docs for the campaign keys)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        issues.append(ConfigIssue("error", file, _dotted(error["loc"]), message))
    return issues


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Yield (path, container, key) for every mapping key and list entry below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), node, key
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, str(index)), node, index
            yield from _walk(value, (*path, str(index)))


def read_dotenv(path: Path) -> dict[str, str]:
    """
    Read ``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments) from a .env file.

    :param path: the file; a missing file gives an empty mapping.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key] = value
    return values


def project_root(start: Path) -> Path | None:
    """
    Return the nearest folder at or above ``start`` holding pyproject.toml or .git.

    :param start: where to begin looking.
    """
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def campaign_environment(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    Build the variables a campaign file sees: the project's .env, then the one beside the file, then
    the real environment (which always wins).

    :param path: the campaign file.
    :param environ: the environment (default ``os.environ``).
    """
    env: dict[str, str] = {}
    folder = path.resolve().parent
    root = project_root(folder)
    if root is not None and root != folder:
        env.update(read_dotenv(root / ".env"))
    env.update(read_dotenv(folder / ".env"))
    env.update(os.environ if environ is None else environ)
    return env


def substitute(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """
    Replace ``${VAR}`` and ``${VAR:default}`` in ``text``; ``$$`` stands for a literal ``$``.

    :param text: the string.
    :param env: variables.
    :return: the new string and the names of variables that were missing without a default.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    return _VAR_RE.sub(replace, text), missing


def _substitute_tree(
    data: Any, env: Mapping[str, str], file: str, issues: list[ConfigIssue], path: tuple[str, ...] = ()
) -> Any:
    if isinstance(data, dict):
        return {
            key: _substitute_tree(value, env, file, issues, (*path, str(key))) for key, value in data.items()
        }
    if isinstance(data, list):
        return [_substitute_tree(value, env, file, issues, (*path, str(i))) for i, value in enumerate(data)]
    if isinstance(data, str) and "$" in data:
        new, missing = substitute(data, env)
        for name in missing:
            issues.append(
                ConfigIssue(
                    "error",
                    file,
                    ".".join(path),
                    f"environment variable {name} is not set and has no default",
                )
            )
        # A whole-value substitution yields a YAML scalar so ${N:10} can fill an integer field.
        if new != data and _VAR_RE.fullmatch(data.strip()):
            try:
                scalar = yaml.load(new, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
            except yaml.YAMLError:
                return new
            return scalar if isinstance(scalar, (int, float, bool)) or scalar is None else new
        return new
    return data


def _instance_issues(campaign: Campaign, file: str) -> list[ConfigIssue]:
    """Check per-stage instance type overrides against the packaged catalog."""
    from boltzgen_airflow.catalog import load_catalog, stage_instance

    catalog = load_catalog()
    issues = []
    for stage in STAGES:
        name = campaign.scaling.stage(stage).instance_type
        if name is not None:
            _, issue = stage_instance(catalog, stage, name, file)
            issues.extend([issue] if issue else [])
    return issues


def parse_campaign(
    data: Any, file: str, environ: Mapping[str, str] | None = None, *, source: Path | None = None
) -> Campaign:
    """
    Validate an already-parsed campaign document.

    :param data: the YAML document.
    :param file: name used in error messages.
    :param environ: variables for ``${VAR}`` substitution (default: none beyond ``os.environ``).
    :param source: the file the document came from (sets ``source_path``).
    :raises CampaignError: listing every issue.
    """
    issues: list[ConfigIssue] = []
    if not isinstance(data, dict):
        raise CampaignError.single(file, "", "a campaign file must be a YAML mapping of settings")
    env = dict(os.environ if environ is None else environ)
    data = _substitute_tree(data, env, file, issues)
    for path, container, key in list(_walk(data)):
        if isinstance(container, dict) and key == "use_spot":
            issues.append(ConfigIssue("error", file, ".".join(path), SPOT_REASON))
            del container[key]
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as err:
        # A field whose variable is missing already has its issue; its placeholder is noise.
        reported = {issue.path for issue in issues}
        issues.extend(i for i in _issues_from_validation(err, file) if i.path not in reported)
        raise CampaignError(issues) from None
    campaign.with_source(source)
    issues.extend(_instance_issues(campaign, file))
    root = campaign.specs_root()
    if isinstance(root, Path) and not root.is_dir():
        issues.append(ConfigIssue("error", file, "design.specs", f"specs folder {root} does not exist"))
    if issues:
        raise CampaignError(issues)
    return campaign


def load_campaign(path: str | Path, environ: Mapping[str, str] | None = None) -> Campaign:
    """
    Load and validate a campaign file.

    :param path: the campaign YAML.
    :param environ: the environment for ``${VAR}`` (default ``os.environ``); .env files beside the
        file and at the project root fill in what it lacks.
    :raises CampaignError: listing every issue of the file.
    """
    file_path = Path(path)
    file = str(file_path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CampaignError.single(file, "", f"cannot read campaign file: {err}") from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CampaignError.single(file, "", f"invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, RecursionError, OverflowError) as err:
        raise CampaignError.single(file, "", f"invalid YAML: {err}") from None
    env = campaign_environment(file_path, environ)
    return parse_campaign(data, file, env, source=file_path.resolve())


def campaign_files(folder: str | Path) -> list[Path]:
    """
    List the campaign files of a folder (``*.yaml`` and ``*.yml``, not hidden), sorted.

    :param folder: the campaigns folder; a missing folder gives an empty list.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")]
    return sorted(p for p in files if p.is_file())

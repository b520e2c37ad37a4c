"""Validation of CreateProcessingJob requests, with the limits and messages SageMaker applies."""

from __future__ import annotations

import re
from typing import Any

from sagemaker_emulator.errors import ApiError, validation_error
from sagemaker_emulator.instance_types import valid_instance_types

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
S3_URI_RE = re.compile(r"^(https|s3)://([^/]+)/?(.*)$")
MAX_INPUTS = 10
MAX_OUTPUTS = 10
MAX_RUNTIME_SECONDS = 777600
MAX_ENV_ENTRIES = 100
MAX_ENV_LENGTH = 256
MAX_TAGS = 50


def validate_job_name(name: Any, field: str = "processingJobName") -> str:
    """
    Return the job name when SageMaker would accept it.

    :param name: the requested name.
    :param field: the field named in the error message.
    """
    if not isinstance(name, str) or not JOB_NAME_RE.fullmatch(name):
        raise validation_error(
            f"1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {JOB_NAME_RE.pattern[1:-1]}"
        )
    return name


def _constraint(value: Any, field: str, constraint: str) -> ApiError:
    return validation_error(
        f"1 validation error detected: Value '{value}' at '{field}' "
        f"failed to satisfy constraint: {constraint}"
    )


def _null(field: str) -> ApiError:
    return validation_error(
        f"1 validation error detected: Value null at '{field}' failed to satisfy constraint: "
        "Member must not be null"
    )


def requested_instance_types(cluster: dict[str, Any]) -> list[Any]:
    """
    The instance types a ClusterConfig asks for, in order: its ``InstancePreferences`` (1-5 distinct
    types, instead of ``InstanceType``; one ``InstanceCount`` for the job) or its ``InstanceType``.

    :param cluster: the request's ``ProcessingResources.ClusterConfig``.
    :raises ApiError: ValidationException for a malformed list.
    """
    preferences = cluster.get("InstancePreferences")
    if preferences is None:
        return [cluster.get("InstanceType")]
    if "InstanceType" in cluster:
        raise validation_error("InstancePreferences is mutually exclusive with InstanceType.")
    if not isinstance(preferences, list) or not 1 <= len(preferences) <= 5:
        raise _constraint(
            preferences,
            "processingResources.clusterConfig.instancePreferences",
            "Member must have length 1-5",
        )
    if any(not isinstance(p, dict) or "InstanceCount" in p for p in preferences):
        raise validation_error(
            "InstancePreferences: each entry is {InstanceType}; the emulator takes one count."
        )
    types = [p.get("InstanceType") for p in preferences]
    if len(set(map(str, types))) != len(types):
        raise validation_error("An instance type can appear only once in an InstancePreferences list.")
    return types


def _validate_s3_uri(uri: Any, field: str) -> None:
    if not isinstance(uri, str) or not S3_URI_RE.fullmatch(uri) or len(uri) > 1024:
        raise _constraint(
            uri, field, "Member must satisfy regular expression pattern: (https|s3)://([^/]+)/?(.*)"
        )


def _validate_inputs(inputs: Any) -> None:
    if not isinstance(inputs, list):
        raise validation_error("ProcessingInputs must be a list.")
    if len(inputs) > MAX_INPUTS:
        raise _constraint(
            f"[{len(inputs)} inputs]",
            "processingInputs",
            f"Member must have length less than or equal to {MAX_INPUTS}",
        )
    names: set[str] = set()
    for i, item in enumerate(inputs, start=1):
        name = item.get("InputName") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise validation_error(f"ProcessingInputs[{i}] is missing InputName.")
        if name in names:
            raise validation_error(f"ProcessingInputs contains duplicate InputName '{name}'.")
        names.add(name)
        s3 = item.get("S3Input")
        if not isinstance(s3, dict):
            raise validation_error(
                f"Input '{name}': only S3Input is supported here; DatasetDefinition inputs are not emulated."
            )
        _validate_s3_uri(s3.get("S3Uri"), f"processingInputs.{i}.member.s3Input.s3Uri")
        if s3.get("S3DataType") not in ("S3Prefix", "ManifestFile"):
            raise _constraint(
                s3.get("S3DataType"),
                f"processingInputs.{i}.member.s3Input.s3DataType",
                "Member must satisfy enum value set: [ManifestFile, S3Prefix]",
            )
        if s3.get("S3InputMode", "File") != "File":
            raise validation_error(
                f"Input '{name}': S3InputMode {s3.get('S3InputMode')} is not supported here."
            )
        local = s3.get("LocalPath")
        if not isinstance(local, str) or not local.startswith("/"):
            raise validation_error(f"Input '{name}': LocalPath must be an absolute path, got {local!r}.")
        if s3.get("S3CompressionType", "None") != "None":
            raise validation_error(f"Input '{name}': S3CompressionType Gzip is only valid with Pipe mode.")


def _validate_outputs(config: Any) -> None:
    if config is None:
        return
    outputs = config.get("Outputs") if isinstance(config, dict) else None
    if not isinstance(outputs, list):
        raise validation_error("ProcessingOutputConfig.Outputs must be a list.")
    if len(outputs) > MAX_OUTPUTS:
        raise _constraint(
            f"[{len(outputs)} outputs]",
            "processingOutputConfig.outputs",
            f"Member must have length less than or equal to {MAX_OUTPUTS}",
        )
    names: set[str] = set()
    for i, item in enumerate(outputs, start=1):
        name = item.get("OutputName") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise validation_error(f"ProcessingOutputConfig.Outputs[{i}] is missing OutputName.")
        if name in names:
            raise validation_error(f"ProcessingOutputConfig contains duplicate OutputName '{name}'.")
        names.add(name)
        s3 = item.get("S3Output")
        if not isinstance(s3, dict):
            raise validation_error(f"Output '{name}': only S3Output is supported here.")
        _validate_s3_uri(s3.get("S3Uri"), f"processingOutputConfig.outputs.{i}.member.s3Output.s3Uri")
        if s3.get("S3UploadMode") not in ("EndOfJob", "Continuous"):
            raise _constraint(
                s3.get("S3UploadMode"),
                f"processingOutputConfig.outputs.{i}.member.s3Output.s3UploadMode",
                "Member must satisfy enum value set: [Continuous, EndOfJob]",
            )
        local = s3.get("LocalPath")
        if not isinstance(local, str) or not local.startswith("/"):
            raise validation_error(f"Output '{name}': LocalPath must be an absolute path, got {local!r}.")


def _validate_environment(env: Any) -> None:
    if env is None:
        return
    if not isinstance(env, dict):
        raise validation_error("Environment must be a map of strings.")
    if len(env) > MAX_ENV_ENTRIES:
        raise _constraint(
            f"[{len(env)} entries]",
            "environment",
            f"Member must have length less than or equal to {MAX_ENV_ENTRIES}",
        )
    for key, value in env.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_ENV_LENGTH:
            raise _constraint(
                key,
                "environment",
                f"Map keys must satisfy constraint: [Member must have length <= {MAX_ENV_LENGTH}]",
            )
        if not isinstance(value, str) or len(value) > MAX_ENV_LENGTH:
            raise _constraint(
                f"{key}=<{len(value) if isinstance(value, str) else type(value).__name__}>",
                "environment",
                f"Map value must satisfy constraint: [Member must have length <= {MAX_ENV_LENGTH}]",
            )


def validate_create_request(req: dict[str, Any]) -> None:
    """
    Raise the ``ValidationException`` SageMaker answers for an invalid CreateProcessingJob request.

    :param req: the request body.
    """
    validate_job_name(req.get("ProcessingJobName"))
    role = req.get("RoleArn")
    if not role:
        raise _null("roleArn")
    if not isinstance(role, str) or not ROLE_ARN_RE.fullmatch(role):
        raise _constraint(
            role, "roleArn", f"Member must satisfy regular expression pattern: {ROLE_ARN_RE.pattern[1:-1]}"
        )
    app = req.get("AppSpecification")
    if not isinstance(app, dict) or not app.get("ImageUri"):
        raise _null("appSpecification.imageUri")
    for key in ("ContainerEntrypoint", "ContainerArguments"):
        value = app.get(key)
        if value is not None and (
            not isinstance(value, list)
            or not 1 <= len(value) <= 100
            or not all(isinstance(v, str) for v in value)
        ):
            raise validation_error(f"AppSpecification.{key} must be a list of 1 to 100 strings.")
    resources = req.get("ProcessingResources")
    cluster = resources.get("ClusterConfig") if isinstance(resources, dict) else None
    if not isinstance(cluster, dict):
        raise _null("processingResources.clusterConfig")
    for instance_type in requested_instance_types(cluster):
        if instance_type not in valid_instance_types():
            raise _constraint(
                instance_type,
                "processingResources.clusterConfig.instanceType",
                "Member must satisfy enum value set: [ml.t3.medium, ml.m5.xlarge, ml.g5.12xlarge, ...]",
            )
    count = cluster.get("InstanceCount")
    if not isinstance(count, int) or not 1 <= count <= 100:
        raise _constraint(
            count,
            "processingResources.clusterConfig.instanceCount",
            "Member must have value between 1 and 100",
        )
    volume = cluster.get("VolumeSizeInGB")
    if not isinstance(volume, int) or not 1 <= volume <= 16384:
        raise _constraint(
            volume,
            "processingResources.clusterConfig.volumeSizeInGB",
            "Member must have value between 1 and 16384",
        )
    stopping = req.get("StoppingCondition")
    if stopping is not None:
        runtime = stopping.get("MaxRuntimeInSeconds") if isinstance(stopping, dict) else None
        if (
            not isinstance(runtime, int)
            or isinstance(runtime, bool)
            or not 1 <= runtime <= MAX_RUNTIME_SECONDS
        ):
            raise _constraint(
                runtime,
                "stoppingCondition.maxRuntimeInSeconds",
                f"Member must have value less than or equal to {MAX_RUNTIME_SECONDS} "
                "and greater than or equal to 1",
            )
    _validate_inputs(req.get("ProcessingInputs", []))
    _validate_outputs(req.get("ProcessingOutputConfig"))
    _validate_environment(req.get("Environment"))
    validate_tags(req.get("Tags", []))


def validate_tags(tags: Any) -> list[dict[str, str]]:
    """
    Return the tags when they are a valid SageMaker tag list.

    :param tags: a list of ``{"Key": ..., "Value": ...}``.
    """
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise validation_error(f"Tags must be a list of at most {MAX_TAGS} tags.")
    for tag in tags:
        if (
            not isinstance(tag, dict)
            or not isinstance(tag.get("Key"), str)
            or not 1 <= len(tag["Key"]) <= 128
        ):
            raise validation_error(f"Invalid tag {tag!r}: Key must be 1 to 128 characters.")
        if not isinstance(tag.get("Value", ""), str) or len(tag.get("Value", "")) > 256:
            raise validation_error(f"Invalid tag {tag!r}: Value must be at most 256 characters.")
    return tags

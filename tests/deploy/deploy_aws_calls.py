"""
Which AWS API actions the project's Airflow code needs, and whether an IAM policy allows them.

The scan reads the Python sources with ``ast`` (nothing is imported or run) and finds:

- boto3 / aiobotocore client method calls (``conn.create_processing_job(...)``,
  ``await client.get_object(...)``): a method name is an AWS call when botocore's service model of
  one of :data:`SERVICES` has an operation with that snake_case name;
- ``get_paginator("list_objects_v2")`` and ``get_waiter("processing_job_completed_or_stopped")``:
  the operation the paginator or the waiter calls;
- boto3's S3 transfer methods and the amazon provider's hook methods that wrap AWS calls
  (:data:`HOOK_METHODS`), which have no operation of their own name.

Operation names become IAM actions through :data:`IAM_ACTION_OVERRIDES` where IAM names them
differently (S3 above all); otherwise the action is ``<service prefix>:<OperationName>``.
"""

from __future__ import annotations

import ast
import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name

# Services whose clients the Airflow side of the project may create.
SERVICES = ("sagemaker", "s3", "logs", "sns", "sts")

# Operations that need no IAM permission at all.
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity"})

# Operation -> the IAM actions that authorise it, where IAM does not use the operation's name.
IAM_ACTION_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:CopyObject": ("s3:GetObject", "s3:PutObject"),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:AbortMultipartUpload": ("s3:AbortMultipartUpload",),
    "s3:GetObjectAttributes": ("s3:GetObject", "s3:GetObjectAttributes"),
}

# Methods that are not operations of a service model but call AWS: boto3's S3 transfer manager and
# the amazon provider's hooks (apache-airflow-providers-amazon 9.34-9.39).
HOOK_METHODS: Mapping[str, tuple[str, ...]] = {
    # boto3 S3 transfer (client, bucket and object resources)
    "upload_file": ("s3:PutObject",),
    "upload_fileobj": ("s3:PutObject",),
    "download_file": ("s3:GetObject",),
    "download_fileobj": ("s3:GetObject",),
    # S3Hook
    "load_string": ("s3:PutObject",),
    "load_bytes": ("s3:PutObject",),
    "load_file": ("s3:PutObject",),
    "load_file_obj": ("s3:PutObject",),
    "read_key": ("s3:GetObject",),
    "get_key": ("s3:GetObject",),
    "check_for_key": ("s3:GetObject",),
    "check_for_prefix": ("s3:ListBucket",),
    "check_for_bucket": ("s3:ListBucket",),
    "list_keys": ("s3:ListBucket",),
    "list_prefixes": ("s3:ListBucket",),
    "get_file_metadata": ("s3:ListBucket",),
    # SageMakerHook
    "count_processing_jobs_by_name": ("sagemaker:ListProcessingJobs",),
    "find_processing_job_by_name": ("sagemaker:DescribeProcessingJob",),
    "describe_processing_job_with_log": (
        "sagemaker:DescribeProcessingJob",
        "logs:DescribeLogStreams",
        "logs:GetLogEvents",
    ),
    # AwsLogsHook
    "get_log_events_async": ("logs:GetLogEvents",),
    # SnsHook
    "publish_to_target": ("sns:Publish",),
}

# Method names that exist in a service model but are, in this code base, plain Python on other
# objects. Each entry says why; keep this list short.
NOT_AWS_CALLS: Mapping[str, str] = {
    "search": "re.search / Pattern.search; SageMaker Search is not used by the DAGs",
}


@dataclass(frozen=True)
class AwsCall:
    """
    One place in the sources that calls AWS.

    :param path: the file.
    :param line: the line.
    :param method: the method called.
    :param actions: the IAM actions it needs (any one of them for ambiguous names).
    :param ambiguous: the name exists in several services, so one of ``actions`` suffices.
    """

    path: Path
    line: int
    method: str
    actions: tuple[str, ...]
    ambiguous: bool = False


@cache
def _session() -> botocore.session.Session:
    return botocore.session.get_session()


@cache
def operations_by_method() -> dict[str, tuple[tuple[str, str], ...]]:
    """Map snake_case client methods to ``(service prefix, OperationName)`` for every scanned service."""
    table: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        model = _session().get_service_model(service)
        prefix = model.signing_name or service
        for operation in model.operation_names:
            table.setdefault(xform_name(operation), []).append((prefix, operation))
    return {name: tuple(ops) for name, ops in table.items()}


@cache
def _paginators() -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for service in SERVICES:
        prefix = _session().get_service_model(service).signing_name or service
        try:
            model = _session().get_paginator_model(service)
        except Exception:  # a service without paginators
            continue
        for operation in model._paginator_config:
            found.setdefault(xform_name(operation), []).append(f"{prefix}:{operation}")
    return {name: tuple(ops) for name, ops in found.items()}


@cache
def _waiters() -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for service in SERVICES:
        prefix = _session().get_service_model(service).signing_name or service
        try:
            model = _session().get_waiter_model(service)
        except Exception:  # a service without waiters
            continue
        for waiter in model.waiter_names:
            operation = model.get_waiter(waiter).operation
            found.setdefault(xform_name(waiter), []).append(f"{prefix}:{operation}")
    return {name: tuple(ops) for name, ops in found.items()}


def iam_actions(operation: str) -> tuple[str, ...]:
    """
    The IAM actions that authorise one API operation.

    :param operation: ``<service prefix>:<OperationName>``, e.g. ``s3:ListObjectsV2``.
    """
    return IAM_ACTION_OVERRIDES.get(operation, (operation,))


def _string_arg(node: ast.Call) -> str | None:
    if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def calls_in_source(source: str, path: Path) -> list[AwsCall]:
    """
    Find the AWS calls in one module's source.

    :param source: the module's text.
    :param path: its path (for messages).
    :raises SyntaxError: when the module does not parse.
    """
    found: list[AwsCall] = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method = node.func.attr
        line = node.lineno
        if method in NOT_AWS_CALLS:
            continue
        if method in ("get_paginator", "get_waiter"):
            name = _string_arg(node)
            table = _paginators() if method == "get_paginator" else _waiters()
            if name is None or name not in table:
                # A dynamic or unknown name cannot be checked: surface it rather than pass silently.
                found.append(AwsCall(path, line, f"{method}(<{name or 'dynamic'}>)", ("<unresolved>",)))
                continue
            operations = table[name]
            actions = tuple(a for op in operations for a in iam_actions(op))
            found.append(AwsCall(path, line, f"{method}({name!r})", actions, len(operations) > 1))
            continue
        if method in HOOK_METHODS:
            found.append(AwsCall(path, line, method, HOOK_METHODS[method]))
            continue
        operations = operations_by_method().get(method)
        if operations:
            actions = tuple(a for prefix, op in operations for a in iam_actions(f"{prefix}:{op}"))
            found.append(AwsCall(path, line, method, actions, len(operations) > 1))
    return found


def scan(paths: Iterable[Path]) -> list[AwsCall]:
    """
    Find the AWS calls in every ``.py`` file under the given files and folders.

    :param paths: files or folders.
    """
    found: list[AwsCall] = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for file in files:
            found.extend(calls_in_source(file.read_text(encoding="utf-8"), file))
    return found


def load_policy(path: Path, values: Mapping[str, str]) -> dict[str, Any]:
    """
    Read a policy file and fill its ``{{PLACEHOLDER}}`` values.

    :param path: the JSON policy.
    :param values: placeholder -> value.
    :raises KeyError: naming a placeholder left without a value.
    """
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise KeyError(f"{path}: placeholder {text[start : text.index('}}', start) + 2]} has no value")
    policy: dict[str, Any] = json.loads(text)
    return policy


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def allowing_statements(policy: Mapping[str, Any], action: str) -> list[dict[str, Any]]:
    """
    The Allow statements of a policy whose Action matches one action (IAM's case-insensitive globs).

    Deny statements and NotAction are refused: these policies are allow-lists, and an evaluator
    that ignored a Deny would report access that IAM refuses.

    :param policy: a parsed policy document.
    :param action: e.g. ``sagemaker:CreateProcessingJob``.
    """
    matches = []
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow" or "NotAction" in statement:
            raise ValueError(f"statement {statement.get('Sid')!r}: only Allow with Action is supported")
        patterns = _as_list(statement["Action"])
        if any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns):
            matches.append(statement)
    return matches


def missing(calls: Iterable[AwsCall], policy: Mapping[str, Any]) -> list[str]:
    """
    Describe every call whose actions the policy does not allow.

    :param calls: from :func:`scan` or listed by hand.
    :param policy: a parsed policy document.
    """
    problems = []
    for call in calls:
        needed = [a for a in call.actions if a not in NO_PERMISSION_NEEDED]
        if not needed:
            continue
        allowed = [a for a in needed if allowing_statements(policy, a)]
        ok = bool(allowed) if call.ambiguous else len(allowed) == len(needed)
        if not ok:
            lacking = sorted(set(needed) - set(allowed))
            problems.append(f"{call.path}:{call.line}: {call.method} needs {', '.join(lacking)}")
    return problems

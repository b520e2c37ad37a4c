"""
S3 access as every task uses it: calls retried on throttling and server errors, JSON documents
read and written, prefixes listed.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from boltzgen_airflow.exceptions import CommitError

# Error codes worth another try: throttling, server errors, and the S3 eventual hiccups.
log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "503",
    }
)


NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


T = TypeVar("T")


def join_key(prefix: str, name: str) -> str:
    """
    Join an S3 prefix and a name with exactly one slash.

    :param prefix: the folder key.
    :param name: the file name.
    """
    return f"{prefix.rstrip('/')}/{name}"


def _is_retryable(error: Exception) -> bool:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
    return isinstance(error, BotoCoreError)


def with_retries(call: Callable[[], T], *, attempts: int = 5, delay: float = 0.5, what: str = "S3 call") -> T:
    """
    Run ``call`` again on throttling, server and connection errors, backing off exponentially.

    :param call: the function to run.
    :param attempts: how many tries in all.
    :param delay: the first pause in seconds (doubled after each failure).
    :param what: what the call does, for the log.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (ClientError, BotoCoreError) as err:
            if attempt == attempts or not _is_retryable(err):
                raise
            log.warning("%s failed (%s); retry %d of %d", what, err, attempt, attempts - 1)
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in NOT_FOUND_CODES


def read_json(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """
    Read a JSON object from S3, or None when it does not exist.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the object key.
    :raises CommitError: when the object is not a JSON mapping.
    """
    try:
        response = with_retries(
            lambda: client.get_object(Bucket=bucket, Key=key), what=f"read s3://{bucket}/{key}"
        )
    except ClientError as err:
        if _not_found(err):
            return None
        raise
    body = response["Body"].read()
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommitError(f"s3://{bucket}/{key} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CommitError(f"s3://{bucket}/{key} is not a JSON object")
    return data


def list_sizes(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """
    List every object under a prefix as relative path -> size.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the folder key (``/`` is added when missing; empty for the whole bucket).
    """
    folder = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"  # "" is the whole bucket
    sizes: dict[str, int] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": folder}
        if token:
            kwargs["ContinuationToken"] = token
        page: dict[str, Any] = with_retries(
            functools.partial(client.list_objects_v2, **kwargs), what=f"list s3://{bucket}/{folder}"
        )
        for item in page.get("Contents", []):
            sizes[item["Key"][len(folder) :]] = int(item["Size"])
        if not page.get("IsTruncated"):
            return sizes
        token = page.get("NextContinuationToken")


def put_json(client: Any, bucket: str, key: str, document: Any) -> None:
    """
    Write a JSON document (keys sorted), retried like every call.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key.
    :param document: anything :func:`json.dumps` takes.
    """
    body = json.dumps(document, sort_keys=True, indent=1).encode()
    with_retries(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json"),
        what=f"write s3://{bucket}/{key}",
    )

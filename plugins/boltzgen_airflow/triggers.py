"""Triggers that wait in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from boltzgen_airflow.commit import MANIFEST_FILE, join_key, manifest_summary, verify_manifest


class ManifestCheckTrigger(BaseTrigger):
    """
    Wait for an attempt's ``_manifest.json`` and verify it against the objects under the attempt.

    Emits one event: ``status`` is ``success`` (verified), ``invalid`` (present but failing, with
    ``problems``), ``timeout`` (never appeared) or ``error``.

    :param bucket: the bucket of the attempt.
    :param attempt_prefix: the attempt's key prefix.
    :param stage: the stage the manifest must belong to.
    :param job_name: the job that writes the attempt (carried into the event).
    :param min_fraction: the least fraction of expected designs that must be produced.
    :param poll_interval: seconds between looks.
    :param max_attempts: looks before giving up.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    """

    def __init__(
        self,
        *,
        bucket: str,
        attempt_prefix: str,
        stage: str,
        job_name: str,
        min_fraction: float,
        poll_interval: float = 10.0,
        max_attempts: int = 60,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.attempt_prefix = attempt_prefix
        self.stage = stage
        self.job_name = job_name
        self.min_fraction = min_fraction
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and the keyword arguments that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "bucket": self.bucket,
                "attempt_prefix": self.attempt_prefix,
                "stage": self.stage,
                "job_name": self.job_name,
                "min_fraction": self.min_fraction,
                "poll_interval": self.poll_interval,
                "max_attempts": self.max_attempts,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
            },
        )

    def _event(self, status: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "job_name": self.job_name, "attempt_prefix": self.attempt_prefix, **extra}
        )

    async def _listing(self, client: Any) -> dict[str, int]:
        folder = self.attempt_prefix if self.attempt_prefix.endswith("/") else f"{self.attempt_prefix}/"
        sizes: dict[str, int] = {}
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                sizes[item["Key"][len(folder) :]] = int(item["Size"])
        return sizes

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll S3 for the manifest, then verify it."""
        hook = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        key = join_key(self.attempt_prefix, MANIFEST_FILE)
        try:
            async with await hook.get_async_conn() as client:
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        response = await client.get_object(Bucket=self.bucket, Key=key)
                        body = await response["Body"].read()
                    except ClientError as err:
                        if err.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                            raise
                        self.log.info(
                            "No %s yet under s3://%s/%s (look %d)",
                            MANIFEST_FILE,
                            self.bucket,
                            self.attempt_prefix,
                            attempt,
                        )
                        await asyncio.sleep(self.poll_interval)
                        continue
                    try:
                        manifest = json.loads(body)
                    except ValueError as err:
                        yield self._event("invalid", problems=[f"{MANIFEST_FILE} is not valid JSON: {err}"])
                        return
                    verification = verify_manifest(
                        manifest, await self._listing(client), self.min_fraction, stage=self.stage
                    )
                    yield self._event(
                        "success" if verification.ok else "invalid",
                        problems=verification.problems,
                        summary=manifest_summary(manifest),
                    )
                    return
        except Exception as err:  # the triggerer must get an event, not a dead trigger
            yield self._event("error", problems=[f"{type(err).__name__}: {err}"])
            return
        yield self._event(
            "timeout",
            problems=[
                f"no {MANIFEST_FILE} under s3://{self.bucket}/{self.attempt_prefix} after "
                f"{self.max_attempts} looks"
            ],
        )

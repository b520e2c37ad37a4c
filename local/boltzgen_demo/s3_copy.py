"""Copy between the local S3 (moto) and folders: results out, the demo's bucket kept across runs."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

_WORKERS = 8  # boto3 clients are thread-safe; moto answers small objects in parallel
_RUN_MANIFEST_RE = re.compile(r"^(?P<prefix>.+)/campaigns/(?P<campaign>[^/]+)/runs/(?P<run>[^/]+)/run\.json$")


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """
    Every key under a prefix.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the key prefix.
    """
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def run_manifests(keys: list[str], campaign: str) -> dict[str, str]:
    """
    The run manifests of a campaign among some keys.

    :param keys: S3 keys.
    :param campaign: the campaign name.
    :return: run folder name -> key of its ``run.json``.
    """
    found = {}
    for key in keys:
        match = _RUN_MANIFEST_RE.match(key)
        if match and match.group("campaign") == campaign:
            found[match.group("run")] = key
    return found


def _safe_target(root: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing to write S3 key {rel!r} outside {root}")
    return root.joinpath(*parts)


def download_prefix(client: Any, bucket: str, prefix: str, into: Path, skip: tuple[str, ...] = ()) -> int:
    """
    Download every object under a prefix into a folder, keeping the layout below the prefix.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the key prefix (ends with ``/``).
    :param into: the target folder.
    :param skip: relative paths starting with any of these are left out.
    :return: the number of files written.
    """
    jobs: list[tuple[str, Path]] = []
    for key in list_keys(client, bucket, prefix):
        rel = key[len(prefix) :]
        if rel and not rel.endswith("/") and not rel.startswith(skip):
            jobs.append((key, _safe_target(into, rel)))

    def fetch(job: tuple[str, Path]) -> None:
        key, target = job
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(fetch, jobs))
    return len(jobs)


def upload_folder(client: Any, bucket: str, folder: Path) -> int:
    """
    Upload a folder written by :func:`download_prefix` with an empty prefix (the bucket restored).

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param folder: the folder.
    :return: the number of objects written.
    """
    paths = sorted(p for p in folder.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=path.relative_to(folder).as_posix(), Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(put, paths))
    return len(paths)

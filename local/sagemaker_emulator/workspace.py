"""The per-job folder that stands in for the container's ``/opt/ml``, and path rewriting into it."""

from __future__ import annotations

import re
from pathlib import Path

CONTAINER_ROOT = "/opt/ml"
_PREFIX_RE = re.compile(r"(?<![\w./-])/opt/ml(?=/|$|[^\w.-])")


def rewrite(value: str, root: Path) -> str:
    """
    Replace every ``/opt/ml`` path prefix in a string (also after ``=``) with the workspace root.

    :param value: an entrypoint word, argument or environment value.
    :param root: the job's workspace standing in for ``/opt/ml``.
    """
    return _PREFIX_RE.sub(lambda _m: str(root), value)


def local_path(container_path: str, root: Path) -> Path:
    """
    Where a container path lives in the workspace; paths outside ``/opt/ml`` go under ``<root>/../fs``.

    :param container_path: an absolute path inside the container, e.g. an input's LocalPath.
    :param root: the job's workspace standing in for ``/opt/ml``.
    """
    parts = Path(container_path).parts
    if ".." in parts:
        raise ValueError(f"container path {container_path!r} must not contain '..'")
    if container_path == CONTAINER_ROOT or container_path.startswith(CONTAINER_ROOT + "/"):
        return root / container_path[len(CONTAINER_ROOT) :].lstrip("/")
    return root.parent / "fs" / container_path.lstrip("/")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """
    Split ``s3://bucket/key`` (or an ``https://bucket.s3...`` URL) into bucket and key.

    :param uri: the S3 URI of an input or output.
    """
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri)
    if match:
        return match.group(1), match.group(2)
    match = re.fullmatch(r"https://([^/.]+)\.s3[.\w-]*\.amazonaws\.com/?(.*)", uri)
    if match:
        return match.group(1), match.group(2)
    raise ValueError(f"not an S3 URI: {uri!r}")


def relative_key(key: str, prefix: str) -> str:
    """
    The path below an input's LocalPath at which SageMaker places an object matched by an S3 prefix.

    :param key: the object key.
    :param prefix: the key prefix of the input's S3Uri.
    """
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    return key[len(prefix) :].lstrip("/")


def inside(path: Path, folder: Path) -> Path:
    """
    Return ``path`` when it stays inside ``folder`` (no escape through ``..`` in S3 keys).

    :param path: a path to create.
    :param folder: the folder it must stay in.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ValueError(f"{path} leaves {folder}")
    return resolved

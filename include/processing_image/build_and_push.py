#!/usr/bin/env python3
"""
Build the BoltzGen processing image and push it to Amazon ECR.

    python include/processing_image/build_and_push.py --region us-east-1 --repository boltzgen \\
        [--account-id 123456789012] [--tag 0.3.2] [--create-repository] [--dry-run]

Prints the image URI to put in a campaign's ``aws.image_uri``. ``--dry-run`` prints the commands
and calls nothing (no Docker, no AWS). The registry password goes to ``docker login`` on standard
input and is never printed nor put on a command line.
"""

from __future__ import annotations

import argparse
import base64
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = Path(__file__).resolve().with_name("Dockerfile")
DEFAULT_TAG = "0.3.2"
DEFAULT_TARGET = "sagemaker"
# SageMaker Processing instances are x86_64.
DEFAULT_PLATFORM = "linux/amd64"

# ECR's own rules (CreateRepository API reference and image tag limits).
_REPOSITORY_RE = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")


class BuildError(ValueError):
    """A value that cannot reach ECR or Docker, named in the message."""


def validate_repository(name: str) -> str:
    """
    Check an ECR repository name.

    :param name: e.g. ``boltzgen`` or ``team/boltzgen-processing``.
    :raises BuildError: naming the value.
    """
    if not 2 <= len(name) <= 256 or not _REPOSITORY_RE.match(name):
        raise BuildError(
            f"invalid ECR repository name {name!r}: 2-256 lowercase letters, digits and . _ - / "
            "(each part starting and ending with a letter or digit)"
        )
    return name


def validate_region(region: str) -> str:
    """
    Check an AWS region name.

    :param region: e.g. ``us-east-1``.
    :raises BuildError: naming the value.
    """
    if not _REGION_RE.match(region):
        raise BuildError(f"invalid AWS region {region!r} (expected e.g. us-east-1)")
    return region


def validate_tag(tag: str) -> str:
    """
    Check an image tag.

    :param tag: e.g. ``0.3.2``.
    :raises BuildError: naming the value.
    """
    if not _TAG_RE.match(tag):
        raise BuildError(f"invalid image tag {tag!r}: 1-128 letters, digits, _ . - (not first: . -)")
    return tag


def validate_account(account_id: str) -> str:
    """
    Check an AWS account id.

    :param account_id: twelve digits.
    :raises BuildError: naming the value.
    """
    if not _ACCOUNT_RE.match(account_id):
        raise BuildError(f"invalid AWS account id {account_id!r} (expected 12 digits)")
    return account_id


@dataclass(frozen=True)
class ImageTarget:
    """
    Where the image goes and how it is built.

    :param account_id: the registry's AWS account.
    :param region: the registry's region.
    :param repository: the ECR repository name.
    :param tag: the image tag.
    :param target: the Dockerfile build target.
    :param platform: the image platform.
    """

    account_id: str
    region: str
    repository: str
    tag: str = DEFAULT_TAG
    target: str = DEFAULT_TARGET
    platform: str = DEFAULT_PLATFORM

    def __post_init__(self) -> None:
        validate_account(self.account_id)
        validate_region(self.region)
        validate_repository(self.repository)
        validate_tag(self.tag)
        if not _TARGET_RE.match(self.target):
            raise BuildError(f"invalid build target {self.target!r}")
        if not _PLATFORM_RE.match(self.platform):
            raise BuildError(f"invalid platform {self.platform!r} (expected e.g. linux/amd64)")

    @property
    def registry(self) -> str:
        """The ECR registry host."""
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"{self.account_id}.dkr.ecr.{self.region}.{suffix}"

    @property
    def uri(self) -> str:
        """The full image URI, as a campaign's ``aws.image_uri``."""
        return f"{self.registry}/{self.repository}:{self.tag}"


def build_commands(
    image: ImageTarget, dockerfile: Path = DOCKERFILE, context: Path = REPO_ROOT
) -> list[list[str]]:
    """
    The Docker commands that build, log in and push, as argument lists.

    :param image: the destination.
    :param dockerfile: the processing image's Dockerfile.
    :param context: the build context (the repository root: the emulator target copies local/).
    """
    return [
        [
            "docker",
            "build",
            "--file",
            str(dockerfile),
            "--target",
            image.target,
            "--platform",
            image.platform,
            "--tag",
            image.uri,
            str(context),
        ],
        ["docker", "login", "--username", "AWS", "--password-stdin", image.registry],
        ["docker", "push", image.uri],
    ]


def registry_password(authorization: dict[str, Any]) -> str:
    """
    Extract the password from one ``GetAuthorizationToken`` authorization data entry.

    :param authorization: an element of ``authorizationData``.
    :raises BuildError: when the token is not ``AWS:<password>``.
    """
    try:
        user, _, password = base64.b64decode(authorization["authorizationToken"]).decode().partition(":")
    except (KeyError, ValueError) as exc:
        raise BuildError("ECR returned an unreadable authorization token") from exc
    if user != "AWS" or not password:
        raise BuildError("ECR returned an authorization token that is not for the user AWS")
    return password


def _session(region: str) -> Any:
    import boto3

    return boto3.session.Session(region_name=region)


def _ensure_repository(session: Any, repository: str) -> None:
    ecr = session.client("ecr")
    try:
        ecr.create_repository(
            repositoryName=repository,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
        )
        print(f"created ECR repository {repository}", file=sys.stderr)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass


def _run(command: list[str], stdin: str | None = None) -> None:
    print("+ " + shlex.join(command), file=sys.stderr)
    subprocess.run(command, input=stdin, text=True, check=True)


def _image(args: argparse.Namespace, account_id: str) -> ImageTarget:
    return ImageTarget(account_id, args.region, args.repository, args.tag, args.target, args.platform)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """:param argv: command-line arguments (``sys.argv[1:]`` when None)."""
    parser = argparse.ArgumentParser(description="Build the BoltzGen processing image; push it to ECR.")
    parser.add_argument("--region", required=True, help="the ECR region, e.g. us-east-1")
    parser.add_argument("--repository", required=True, help="the ECR repository name")
    parser.add_argument("--account-id", help="the registry account (default: the caller's, from STS)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help="image tag (default %(default)s)")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="Dockerfile target (default %(default)s)")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help="image platform (default %(default)s)")
    parser.add_argument("--create-repository", action="store_true", help="create the repository if missing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Build and push; print the image URI.

    :param argv: command-line arguments.
    :returns: the process exit code.
    """
    args = parse_args(argv)
    try:
        validate_region(args.region)
        validate_repository(args.repository)
        if args.dry_run:
            if args.account_id is None:
                raise BuildError("--dry-run calls nothing, so it needs --account-id")
            image = _image(args, args.account_id)
            build, login, push = build_commands(image)
            # The equivalent shell line for the login: the real run asks ecr:GetAuthorizationToken.
            password = shlex.join(["aws", "ecr", "get-login-password", "--region", image.region])
            print(shlex.join(build))
            print(f"{password} | {shlex.join(login)}")
            print(shlex.join(push))
            print(image.uri)
            return 0
        session = _session(args.region)
        account = args.account_id or session.client("sts").get_caller_identity()["Account"]
        image = _image(args, account)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    build, login, push = build_commands(image)
    if args.create_repository:
        _ensure_repository(session, image.repository)
    _run(build)
    token = session.client("ecr").get_authorization_token(registryIds=[image.account_id])
    _run(login, stdin=registry_password(token["authorizationData"][0]))
    _run(push)
    print(image.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())

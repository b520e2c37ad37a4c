"""include/processing_image/build_and_push.py: its dry run and its validation (no Docker, no AWS)."""

from __future__ import annotations

import base64
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "include" / "processing_image" / "build_and_push.py"


@pytest.fixture(scope="module")
def bp() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_and_push", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_and_push"] = module
    spec.loader.exec_module(module)
    return module


def _dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", *args],
        capture_output=True,
        text=True,
        check=False,
        # No credentials at all: a dry run must not need or touch AWS.
        env={"PATH": "/usr/bin:/bin"},
    )


def test_dry_run_prints_build_login_push_and_the_uri() -> None:
    result = _dry_run(
        "--region", "eu-west-1", "--repository", "team/boltzgen", "--account-id", "123456789012"
    )
    assert result.returncode == 0, result.stderr
    build, login, push, uri = result.stdout.splitlines()
    assert uri == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/boltzgen:0.3.2"
    words = shlex.split(build)
    assert words[:2] == ["docker", "build"]
    assert words[words.index("--file") + 1] == str(ROOT / "include" / "processing_image" / "Dockerfile")
    assert words[words.index("--target") + 1] == "sagemaker"
    assert words[words.index("--platform") + 1] == "linux/amd64"
    assert words[words.index("--tag") + 1] == uri
    assert words[-1] == str(ROOT)
    assert login == (
        "aws ecr get-login-password --region eu-west-1 | "
        "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    )
    assert push == f"docker push {uri}"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--repository", "BoltzGen", "invalid ECR repository name 'BoltzGen'"),
        ("--repository", "boltzgen;rm -rf /", "invalid ECR repository name"),
        ("--region", "us_east_1", "invalid AWS region 'us_east_1'"),
        ("--account-id", "12345", "invalid AWS account id '12345'"),
        ("--tag", ".x", "invalid image tag '.x'"),
    ],
)
def test_bad_names_are_refused_before_anything_runs(flag: str, value: str, message: str) -> None:
    args = {"--region": "us-east-1", "--repository": "boltzgen", "--account-id": "123456789012", flag: value}
    result = _dry_run(*[x for kv in args.items() for x in kv])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_dry_run_needs_the_account_because_it_asks_aws_nothing() -> None:
    result = _dry_run("--region", "us-east-1", "--repository", "boltzgen")
    assert result.returncode == 2
    assert "--account-id" in result.stderr


def test_commands_are_argument_lists_with_the_uri_as_one_argument(bp: ModuleType) -> None:
    image = bp.ImageTarget("123456789012", "cn-north-1", "boltzgen", "v1")
    build, login, push = bp.build_commands(image)
    assert all(isinstance(c, list) and all(isinstance(w, str) for w in c) for c in (build, login, push))
    assert image.registry == "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
    assert push == ["docker", "push", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/boltzgen:v1"]
    assert "--password-stdin" in login and not any("password" in w and w != "--password-stdin" for w in login)


def test_registry_password_is_read_from_the_ecr_token(bp: ModuleType) -> None:
    token = base64.b64encode(b"AWS:s3cr3t-value").decode()
    assert bp.registry_password({"authorizationToken": token}) == "s3cr3t-value"
    with pytest.raises(bp.BuildError, match="not for the user AWS"):
        bp.registry_password({"authorizationToken": base64.b64encode(b"root:x").decode()})
    with pytest.raises(bp.BuildError, match="unreadable"):
        bp.registry_password({})


def test_no_shell_anywhere_in_the_script() -> None:
    text = SCRIPT.read_text()
    assert "shell=True" not in text
    assert "os.system" not in text

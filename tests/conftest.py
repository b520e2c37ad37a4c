"""Settings and fixtures every test shares: an isolated Airflow home, AWS credentials that reach nothing
real, S3 on a moto server, campaign files.

Airflow reads its configuration when first imported, so this runs before any test module imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from support.campaigns import BASE_CAMPAIGN, merge
from support.network import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = PROJECT_ROOT.parent / "shared" / "boltzgen-examples"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bg-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
# Dummy credentials: nothing in the suite may reach real AWS, and a leak of these is harmless.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)


ENGINE_VARIABLE = "BOLTZGEN_TEST_ENGINE"  # read by tests/dags/airflow_services.py


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=("local", "celery"),
        default=None,
        help="deployment of the tests that run real Airflow: local (SQLite, LocalExecutor; default) or "
        f"celery (PostgreSQL, Redis, CeleryExecutor with two workers); also ${ENGINE_VARIABLE}",
    )


def pytest_configure(config: pytest.Config) -> None:
    engine = config.getoption("--engine")
    if engine:
        os.environ[ENGINE_VARIABLE] = engine


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENGINE_VARIABLE, "local") == "celery":
        return
    skip = pytest.mark.skip(reason="needs the Celery deployment (--engine celery)")
    for item in items:
        if item.get_closest_marker("celery"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_examples() -> Path:
    """The example specs published with BoltzGen; tests that need them skip when absent."""
    if not SHARED_EXAMPLES.is_dir():
        pytest.skip(f"BoltzGen examples not present at {SHARED_EXAMPLES}")
    return SHARED_EXAMPLES


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A migrated SQLite metadata database in the session's Airflow home."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    yield _AIRFLOW_HOME


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint served by moto over HTTP, so boto3 talks to a real server."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """A boto3 S3 client and a fresh bucket."""
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = "bg-test-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    bucket = "".join(c if c.isalnum() or c == "-" else "-" for c in bucket).strip("-")
    client.create_bucket(Bucket=bucket)
    yield client, bucket


@pytest.fixture
def write_campaign(tmp_path: Path) -> Callable[..., Path]:
    """Write a campaign (BASE_CAMPAIGN merged with overrides, or raw text) and its specs folder."""
    (tmp_path / "specs").mkdir(exist_ok=True)

    def write(extra: dict[str, Any] | None = None, *, text: str | None = None, name: str = "c.yaml") -> Path:
        path = tmp_path / name
        if text is None:
            text = yaml.safe_dump(merge(BASE_CAMPAIGN, extra or {}))
        path.write_text(text)
        return path

    return write

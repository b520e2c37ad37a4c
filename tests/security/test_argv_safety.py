"""
Run params and BoltzGen options never become shell code or extra command-line flags.

The plan writes work.json to a real S3 (moto server); the real step scripts read it and build the
``boltzgen`` argv they would exec. No product code runs a shell.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from boltzgen_airflow.campaign.loading import parse_campaign
from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.run.prepare import plan_run

PROJECT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT / "include" / "step_scripts"
HOSTILE = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a | cat /etc/passwd",
    "line\nbreak",
    "--output=/etc",
    "--steps",
    "-h",
]
# The flags design's ``boltzgen configure`` takes; anything else starting with '-' would be injected.
CONFIGURE_FLAGS = {
    "--output",
    "--protocol",
    "--num_designs",
    "--diffusion_batch_size",
    "--devices",
    "--inverse_fold_num_sequences",
    "--budget",
    "--config",
}
NASTY_SPEC = "$(id);`id`|--output=x.yaml"


@pytest.fixture(scope="module")
def step_scripts() -> Iterator[tuple[ModuleType, ModuleType, ModuleType]]:
    """The real step modules, imported as the container imports them (their folder on sys.path)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield (
            importlib.import_module("stepcommon"),
            importlib.import_module("design"),
            importlib.import_module("filtering"),
        )
    finally:
        sys.path.remove(str(SCRIPTS))


def campaign_data(tmp_path: Path, bucket: str, **design: Any) -> dict[str, Any]:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    text = yaml.safe_dump({"entities": [{"protein": {"id": "B", "sequence": "10..20"}}]})
    (specs / NASTY_SPEC).write_text(text)
    (specs / "plain.yaml").write_text(text)
    return {
        "name": "sec",
        "aws": {
            "bucket": bucket,
            "prefix": "sec",
            "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
            "image_uri": "boltzgen-sim:latest",
        },
        "design": {"specs": str(specs), "num_designs": 2, "budget": 1, **design},
    }


def test_shell_text_in_the_specs_param_is_an_unknown_spec(tmp_path: Path) -> None:
    campaign = parse_campaign(campaign_data(tmp_path, "bg-bucket"), "c.yaml", {})
    for value in HOSTILE:
        options, _ = validate_run_params(campaign, {"specs": [value]}, {"specs": [value]})
        with pytest.raises(CampaignError) as err:
            plan_run(None, campaign, options, "manual__1")
        assert "params.specs" in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("additional_filters", ["design_ptm>0.7; rm -rf /"]),
        ("additional_filters", ["$(id)>1"]),
        ("additional_filters", ["x>1 --output=/etc"]),
        ("size_buckets", ["1-2:3|id"]),
        ("size_buckets", ["`id`"]),
        ("metrics_override", {"--output=/etc": 1.0}),
        ("metrics_override", {"a;b": 1.0}),
        ("step_config", {"design": {"--output": "/etc"}}),
        ("step_config", {"design": {"a b": 1}}),
        ("step_config", {"$(id)": {"a": 1}}),
    ],
)
def test_shell_text_in_option_names_is_rejected(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(CampaignError) as err:
        parse_campaign(campaign_data(tmp_path, "bg-bucket", **{key: value}), "c.yaml", {})
    assert [i.path.split(".")[:2] for i in err.value.issues] == [["design", key]], str(err.value)


def test_option_values_reach_boltzgen_as_single_arguments(
    tmp_path: Path, s3_bucket: tuple[Any, str], step_scripts: tuple[ModuleType, ...]
) -> None:
    stepcommon, design, filtering = step_scripts
    client, bucket = s3_bucket
    step_config = {"design": {f"opt{i}": v for i, v in enumerate(HOSTILE)}, "analysis": {"nested": HOSTILE}}
    data = campaign_data(tmp_path, bucket, step_config=step_config, metrics_override={"design_ptm": 2.0})
    campaign = parse_campaign(data, "c.yaml", {})
    options, campaign = validate_run_params(campaign, {"specs": [NASTY_SPEC]})
    plan = plan_run(client, campaign, options, "manual__2026-01-01T00:00:00+00:00")
    (shard,) = plan.shards
    key = shard.stages["design"].work_prefix + "work.json"
    work_file = tmp_path / "work.json"
    work_file.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    work = stepcommon.load_work(work_file, "design")
    item = work["items"][0]
    spec = Path("/opt/ml/processing/input/specs") / item["spec"]
    argv = design.configure_args(work, item, spec, Path("/opt/ml/processing/output/result/x"))

    assert argv[:2] == ["configure", str(spec)]  # the hostile spec name is inside one path argument
    assert {a for a in argv if a.startswith("-")} <= CONFIGURE_FLAGS, argv
    pairs = [argv[i + 1 :] for i, a in enumerate(argv) if a == "--config"]
    design_pairs = next(p for p in pairs if p[0] == "design")[1 : 1 + len(HOSTILE)]
    assert design_pairs == [f"opt{i}={v}" for i, v in enumerate(HOSTILE)]
    assert f"nested={json.dumps(HOSTILE)}" in argv
    assert sum(a.count("\n") for a in argv) == sum(v.count("\n") for v in HOSTILE)

    # Filtering writes its options into BoltzGen's YAML config: values stay values.
    work["filtering"]["metrics_override"] = {"design_ptm": 2.0}
    values = filtering.filter_overrides(work, Path("/d; rm -rf x"), Path("/o\nlisted: 1"))
    config = yaml.safe_load(stepcommon.set_top_level_keys("budget: 5\noutdir: x\n", values))
    assert config["design_dir"] == "/d; rm -rf x" and config["outdir"] == "/o\nlisted: 1"
    assert "listed" not in config and config["metrics_override"] == {"design_ptm": 2.0}


SHELL_CALLS = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput")


def test_no_product_code_runs_a_shell() -> None:
    sources = [
        p
        for folder in ("plugins", "include", "local", "dags")
        for p in sorted((PROJECT / folder).rglob("*.py"))
    ]
    assert len(sources) > 20
    offenders = [
        f"{path.relative_to(PROJECT)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SHELL_CALLS.search(line)
    ]
    assert offenders == []

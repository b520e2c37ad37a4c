"""
Hostile spec trees: every spec is either rejected with an error naming spec and path, or passed
safely, and whatever is passed reaches S3 only as a valid key (staged to a real S3 on moto server).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

from boltzgen_airflow.campaign.specs import SpecBundle, discover_bundles, resolve_bundle
from boltzgen_airflow.run.staging import stage_bundles, write_specs_manifest
from boltzgen_airflow.sagemaker.limits import JOB_NAME_RE
from boltzgen_airflow.sagemaker.requests import job_name
from boltzgen_airflow.stages import STAGES
from boltzgen_airflow.storage.layout import Layout


def spec_text(*refs: str) -> str:
    """A design spec with one designed chain and a file entity per reference."""
    entities: list[Any] = [{"protein": {"id": "B", "sequence": "10..20"}}]
    entities += [{"file": {"path": ref}} for ref in refs]
    return yaml.safe_dump({"entities": entities})


def write(root: Path, rel: str, text: str = "data_x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_spec(bundles: list[SpecBundle]) -> dict[str, SpecBundle]:
    return {b.spec: b for b in bundles}


def assert_valid_key(key: str) -> None:
    """An S3 key S3 and the SageMaker ManifestFile accept: UTF-8, at most 1024 bytes, no control chars."""
    encoded = key.encode("utf-8")  # raises on lone surrogates (undecodable file names)
    assert 0 < len(encoded) <= 1024, f"{len(encoded)} bytes: {key!r}"
    assert not [c for c in key if unicodedata.category(c) == "Cc"], f"control character in {key!r}"


def rejected(bundle: SpecBundle, *needles: str) -> None:
    assert not bundle.ok and not bundle.hash
    text = "\n".join(bundle.errors)
    assert bundle.spec in text, bundle.errors
    for needle in needles:
        assert needle in text, bundle.errors


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "specs"
    root.mkdir()
    return root


def test_references_that_leave_the_root_are_rejected_naming_spec_and_path(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.cif")
    write(outside, "nested/spec.yaml", spec_text())
    write(tree, "a/up.yaml", spec_text("../../outside/secret.cif"))
    write(tree, "a/abs.yaml", spec_text(str(outside / "secret.cif")))
    write(tree, "a/win.yaml", spec_text("C:\\Windows\\x.cif"))
    write(tree, "a/url.yaml", spec_text("s3://bucket/x.cif"))
    (tree / "a" / "link.cif").symlink_to(outside / "secret.cif")
    write(tree, "a/filelink.yaml", spec_text("link.cif"))
    (tree / "dirlink").symlink_to(outside / "nested", target_is_directory=True)
    write(tree, "a/dirref.yaml", spec_text("../dirlink/spec.yaml"))
    (tree / "speclink.yaml").symlink_to(outside / "nested" / "spec.yaml")

    bundles = by_spec(discover_bundles(tree))
    rejected(bundles["a/up.yaml"], "../../outside/secret.cif", "leaves the specs root")
    rejected(bundles["a/abs.yaml"], str(outside / "secret.cif"), "absolute path")
    rejected(bundles["a/win.yaml"], "absolute path")
    rejected(bundles["a/url.yaml"], "absolute path")
    rejected(bundles["a/filelink.yaml"], "link.cif", "symlink out of the specs root")
    rejected(bundles["a/dirref.yaml"], "../dirlink/spec.yaml", "symlink out of the specs root")
    rejected(bundles["speclink.yaml"], "symlink out of the specs root")
    assert all(not b.ok for b in bundles.values())
    # ``**`` does not descend into folder symlinks; a glob naming one finds a spec outside the root.
    assert "dirlink/spec.yaml" not in bundles
    (linked,) = discover_bundles(tree, include="dirlink/*.yaml")
    rejected(linked, "dirlink/spec.yaml", "symlink out of the specs root")


def test_resolve_bundle_rejects_a_spec_outside_the_root(tree: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, "elsewhere.yaml", spec_text())
    rejected(resolve_bundle(tree, spec), "outside the specs root")
    rejected(resolve_bundle(tree, "../elsewhere.yaml"), "leaves the specs root")


def test_oversized_files_are_rejected(tree: Path) -> None:
    write(tree, "big.cif", "x" * 2000)
    write(tree, "uses_big.yaml", spec_text("big.cif"))
    write(tree, "huge_spec.yaml", spec_text() + "#" * 3000 + "\n")
    bundles = by_spec(discover_bundles(tree, max_file_bytes=1000))
    rejected(bundles["uses_big.yaml"], "big.cif", "above the limit of 1000")
    rejected(bundles["huge_spec.yaml"], "above 1000 bytes")


def test_malformed_and_non_mapping_yaml(tree: Path) -> None:
    write(tree, "broken.yaml", "entities: [\n  - protein: {id: A\n")
    write(tree, "list.yaml", "- entities\n- 1\n")
    write(tree, "scalar.yaml", "just text\n")
    write(tree, "bad_entities.yaml", "entities: {protein: 1}\n")
    write(tree, "bad_entity.yaml", "entities:\n  - 5\n")
    write(tree, "binary.yaml", "")
    (tree / "binary.yaml").write_bytes(b"\xff\xfe\x00entities")
    write(tree, "nested.yaml", "entities:\n  - file:\n      path: inner.yaml\n")
    write(tree, "inner.yaml", "[1, 2]\n")
    bundles = by_spec(discover_bundles(tree))
    rejected(bundles["broken.yaml"], "invalid YAML")
    rejected(bundles["binary.yaml"], "invalid YAML")
    rejected(bundles["bad_entities.yaml"], "entities", "non-empty list")
    rejected(bundles["bad_entity.yaml"], "entities[0]")
    rejected(bundles["nested.yaml"], "inner.yaml", "must be a mapping")
    # YAMLs that are not design specs are not specs: nothing of them is planned or staged.
    assert {"list.yaml", "scalar.yaml", "inner.yaml"}.isdisjoint(bundles)
    rejected(resolve_bundle(tree, "list.yaml"), "not a design spec")


# Names S3 and BoltzGen take as they are: they pass, and reach S3 unchanged as valid keys.
PASSING_NAMES = {
    "nfc": unicodedata.normalize("NFC", "caf\u00e9.yaml"),
    "nfd": unicodedata.normalize("NFD", "caf\u00e9.yaml"),
    "rtl": "ab\u202ecd.yaml",
    "zero_width": "zw\u200bsp.yaml",
    "emoji": "bind\U0001f9ec.yaml",
    "space": "with space/my spec.yaml",
    "hash": "a#b.yaml",
    "question": "what?.yaml",
    "percent": "100%25.yaml",
    "backslash": "back\\slash.yaml",
    "shell": "$(id);`id`|x.yaml",
    "dashes": "--output=etc.yaml",
}
# Names that cannot make a valid S3 key: rejected, naming the spec.
REJECTED_NAMES = {
    "newline": "new\nline.yaml",
    "tab": "tab\there.yaml",
    "control": "ctl\x01.yaml",
    "delete": "del\x7f.yaml",
    "c1_control": "c1\x85.yaml",
    "too_long": "/".join(["d" * 200] * 6) + "/long.yaml",
}


def test_odd_names_pass_safely_or_are_rejected(tree: Path, s3_bucket: tuple[Any, str]) -> None:
    client, bucket = s3_bucket
    write(tree, "shared.cif")
    for label, name in {**PASSING_NAMES, **REJECTED_NAMES}.items():
        depth = name.count("/")
        write(tree, name, spec_text("../" * depth + "shared.cif"))
        # The same name as a referenced structure file.
        if "/" not in name:
            write(tree, f"refs/{name[:-5]}.cif")
            write(tree, f"refs/uses_{label}.yaml", spec_text(f"{name[:-5]}.cif"))

    bundles = by_spec(discover_bundles(tree))
    for label, name in REJECTED_NAMES.items():
        rejected(bundles[name])
        if "/" not in name:
            rejected(bundles[f"refs/uses_{label}.yaml"], repr(f"{name[:-5]}.cif"))
    passing = [bundles[name] for name in PASSING_NAMES.values()]
    passing += [bundles[f"refs/uses_{k}.yaml"] for k, n in PASSING_NAMES.items() if "/" not in n]
    assert all(b.ok for b in passing), [b.errors for b in passing if not b.ok]
    # NFC and NFD spellings are different files and stay different specs.
    assert bundles[PASSING_NAMES["nfc"]].hash != bundles[PASSING_NAMES["nfd"]].hash

    layout = Layout(bucket, "sec")
    for bundle in passing:
        for rel in bundle.all_files:
            assert_valid_key(layout.bundle_file_key(bundle.hash, rel))
    assert stage_bundles(client, layout, tree, passing) == sum(len(b.all_files) for b in passing)
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=write_specs_manifest(client, layout, passing))["Body"].read()
    )
    for bundle in passing:
        for rel in bundle.all_files:
            key = layout.bundle_file_key(bundle.hash, rel)
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert body == (tree / rel).read_bytes()
            assert f"{bundle.hash}/{rel}" in manifest


def test_undecodable_file_name_is_rejected(tree: Path) -> None:
    if sys.platform == "darwin":
        pytest.skip("the file system refuses non-UTF-8 names")
    raw = os.fsencode(tree) + b"/bad\xff.yaml"
    with open(raw, "w", encoding="utf-8") as handle:
        handle.write(spec_text())
    (bundle,) = discover_bundles(tree)
    rejected(bundle, "UTF-8")


def test_layout_refuses_keys_s3_cannot_hold() -> None:
    layout = Layout("bg-bucket", "p")
    for rel in ("a\nb.yaml", "a\x00.yaml", "x/" * 600 + "y.yaml", "bad\udcff.yaml"):
        with pytest.raises(ValueError, match="bundle file path"):
            layout.bundle_file_key("ab" * 32, rel)


@pytest.mark.parametrize("name", [*PASSING_NAMES.values(), *REJECTED_NAMES.values(), "", "-", "\u200b" * 80])
def test_job_names_stay_valid_whatever_the_names(name: str) -> None:
    # Spec names never reach job names (shards are s0000, filters f0000), but campaign, run and
    # shard text all go through the slug; whatever they hold, the name matches SageMaker's pattern.
    for stage in STAGES:
        built = job_name(name or "x", name, stage, name, 1)
        assert JOB_NAME_RE.fullmatch(built), built


def test_job_name_pattern_rejects_a_trailing_newline() -> None:
    from boltzgen_airflow.exceptions import JobRequestError
    from boltzgen_airflow.sagemaker.requests import validate_job_name

    with pytest.raises(JobRequestError, match="invalid SageMaker job name"):
        validate_job_name("bg-ok-des-s0000-abc\n")


def test_specs_cli_json_reports_each_problem(tree: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside.cif")
    write(tree, "ok.yaml", spec_text())
    write(tree, "escape.yaml", spec_text("../outside.cif"))
    write(tree, "ctl\x01.yaml", spec_text())
    cli = shutil.which("boltzgen-airflow", path=str(Path(sys.executable).parent))
    assert cli is not None
    proc = subprocess.run([cli, "specs", str(tree), "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr
    specs = {s["spec"]: s for s in json.loads(proc.stdout)["specs"]}
    assert specs["ok.yaml"]["errors"] == [] and specs["ok.yaml"]["hash"]
    assert any("leaves the specs root" in e and "escape.yaml" in e for e in specs["escape.yaml"]["errors"])
    assert specs["ctl\x01.yaml"]["errors"] and not specs["ctl\x01.yaml"]["hash"]

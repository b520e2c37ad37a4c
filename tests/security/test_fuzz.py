"""
Property-based fuzzing of every parser of user input: campaign files, spec trees and the DAG file.

Each test runs a fixed, derandomized number of cases (CI-sized) and counts them; the counts are
printed (``pytest -s``) and recorded in docs/security.md.
"""

from __future__ import annotations

import os
import runpy
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.specs import discover_bundles
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.storage.layout import Layout

PROJECT = Path(__file__).resolve().parents[2]
CASES: Counter[str] = Counter()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GOOD: dict[str, Any] = {
    "name": "good",
    "aws": {
        "bucket": "my-bucket",
        "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
        "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
    },
    "design": {"specs": "specs", "num_designs": 20, "budget": 5},
}
FIELDS = [
    ("name",),
    ("schedule",),
    ("retries",),
    ("max_active_runs",),
    ("start_date",),
    ("tags",),
    ("aws",),
    ("aws", "bucket"),
    ("aws", "prefix"),
    ("aws", "role_arn"),
    ("aws", "image_uri"),
    ("aws", "region"),
    ("aws", "subnets"),
    ("aws", "kms_key_id"),
    ("aws", "tags"),
    ("design",),
    ("design", "specs"),
    ("design", "include"),
    ("design", "protocol"),
    ("design", "num_designs"),
    ("design", "budget"),
    ("design", "alpha"),
    ("design", "additional_filters"),
    ("design", "size_buckets"),
    ("design", "metrics_override"),
    ("design", "step_config"),
    ("scaling",),
    ("scaling", "preset"),
    ("scaling", "design"),
    ("sharding",),
    ("sharding", "target_hours"),
    ("sharding", "max_job_usd"),
    ("sharding", "time_model"),
    ("notifications",),
    ("unknown_key",),
    ("design", "use_spot"),
]
ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "${",
        "${A",
        "${A:",
        "${}",
        "${1A}",
        "$${HOME}",
        "${A:${B}}",
        "${UNSET}",
        "${UNSET:}",
        "${SET}",
        "${NUM:12}",
        "${BIG:99999999999999999999999}",
        "* * * * *",
        "61 * * * *",
        "*/0 * * * *",
        "@hourly",
        "@never",
        "0 0 31 2 *",
        "x\ny",
        "caf\u00e9",
        unicodedata.normalize("NFD", "caf\u00e9"),
        "\u202eevil",
        "zero\u200bwidth",
        "\U0001f9ec",
        "a" * 300,
        "s3://",
        "s3://my-bucket/../x",
        "../../etc",
        "/etc/passwd",
        "nan",
        "-1",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    ODD_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), ODD_TEXT), inner, max_size=4),
    ),
    max_leaves=10,
)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@st.composite
def campaign_texts(draw: st.DrawFn) -> str:
    """A campaign file: the good one with some fields replaced, or broken YAML text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.one_of(st.text(max_size=60), ODD_TEXT, st.just("name: [unclosed"), st.just("- a\n- b"))
        )
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in draw(st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), max_size=4)):
        _set(doc, path, value)
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))


ENV = {"SET": "value", "NUM": "7", "BIG": "1e400", "A": "a", "B": "b"}


@FUZZ
@given(text=campaign_texts())
def test_malformed_campaign_files_raise_only_campaign_errors(text: str) -> None:
    CASES["campaign files"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "specs").mkdir()
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            campaign = load_campaign(path, environ=ENV)
        except CampaignError as err:
            CASES["campaign files rejected"] += 1
            assert err.issues and all(issue.file == str(path) for issue in err.issues), str(err)
            return
        # Whatever validated is usable for S3 keys.
        Layout(campaign.aws.bucket, campaign.aws.prefix).run_prefix(campaign.name, "manual__1")


# ------------------------------------------------------------------------------------------ spec trees
NAMES = st.sampled_from(
    ["a", "b", "sub/c", "sub/deep/d", "e f", "caf\u00e9", "\u202ex", "z\u200bw", "\U0001f9ec", "n_1", "q#?%"]
)
REFS = st.one_of(
    NAMES.map(lambda n: n + ".cif"),
    NAMES.map(lambda n: n + ".yaml"),
    st.sampled_from(
        ["../outside.cif", "../../x.cif", "/etc/passwd", "link_out.cif", "dirlink/in.cif", "missing.cif"]
    ),
    st.lists(NAMES.map(lambda n: n + ".yaml"), max_size=3),
    st.none(),
    st.integers(),
)


@st.composite
def spec_trees(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """Files of a spec tree: (kind, name, content)."""
    files: list[tuple[str, str, Any]] = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=6, unique=True)):
        kind = draw(st.sampled_from(["spec", "spec", "nested", "cif", "garbage", "symlink"]))
        if kind == "spec":
            entities = [{"file": {"path": ref}} for ref in draw(st.lists(REFS, max_size=3))]
            extra = draw(st.sampled_from([[], [{"protein": {"id": "A", "sequence": "5..9"}}], [7], ["x"]]))
            files.append((kind, name + ".yaml", {"entities": entities + extra}))
        elif kind == "nested":
            files.append((kind, name + ".yaml", {"path": draw(REFS)}))
        elif kind == "cif":
            files.append((kind, name + ".cif", "data_x\n" * draw(st.integers(1, 40))))
        elif kind == "garbage":
            files.append((kind, name + ".yaml", draw(st.binary(max_size=40))))
        else:
            files.append((kind, name + draw(st.sampled_from([".yaml", ".cif"])), draw(st.booleans())))
    return files


def _build(root: Path, outside: Path, files: list[tuple[str, str, Any]]) -> None:
    (outside / "in.cif").write_text("data_o\n")
    (outside / "spec.yaml").write_text("entities:\n  - file:\n      path: in.cif\n")
    (root / "link_out.cif").symlink_to(outside / "in.cif")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    for kind, name, content in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind in ("spec", "nested"):
            path.write_text(yaml.safe_dump(content))
        elif kind == "cif":
            path.write_text(content)
        elif kind == "garbage":
            path.write_bytes(content)
        elif not path.exists():
            path.symlink_to(
                outside / ("spec.yaml" if name.endswith(".yaml") else "in.cif") if content else root / "a.cif"
            )


@FUZZ
@given(
    files=spec_trees(),
    limit=st.sampled_from([50, 200, 10_000]),
    include=st.sampled_from(["**/*.yaml", "*/*.yaml", "dirlink/*.yaml"]),
)
def test_random_spec_trees_give_bundles_never_exceptions(
    files: list[tuple[str, str, Any]], limit: int, include: str
) -> None:
    CASES["spec trees"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = Path(tmp) / "specs", Path(tmp) / "outside"
        root.mkdir()
        outside.mkdir()
        _build(root, outside, files)
        bundles = discover_bundles(root, include=include, max_file_bytes=limit)
        layout = Layout("my-bucket", "p")
        real_root = root.resolve()
        for bundle in bundles:
            CASES["spec bundles"] += 1
            if bundle.errors:
                CASES["spec bundles rejected"] += 1
                assert all(bundle.spec in error for error in bundle.errors), bundle.errors
                continue
            for rel in bundle.all_files:
                assert (root / rel).resolve().is_relative_to(real_root), rel
                assert (root / rel).stat().st_size <= limit
                layout.bundle_file_key(bundle.hash, rel)


# ------------------------------------------------------------------------------------------ DAG parsing
FILE_STEMS = st.one_of(
    st.sampled_from(
        ["bad", "good", "boltzgen_good", "x y", "caf\u00e9", "\U0001f9ec", "-", "a" * 240, "ü" * 120]
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\."),
        min_size=1,
        max_size=20,
    ),
)


@settings(FUZZ, max_examples=25)
@given(
    bad=st.lists(st.tuples(FILE_STEMS, campaign_texts()), min_size=1, max_size=4, unique_by=lambda b: b[0])
)
def test_dag_file_survives_broken_campaigns(bad: list[tuple[str, str]]) -> None:
    CASES["DAG folders"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "specs").mkdir()
        good = folder / "zz_good.yaml"
        good.write_text(yaml.safe_dump(GOOD))
        written = []
        for stem, text in bad:
            path = folder / f"{stem}.yaml"
            if path == good or len(os.fsencode(path.name)) > 255:
                continue
            path.write_text(text, encoding="utf-8")
            written.append(path)
        old = os.environ.get("BOLTZGEN_CAMPAIGNS_DIR")
        os.environ["BOLTZGEN_CAMPAIGNS_DIR"] = str(folder)
        try:
            namespace = runpy.run_path(str(PROJECT / "dags" / "boltzgen_campaigns.py"))
        finally:
            if old is None:
                os.environ.pop("BOLTZGEN_CAMPAIGNS_DIR")
            else:
                os.environ["BOLTZGEN_CAMPAIGNS_DIR"] = old
        from airflow.sdk import DAG

        # The module also leaves its loop variable ``_dag``: key by dag id.
        dags = {v.dag_id: v for v in namespace.values() if isinstance(v, DAG)}
        assert "boltzgen_good" in dags and "invalid" not in dags["boltzgen_good"].tags
        broken_docs = [d.doc_md or "" for d in dags.values() if "invalid" in d.tags]
        for path in written:
            try:
                load_campaign(path)
            except CampaignError:
                CASES["broken campaign files"] += 1
                assert sum(f"`{path}`" in doc for doc in broken_docs) == 1, path.name


def test_zz_report_case_counts() -> None:
    print("fuzz cases:", dict(CASES))

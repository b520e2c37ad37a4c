from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.campaigns import BASE_CAMPAIGN

from boltzgen_airflow.campaign.loading import campaign_files, load_campaign, parse_campaign, substitute
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.campaign.schedule import validate_schedule
from boltzgen_airflow.exceptions import CampaignError

PROJECT = Path(__file__).resolve().parents[2]


def issues_of(path: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(CampaignError) as info:
        load_campaign(path, environ or {})
    return {issue.path: issue.message for issue in info.value.issues}


def test_valid_campaign_loads_with_defaults(write_campaign):
    path = write_campaign()
    campaign = load_campaign(path, {})
    assert campaign.dag_id == "boltzgen_t1"
    assert campaign.source_path == path.resolve()
    assert campaign.specs_root() == (path.parent / "specs").resolve()
    assert campaign.aws.conn_id == "aws_default"
    assert campaign.aws.network_isolation is True
    assert campaign.design.include == "**/*.yaml"
    assert campaign.design.min_design_fraction == 0.9
    assert campaign.scaling.preset == "auto"
    assert campaign.sharding.max_shards == 1000


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ({"name": "bad name!"}, "name", "pattern"),
        ({"aws": {"bucket": "Bad_Bucket"}}, "aws.bucket", "invalid S3 bucket name"),
        ({"aws": {"bucket": "192.168.1.1"}}, "aws.bucket", "IP address"),
        ({"aws": {"role_arn": "arn:aws:iam::12:role/x"}}, "aws.role_arn", "invalid IAM role ARN"),
        ({"aws": {"region": "mars-1"}}, "aws.region", "invalid AWS region"),
        ({"aws": {"prefix": "a/../b"}}, "aws.prefix", "invalid S3 prefix"),
        ({"aws": {"image_uri": "UPPER CASE"}}, "aws.image_uri", "invalid container image"),
        ({"aws": {"subnets": ["subnet-0123456789abcdef0"]}}, "aws", "go together"),
        ({"aws": {"tags": {"aws:x": "y"}}}, "aws.tags", "reserved"),
        ({"aws": {"kms_key_id": "nope"}}, "aws.kms_key_id", "invalid KMS key"),
        ({"design": {"num_designs": 0}}, "design.num_designs", "greater than or equal to 1"),
        ({"design": {"budget": 50}}, "design.budget", "cannot exceed num_designs"),
        ({"design": {"protocol": "protein-everything"}}, "design.protocol", "protein-anything"),
        ({"design": {"specs": "http://x/y"}}, "design.specs", "s3:// prefix"),
        ({"design": {"specs": "s3://Bad_Bucket/x"}}, "design.specs", "invalid S3 bucket name"),
        ({"design": {"specs": "missing"}}, "design.specs", "does not exist"),
        ({"design": {"include": "../*.yaml"}}, "design.include", "relative glob"),
        ({"design": {"alpha": 2}}, "design.alpha", "less than or equal to 1"),
        (
            {"design": {"additional_filters": ["design_ptm ~ 1"]}},
            "design.additional_filters",
            "Invalid additional_filters",
        ),
        # BoltzGen's filtering reads '>' then float('=0.7'): refused at validation, not after the GPU stages.
        ({"design": {"additional_filters": ["design_ptm>=0.7"]}}, "design.additional_filters", "'=0.7'"),
        ({"design": {"size_buckets": ["100-50:3"]}}, "design.size_buckets", "min is above max"),
        ({"design": {"step_config": {"fold": {"x": 1}}}}, "design.step_config", "unknown BoltzGen step"),
        ({"design": {"min_design_fraction": 0}}, "design.min_design_fraction", "greater than 0"),
        ({"scaling": {"preset": "huge"}}, "scaling.preset", "auto"),
        (
            {"scaling": {"design": {"instance_type": "ml.m5.xlarge"}}},
            "scaling.design.instance_type",
            "no GPU",
        ),
        (
            {"scaling": {"folding": {"instance_type": "ml.z9.huge"}}},
            "scaling.folding.instance_type",
            "unknown",
        ),
        (
            {"scaling": {"folding": {"instance_type": "g5.xlarge"}}},
            "scaling.folding.instance_type",
            "invalid",
        ),
        ({"scaling": {"folding": {"max_runtime_hours": 300}}}, "scaling.folding.max_runtime_hours", "216"),
        ({"scaling": {"design": {"max_parallel_jobs": 0}}}, "scaling.design.max_parallel_jobs", "1"),
        ({"sharding": {"max_shards": 1001}}, "sharding.max_shards", "1000"),
        ({"sharding": {"target_hours": 0}}, "sharding.target_hours", "greater than 0"),
        ({"sharding": {"target_hours": "fast"}}, "sharding.target_hours", "or 'auto'"),
        ({"sharding": {"max_job_usd": 0}}, "sharding.max_job_usd", "greater than 0"),
        ({"notifications": {"sns_topic_arn": "arn:aws:sqs:x"}}, "notifications.sns_topic_arn", "invalid SNS"),
        ({"schedule": "61 * * * *"}, "schedule", "minute field"),
        ({"schedule": "* * *"}, "schedule", "5 fields"),
        ({"schedule": "@sometimes"}, "schedule", "unknown schedule preset"),
        ({"retries": -1}, "retries", "greater than or equal to 0"),
        ({"colour": "blue"}, "colour", "unknown setting"),
        ({"design": {"num_design": 3}}, "design.num_design", "unknown setting"),
    ],
)
def test_each_rule_names_the_setting(write_campaign, extra, path, fragment):
    issues = issues_of(write_campaign(extra))
    assert path in issues, issues
    assert fragment in issues[path]


def test_all_issues_of_a_file_are_reported_together(write_campaign):
    path = write_campaign({"name": "x y", "aws": {"bucket": "B"}, "retries": 99})
    with pytest.raises(CampaignError) as info:
        load_campaign(path, {})
    assert {i.path for i in info.value.issues} == {"name", "aws.bucket", "retries"}
    text = str(info.value)
    assert text.count(str(path)) == 3
    assert f"{path}: aws.bucket: invalid S3 bucket name" in text


@pytest.mark.parametrize("where", [(), ("scaling", "folding"), ("aws",)])
def test_use_spot_is_rejected_anywhere_with_the_reason(write_campaign, where):
    extra: dict = {"use_spot": True}
    for key in reversed(where):
        extra = {key: extra}
    issues = issues_of(write_campaign(extra))
    key = ".".join((*where, "use_spot"))
    assert "no managed spot" in issues[key]


@pytest.mark.parametrize(
    "schedule", [None, "@daily", "@once", "0 3 * * *", "*/15 0-6 1,15 jan-jun mon-fri", "0 0 * * 7"]
)
def test_accepted_schedules(schedule):
    assert validate_schedule(schedule) == schedule


def test_substitution_defaults_and_escape():
    assert substitute("${A}-${B:dflt}-$$x", {"A": "1"}) == ("1-dflt-$x", [])
    assert substitute("${A:x:y}", {}) == ("x:y", [])
    assert substitute("${NOPE}", {}) == ("${NOPE}", ["NOPE"])


def test_env_substitution_fills_typed_fields(write_campaign):
    path = write_campaign(
        text=yaml.safe_dump(BASE_CAMPAIGN)
        .replace("num_designs: 20", "num_designs: ${N:30}")
        .replace("my-bucket", "${BUCKET}")
    )
    campaign = load_campaign(path, {"BUCKET": "from-env"})
    assert campaign.aws.bucket == "from-env"
    assert campaign.design.num_designs == 30
    assert load_campaign(path, {"BUCKET": "b-2", "N": "40"}).design.num_designs == 40


def test_missing_variable_names_it_and_the_setting(write_campaign):
    path = write_campaign({"aws": {"bucket": "${BOLTZGEN_TEST_BUCKET}"}})
    issues = issues_of(path)
    assert issues == {"aws.bucket": "environment variable BOLTZGEN_TEST_BUCKET is not set and has no default"}


def test_dotenv_beside_campaign_and_at_project_root(tmp_path, write_campaign):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "specs").mkdir()
    (tmp_path / ".env").write_text("BUCKET=root-bucket\nROLE=arn:aws:iam::123456789012:role/root\n")
    (tmp_path / "campaigns" / ".env").write_text("# comment\nexport BUCKET='beside-bucket'\n")
    data = yaml.safe_dump(
        {**BASE_CAMPAIGN, "aws": {**BASE_CAMPAIGN["aws"], "bucket": "${BUCKET}", "role_arn": "${ROLE}"}}
    )
    path = tmp_path / "campaigns" / "c.yaml"
    path.write_text(data)
    campaign = load_campaign(path, {})
    assert campaign.aws.bucket == "beside-bucket"
    assert campaign.aws.role_arn.endswith("role/root")
    # The real environment wins over both files.
    assert load_campaign(path, {"BUCKET": "real-env"}).aws.bucket == "real-env"


def test_invalid_yaml_and_non_mapping(write_campaign):
    issues = issues_of(write_campaign(text="name: [unclosed\n"))
    assert "invalid YAML" in issues[""]
    assert "line" in issues[""]
    assert "YAML mapping" in issues_of(write_campaign(text="- a\n- b\n"))[""]
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaign(write_campaign().parent / "absent.yaml")


def test_with_overrides_revalidates_and_names_the_key(write_campaign):
    campaign = load_campaign(write_campaign(), {})
    changed = campaign.with_overrides({"design.num_designs": "50", "scaling.folding.max_parallel_jobs": 3})
    assert changed.design.num_designs == 50
    assert changed.scaling.folding.max_parallel_jobs == 3
    assert changed.source_path == campaign.source_path
    assert campaign.design.num_designs == 20  # the original is untouched
    for overrides, key, fragment in [
        ({"design.nope": 1}, "design.nope", "unknown setting"),
        ({"design.num_designs.x": 1}, "design.num_designs.x", "unknown setting"),
        ({"design.num_designs": "many"}, "design.num_designs", "integer"),
        ({"aws.bucket": "NO"}, "aws.bucket", "invalid S3 bucket name"),
    ]:
        with pytest.raises(CampaignError) as info:
            campaign.with_overrides(overrides)
        assert info.value.issues[0].path == key
        assert fragment in info.value.issues[0].message


def test_campaign_files_lists_yaml_sorted(tmp_path):
    for name in ("b.yaml", "a.yml", ".hidden.yaml", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in campaign_files(tmp_path)] == ["a.yml", "b.yaml"]
    assert campaign_files(tmp_path / "absent") == []


def test_packaged_campaigns_are_valid():
    files = campaign_files(PROJECT / "include" / "configs" / "campaigns")
    assert {p.stem for p in files} >= {"demo"}
    for path in files:
        campaign = load_campaign(path, {})
        assert campaign.dag_id == f"boltzgen_{path.stem}"
    demo = load_campaign(PROJECT / "include/configs/campaigns/demo.yaml", {"BOLTZGEN_BUCKET": "other-bucket"})
    assert demo.aws.bucket == "other-bucket"


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["${X}", "${Y:1}", "use_spot", "s3://", "arn:aws:iam::123456789012:role/x"]),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "name",
            "aws",
            "design",
            "scaling",
            "sharding",
            "bucket",
            "specs",
            "num_designs",
            "use_spot",
            "preset",
            "folding",
            "schedule",
            "tags",
            "step_config",
        ]
    ),
    st.text(max_size=8),
    st.integers(),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents)
def test_fuzz_parsed_documents_only_raise_campaign_error(document, tmp_path):
    try:
        campaign = parse_campaign(document, "fuzz.yaml", {}, source=tmp_path / "fuzz.yaml")
    except CampaignError as err:
        assert err.issues
        assert all(i.file == "fuzz.yaml" for i in err.issues)
    else:
        assert isinstance(campaign, Campaign)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_raw_text_only_raises_campaign_error(text, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_campaign(path, {})
    except CampaignError as err:
        assert err.issues

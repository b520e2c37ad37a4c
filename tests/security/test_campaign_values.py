"""Campaign values that reach AWS: a trailing newline (which ``$`` in a regex lets through) is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from boltzgen_airflow.campaign.loading import parse_campaign
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.storage.layout import Layout

BASE: dict[str, Any] = {
    "name": "sec",
    "aws": {
        "bucket": "my-bucket",
        "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
        "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
    },
    "design": {"specs": "specs", "num_designs": 20, "budget": 5},
}


def campaign(tmp_path: Path, section: str, key: str, value: Any) -> dict[str, Any]:
    (tmp_path / "specs").mkdir(exist_ok=True)
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    data[section][key] = value
    return data


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("aws", "bucket", "my-bucket\n"),
        ("aws", "prefix", "boltzgen\n"),
        ("aws", "role_arn", "arn:aws:iam::123456789012:role/boltzgen\n"),
        ("aws", "region", "us-east-1\n"),
        ("aws", "subnets", ["subnet-0123456789abcdef0\n"]),
        ("design", "additional_filters", ["design_ptm>0.7\n"]),
        ("design", "size_buckets", ["50-100:5\n"]),
        ("design", "metrics_override", {"design_ptm\n": 1.0}),
        ("design", "step_config", {"design": {"steps\n": 1}}),
    ],
)
def test_a_trailing_newline_is_rejected_naming_the_field(
    tmp_path: Path, section: str, key: str, value: Any
) -> None:
    data = campaign(tmp_path, section, key, value)
    with pytest.raises(CampaignError) as err:
        parse_campaign(data, "c.yaml", {}, source=tmp_path / "c.yaml")
    assert [i.path for i in err.value.issues] == [f"{section}.{key}"], str(err.value)
    assert "c.yaml" in str(err.value)


def test_layout_refuses_a_prefix_with_a_newline() -> None:
    with pytest.raises(ValueError, match="invalid S3 prefix"):
        Layout("my-bucket", "boltzgen\n")
    with pytest.raises(ValueError, match="bucket"):
        Layout("my-bucket\n", "boltzgen")

"""A minimal valid campaign and a deep merge to vary it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boltzgen_airflow.campaign.loading import parse_campaign
from boltzgen_airflow.campaign.model import Campaign

BASE_CAMPAIGN: dict[str, Any] = {
    "name": "t1",
    "aws": {
        "bucket": "my-bucket",
        "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
        "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
    },
    "design": {"specs": "specs", "num_designs": 20, "budget": 5},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``extra`` merged in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def campaign_in(folder: Path, **extra: Any) -> Campaign:
    """The base campaign with ``extra`` merged in, as if read from ``folder/c.yaml`` (with ``specs/``)."""
    (folder / "specs").mkdir(exist_ok=True)
    return parse_campaign(merge(BASE_CAMPAIGN, extra), "c.yaml", {}, source=folder / "c.yaml")

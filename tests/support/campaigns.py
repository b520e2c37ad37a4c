"""A minimal valid campaign and a deep merge to vary it."""

from __future__ import annotations

from typing import Any

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

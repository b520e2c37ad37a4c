"""Fixtures of the foundation tests: campaign files written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from foundation_helpers import BASE_CAMPAIGN, merge


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

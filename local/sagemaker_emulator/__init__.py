"""A local stand-in for Amazon SageMaker Processing that really runs jobs, and the stack around it."""

from __future__ import annotations

ACCOUNT_ID = "123456789012"
"""The account every emulated ARN belongs to (moto's default account)."""

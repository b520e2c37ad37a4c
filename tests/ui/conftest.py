"""Fixtures of the campaign view tests (see view_run.py)."""

from view_run import moto_s3, published_run

__all__ = ["moto_s3", "published_run"]

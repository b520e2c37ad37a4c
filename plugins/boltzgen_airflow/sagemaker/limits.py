"""SageMaker Processing's limits, as the campaign model, the run params and the job requests check them."""

from __future__ import annotations

import re

MAX_RUNTIME_SECONDS = 777_600
"""The longest StoppingCondition SageMaker accepts (9 days)."""
MAX_INPUTS = 10
MAX_ENVIRONMENT_ENTRIES = 100
MAX_ENVIRONMENT_VALUE = 256
JOB_NAME_MAX = 63
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}\Z")
INSTANCE_TYPE_PATTERN = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"
"""A SageMaker instance type name (``ml.<family>.<size>``), as JSON Schema and Python both read it."""
INSTANCE_TYPE_RE = re.compile(INSTANCE_TYPE_PATTERN)

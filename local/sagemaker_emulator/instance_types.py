"""Processing instance types: which ones SageMaker accepts and how many GPUs each has.

The emulator keeps its own small table rather than importing the project's catalog: ``local/``
and ``plugins/`` only meet at the AWS API.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

# GPUs per instance for the GPU families SageMaker Processing offers; every other type has none.
_GPUS_BY_SIZE: dict[str, dict[str, int]] = {
    "g4dn": {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4},
    "g5": {
        "xlarge": 1,
        "2xlarge": 1,
        "4xlarge": 1,
        "8xlarge": 1,
        "16xlarge": 1,
        "12xlarge": 4,
        "24xlarge": 4,
        "48xlarge": 8,
    },
    "g6": {
        "xlarge": 1,
        "2xlarge": 1,
        "4xlarge": 1,
        "8xlarge": 1,
        "16xlarge": 1,
        "12xlarge": 4,
        "24xlarge": 4,
        "48xlarge": 8,
    },
    "g6e": {
        "xlarge": 1,
        "2xlarge": 1,
        "4xlarge": 1,
        "8xlarge": 1,
        "16xlarge": 1,
        "12xlarge": 4,
        "24xlarge": 4,
        "48xlarge": 8,
    },
    "p2": {"xlarge": 1, "8xlarge": 8, "16xlarge": 16},
    "p3": {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8},
    "p5": {"4xlarge": 1},
    "g7e": {"2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "12xlarge": 2, "24xlarge": 4, "48xlarge": 8},
}

# Used only when botocore's service model cannot be read.
_FALLBACK_TYPES = frozenset(
    f"ml.{family}.{size}" for family, sizes in _GPUS_BY_SIZE.items() for size in sizes
) | frozenset(
    f"ml.{family}.{size}"
    for family in ("t3", "m5", "c5", "r5")
    for size in ("large", "xlarge", "2xlarge", "4xlarge")
)


def gpu_count(instance_type: str) -> int:
    """
    Return the number of GPUs of one instance of a processing instance type.

    :param instance_type: e.g. ``ml.g5.12xlarge``.
    """
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml":
        return 0
    return _GPUS_BY_SIZE.get(parts[1], {}).get(parts[2], 0)


@functools.cache
def valid_instance_types() -> frozenset[str]:
    """The instance types CreateProcessingJob accepts, read from botocore's SageMaker model."""
    try:
        import botocore

        model_dir = Path(botocore.__file__).parent / "data" / "sagemaker"
        newest = sorted(p for p in model_dir.iterdir() if p.is_dir())[-1]
        with gzip.open(newest / "service-2.json.gz", "rt", encoding="utf-8") as fh:
            model = json.load(fh)
        return frozenset(model["shapes"]["ProcessingInstanceType"]["enum"])
    except (ImportError, OSError, KeyError, IndexError, ValueError):
        return _FALLBACK_TYPES

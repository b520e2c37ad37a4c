"""BoltzGen design campaigns as Apache Airflow DAGs on Amazon SageMaker Processing."""

from __future__ import annotations

__version__ = "0.1.0"

"""The Airflow plugin: registers the stage operator's extra links so the UI can show them."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from boltzgen_airflow.sagemaker.links import ProcessingJobLogsLink, SageMakerProcessingJobLink


class BoltzGenPlugin(AirflowPlugin):
    """Extra links of the BoltzGen stage tasks (SageMaker console page, CloudWatch logs)."""

    name = "boltzgen"
    operator_extra_links = [SageMakerProcessingJobLink(), ProcessingJobLogsLink()]

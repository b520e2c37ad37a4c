"""The Airflow plugin: the stage tasks' extra links and the campaign view in Airflow's UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from boltzgen_airflow.sagemaker.links import (
    CampaignViewLink,
    ProcessingJobLogsLink,
    SageMakerProcessingJobLink,
)
from boltzgen_airflow.ui.app import LazyApp
from boltzgen_airflow.ui.paths import URL_PREFIX


class BoltzGenPlugin(AirflowPlugin):
    """
    Extra links of the BoltzGen tasks (SageMaker job, its logs, the run's results) and the
    campaign view: a FastAPI app under ``/boltzgen`` shown as "BoltzGen" in the UI's navigation.
    """

    name = "boltzgen"
    operator_extra_links = [SageMakerProcessingJobLink(), ProcessingJobLogsLink(), CampaignViewLink()]
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "BoltzGen campaigns"}]
    # With url_route the UI shows the view inside its own frame, under /plugin/boltzgen.
    external_views = [
        {
            "name": "BoltzGen",
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "boltzgen",
            "destination": "nav",
            "category": None,
        }
    ]

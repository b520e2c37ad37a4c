"""Where the campaign view lives under Airflow's base URL (kept light: the DAG file imports it)."""

from __future__ import annotations

from urllib.parse import quote

URL_PREFIX = "/boltzgen"


def view_path(dag_id: str, run_id: str | None = None) -> str:
    """
    The path of the view of a campaign (or one of its runs), relative to Airflow's base URL.

    :param dag_id: the campaign's DAG id.
    :param run_id: a run of it.
    """
    if run_id is None:
        return f"{URL_PREFIX}/campaigns/{quote(dag_id, safe='')}"
    return f"{URL_PREFIX}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"

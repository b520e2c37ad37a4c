"""
One DAG per BoltzGen campaign file (``include/configs/campaigns/*.yaml`` or ``$BOLTZGEN_CAMPAIGNS_DIR``).

Parsing reads the campaign files only; an invalid file shows up as a DAG whose documentation and
single task carry the error, without hiding the other campaigns.
"""

from __future__ import annotations

from boltzgen_airflow.dag.builder import build_dags

for _dag_id, _dag in build_dags().items():
    globals()[_dag_id] = _dag

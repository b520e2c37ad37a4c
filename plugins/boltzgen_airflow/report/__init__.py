"""The campaign report: view model, charts, rendering (pure Python, no Airflow)."""

"""The campaign view inside Airflow's UI: a FastAPI app, its pages and the bundled 3D viewer."""

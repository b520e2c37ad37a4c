"""``make demo`` and ``make up``: the example campaign end to end, and a local Airflow, on one machine."""

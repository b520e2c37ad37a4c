"""Campaign -> DAG: the builder, the task bodies, pools, the DAG docs."""

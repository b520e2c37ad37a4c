"""Which instance type a processing job ran on, from SageMaker's description of it."""

from __future__ import annotations

from boltzgen_airflow.sagemaker.requests import ran_on


def test_the_selected_type_of_instance_preferences_wins_over_the_requested_one() -> None:
    preferences = [{"InstanceType": "ml.g5.xlarge"}, {"InstanceType": "ml.g6.xlarge"}]
    cluster = {"InstancePreferences": preferences, "SelectedInstanceType": "ml.g6.xlarge"}
    assert ran_on({"ProcessingResources": {"ClusterConfig": cluster}}) == "ml.g6.xlarge"
    plain = {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}
    assert ran_on({"ProcessingResources": {"ClusterConfig": plain}}) == "ml.g5.xlarge"
    # Still waiting for capacity: nothing selected yet, and no type of its own.
    assert ran_on({"ProcessingResources": {"ClusterConfig": {"InstancePreferences": preferences}}}) is None

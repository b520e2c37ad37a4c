"""Every shipped campaign parses into its DAG with no network; a broken campaign is visible alone."""

from __future__ import annotations

import copy
import itertools
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from support.dag_campaigns import DESIGNS_PER_SPEC, PROJECT, write_campaign

from boltzgen_airflow.campaign.loading import campaign_files, load_campaign
from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.stages import STAGES

pytestmark = pytest.mark.airflow

SHIPPED = PROJECT / "include" / "configs" / "campaigns"


def dagbag(monkeypatch: pytest.MonkeyPatch, campaigns: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("BOLTZGEN_CAMPAIGNS_DIR", str(campaigns))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access while parsing: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_every_shipped_campaign_is_a_dag(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = dagbag(monkeypatch, SHIPPED)
    assert bag.import_errors == {}
    for path in campaign_files(SHIPPED):
        campaign = load_campaign(path)
        dag = bag.dags[campaign.dag_id]
        assert "invalid" not in dag.tags
        assert dag.owner == campaign.owner
        assert dag.max_active_runs == campaign.max_active_runs
        assert {"plan", "filter_specs", "filtering", "report", "shard.design"} <= set(dag.task_dict)
        assert dag.task_dict["shard.design"].retries == campaign.retries
        # One task per shard stage: job, verification and commit.
        assert not [t for t in dag.task_dict if t.startswith("shard.check")]
        assert dag.task_dict["shard.design"].retry_delay.total_seconds() == campaign.retry_delay_seconds
        assert "Re-running failed shards" in (dag.doc_md or "")
        assert dag.task_dict["shard.design"].pool.startswith("sagemaker_ml_")
        assert set(dag.params) >= {"num_designs", "budget", "protocol", "specs", "stages", "dry_run", "force"}


def test_a_broken_campaign_is_visible_and_the_others_unaffected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_campaign(tmp_path, "good", "bg-good")
    broken = tmp_path / "broken.yaml"
    text = (tmp_path / "good.yaml").read_text().replace("name: good", "name: broken")
    broken.write_text(text.replace(f"num_designs: {DESIGNS_PER_SPEC}", "num_designs: -4"))
    shutil.copy(tmp_path / "good.yaml", tmp_path / "not_yaml.txt")
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"boltzgen_good", "boltzgen_broken"}
    dag = bag.dags["boltzgen_broken"]
    assert "invalid" in dag.tags
    assert str(broken) in dag.doc_md and "design.num_designs" in dag.doc_md
    (task,) = dag.tasks
    with pytest.raises(Exception, match=r"design\.num_designs"):
        task.python_callable()
    assert "invalid" not in bag.dags["boltzgen_good"].tags


def campaign(tmp_path: Path) -> Any:
    return load_campaign(write_campaign(tmp_path, "p", "bg-p"))


def test_params_apply_to_the_campaign(tmp_path: Path) -> None:
    params = {
        "num_designs": 20,
        "budget": 4,
        "stages": ["analysis", "folding"],
        "design_instance_type": "ml.g5.2xlarge",
    }
    options, updated = validate_run_params(campaign(tmp_path), params, params)
    assert updated.design.num_designs == 20 and updated.design.budget == 4
    assert options.stages == ("folding", "analysis")
    assert updated.scaling.design.instance_type == "ml.g5.2xlarge"
    for hours, expected in (("auto", "auto"), (3, 3.0)):
        options, updated = validate_run_params(
            campaign(tmp_path), {"target_hours": hours}, {"target_hours": hours}
        )
        assert options.target_hours == expected == updated.sharding.target_hours


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"num_design": 5}, r"params\.num_design: unknown param 'num_design'"),
        ({"budget": 50}, r"params\.budget: budget \(50\) cannot exceed num_designs"),
        ({"num_designs": "many"}, r"params\.num_designs: expected int"),
        ({"stages": ["design", "blend"]}, r"params\.stages: unknown or no stages \['blend'\]"),
        ({"protocol": "dna"}, r"params\.protocol: unknown protocol 'dna'"),
        ({"deadline_hours": -2}, r"params\.deadline_hours: must be above 0 hours"),
        ({"deadline_hours": "2d"}, r"params\.deadline_hours: expected"),
        ({"target_hours": "soon"}, r"params\.target_hours: expected hours \(a number\) or 'auto'"),
        (
            {"design_instance_type": "ml.r5.2xlarge"},
            r"params\.design_instance_type: ml\.r5\.2xlarge has no GPU; design needs one",
        ),
        ({"folding_instance_type": "ml.g5.huge"}, r"params\.folding_instance_type: .*ml\.g5\.huge"),
    ],
)
def test_bad_params_fail_clearly(tmp_path: Path, conf: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message):
        _, updated = validate_run_params(campaign(tmp_path), conf, conf)
        from boltzgen_airflow.campaign.catalog import resolve_resources

        resolve_resources(updated, 10)


def test_every_bad_param_is_reported_at_once(tmp_path: Path) -> None:
    conf = {
        "num_designs": 2,
        "budget": 5,
        "design_instance_type": "ml.r5.2xlarge",
        "protocol": "dna",
        "dry_run": "yes",
        "num_design": 1,
    }
    with pytest.raises(CampaignError) as caught:
        validate_run_params(campaign(tmp_path), conf, conf)
    paths = sorted(issue.path for issue in caught.value.issues)
    assert paths == [
        "params.budget",
        "params.design_instance_type",
        "params.dry_run",
        "params.num_design",
        "params.protocol",
    ], caught.value
    assert all(issue.file.endswith("p.yaml") and issue.severity == "error" for issue in caught.value.issues)
    assert "budget (5) cannot exceed num_designs (2)" in str(caught.value)


def test_the_trigger_form_offers_stages_and_instance_types_and_marks_only_what_is_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    write_campaign(tmp_path, "form", "bg-form")
    dag = dagbag(monkeypatch, tmp_path).dags["boltzgen_form"]
    # What the API server builds the form from: the params of the serialized DAG.
    params = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).params
    schema = {name: params.get_param(name).schema for name in params}
    default = {name: params.get_param(name).value for name in params}
    # Airflow 3.3's form: an array with "examples" is a multi-select; a type without "null" is required.
    assert schema["stages"]["type"] == "array" and schema["stages"]["examples"] == list(STAGES)
    assert schema["stages"]["values_display"]["inverse_folding"] == "Inverse folding"
    required = {name for name, s in schema.items() if "null" not in s["type"]}
    assert required == {
        "num_designs",
        "budget",
        "protocol",
        "target_hours",
        "stages",
        "dry_run",
        "force",
        "max_rounds",
        "round",
    }
    # The instance types show the campaign's (preset small) and offer the types that can run the stage.
    assert default["design_instance_type"] == "ml.g5.xlarge"
    assert default["analysis_instance_type"] == "ml.r5.2xlarge"
    assert "ml.g5.2xlarge" in schema["folding_instance_type"]["examples"]
    assert "ml.r5.2xlarge" not in schema["folding_instance_type"]["examples"]
    # Left as shown, they override nothing: the campaign's preset decides at plan time.
    form = {**default, "specs": None}
    options, _ = validate_run_params(campaign(tmp_path), form, form)
    assert options.instance_types == {} and options.specs == ()


def test_mapped_tasks_are_named_by_shard_and_spec_before_and_after_they_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    write_campaign(tmp_path, "names", "bg-names")
    dag = dagbag(monkeypatch, tmp_path).dags["boltzgen_names"]
    env = dag.get_template_env()

    def label(task_id: str, ref: dict[str, str], **context: Any) -> str:
        template = env.from_string(dag.task_dict[task_id].map_index_template)
        return template.render(task=SimpleNamespace(shard=ref), **context)

    ref = {"shard": "f0001", "bucket": "b", "descriptor": "k"}
    # Before execute (Airflow's first rendering): the reference names the task, so one that fails
    # before it reads its descriptor is named too.
    assert label("filtering", {**ref, "label": "hard/6m1u.yaml"}) == "hard/6m1u.yaml"
    assert label("shard.design", {**ref, "shard": "s0004"}) == "s0004"
    # After execute, failed or not: what the operator read.
    assert label("filtering", ref, shard_id="hard/6m1u.yaml") == "hard/6m1u.yaml"


def test_the_dag_rejects_a_param_of_the_wrong_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    write_campaign(tmp_path, "typed", "bg-typed")
    dag = dagbag(monkeypatch, tmp_path).dags["boltzgen_typed"]
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="num_designs"):
        params["num_designs"] = 0
    params["target_hours"] = "auto"
    params["target_hours"] = 1.5
    with pytest.raises(ParamValidationError, match="target_hours"):
        params["target_hours"] = "soon"


@pytest.mark.parametrize("skip_inverse_folding", [False, True])
def test_a_sensor_hands_each_stage_s_commit_to_the_next_stage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, skip_inverse_folding: bool
) -> None:
    from boltzgen_airflow.campaign.catalog import resolve_resources
    from boltzgen_airflow.sagemaker.operators import QUEUE_MARGIN_SECONDS
    from boltzgen_airflow.stages import shard_stages

    path = write_campaign(tmp_path, "sensed", "bg-sensed")
    if skip_inverse_folding:
        path.write_text(
            path.read_text().replace("  budget: 2\n", "  budget: 2\n  skip_inverse_folding: true\n")
        )
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    dag = bag.dags["boltzgen_sensed"]
    campaign = load_campaign(path)
    stages = shard_stages(skip_inverse_folding)
    runtimes = resolve_resources(campaign, campaign.design.num_designs)
    sensors = {t.task_id for t in dag.tasks if t.task_type == "StageCommittedSensor"}
    # A sensor between every two consecutive stages of a shard, none after the last.
    assert sensors == {f"shard.{stage}_committed" for stage in stages[:-1]}
    for stage, following in itertools.pairwise(stages):
        sensor = dag.task_dict[f"shard.{stage}_committed"]
        assert sensor.upstream_task_ids == {"plan", f"shard.{stage}"}
        assert sensor.downstream_task_ids == {f"shard.{following}"}
        assert sensor.deferrable
        # The commit of a stage left out of the run (skipped) is still taken; a failure stops it.
        assert sensor.trigger_rule == "none_failed"
        # Waiting holds no SageMaker pool slot and is bounded by the stage's runtime, not 7 days.
        assert not sensor.pool.startswith("sagemaker_")
        assert dag.task_dict[f"shard.{stage}"].pool.startswith("sagemaker_")
        assert sensor.timeout == runtimes[stage].max_runtime_seconds + QUEUE_MARGIN_SECONDS
        assert sensor.poke_interval == 30
        # The next operator's input is the sensor's XCom.
        handed = dag.task_dict[f"shard.{following}"].upstream
        assert handed.operator is sensor and handed.key == "return_value"
    assert "filtering" in dag.task_dict[f"shard.{stages[-1]}"].downstream_task_ids
    assert dag.task_dict["shard.design"].upstream is None

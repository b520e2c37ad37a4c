from __future__ import annotations

import pytest
import yaml
from support.campaigns import campaign_in

from boltzgen_airflow.campaign.specs import SpecBundle
from boltzgen_airflow.exceptions import CampaignError
from boltzgen_airflow.planning.plan import (
    StageTimeModel,
    TimingSample,
    calibrate_time_model,
    load_time_model,
    plan_campaign,
)

campaign = campaign_in


def folding_runs(model: StageTimeModel, *, load: float, scale: float) -> list[TimingSample]:
    runs = []
    for residues, count in ((120, 10), (250, 40), (400, 25), (480, 60)):
        seconds = load + scale * count * model.seconds_per_design("folding", residues, "A10G")
        runs.append(TimingSample("folding", residues, count, seconds, "A10G"))
    return runs


def test_calibration_recovers_load_scale_and_provisioning_and_says_what_it_fitted(tmp_path):
    model = load_time_model()
    c = campaign(tmp_path)
    data = calibrate_time_model(model, folding_runs(model, load=45.0, scale=1.5), [300, 420, 500], campaign=c)
    fitted = StageTimeModel(data)
    assert fitted.load_seconds("folding") == pytest.approx(45.0, abs=0.1)
    for residues in (100, 300, 500):
        assert fitted.seconds_per_design("folding", residues, "A10G") == pytest.approx(
            1.5 * model.seconds_per_design("folding", residues, "A10G"), rel=1e-3
        )
    assert fitted.seconds_per_design("design", 300, "A10G") == model.seconds_per_design("design", 300, "A10G")
    assert fitted.provisioning_seconds == 420
    figures = fitted.figures()
    assert figures["folding"].startswith("4 processes") and figures["affinity"] != "default"
    assert figures["provisioning_seconds_per_job"] == "median of 3 jobs"
    assert figures["design"] == "default" and figures["analysis"] == "default"


def test_one_size_of_item_fits_a_scale_and_keeps_the_load(tmp_path):
    model = load_time_model()
    sample = TimingSample("design", 200, 20, 20 * 2 * model.seconds_per_design("design", 200, "A10G"), "A10G")
    fitted = StageTimeModel(calibrate_time_model(model, [sample, sample], [], campaign=campaign(tmp_path)))
    assert fitted.seconds_per_design("design", 200, "A10G") == pytest.approx(
        2 * model.seconds_per_design("design", 200, "A10G"), rel=1e-3
    )
    assert fitted.provisioning_seconds == model.provisioning_seconds


def test_a_campaign_plans_with_its_calibrated_time_model(tmp_path):
    model = load_time_model()
    base = campaign(tmp_path, design={"num_designs": 200, "budget": 1})
    data = calibrate_time_model(model, folding_runs(model, load=60.0, scale=2.0), [600], campaign=base)
    (tmp_path / "calibrated.yaml").write_text(yaml.safe_dump(data))
    tuned = campaign(
        tmp_path,
        design={"num_designs": 200, "budget": 1},
        sharding={"time_model": "calibrated.yaml", "target_hours": 2.0},
    )
    specs = [SpecBundle(spec="a.yaml", hash="0" * 64, residues=300)]
    before = plan_campaign(base.with_overrides({"sharding.target_hours": 2.0}), specs)
    after = plan_campaign(tuned, specs)
    assert after.estimate.makespan_hours > before.estimate.makespan_hours
    assert after.estimate.figures["folding"] != "default"
    assert before.estimate.figures["folding"] == "default"
    # Every folding process pays the fitted load once.
    shard = after.shards[0]
    gpus = after.resources["folding"].instance_type.gpus
    assert (
        after.stage_seconds[shard.id]["folding"]
        >= 60.0 + shard.designs / gpus * 2.0 * model.seconds_per_design("folding", 300, "A10G") * 0.99
    )
    missing = campaign(tmp_path, sharding={"time_model": "gone.yaml"})
    with pytest.raises(CampaignError, match=r"sharding\.time_model: .*gone\.yaml not found"):
        plan_campaign(missing, specs)

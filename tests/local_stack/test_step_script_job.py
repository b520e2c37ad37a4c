"""A real stage script running as a processing job on the emulator, with the simulator as BoltzGen.

Everything a production design job touches is real here except the GPU: the emulator hands the job
the simulated GPU count of its instance type, and the simulator's ``boltzgen`` is first on PATH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emulator_helpers import BUCKET, job_request, s3_input, unique, wait_terminal

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT_ROOT / "include" / "step_scripts"
LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
SPEC = """\
entities:
  - protein:
      id: B
      sequence: 12..20
  - protein:
      id: A
      sequence: MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ
"""


def _design_work(name: str, start: int, count: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "campaign": "emulated",
        "run_id": name,
        "stage": "design",
        "shard": "s0001",
        "protocol": "protein-anything",
        "items": [
            {
                "spec": "bundle1/targets/binder.yaml",
                "spec_name": "targets/binder.yaml",
                "start": start,
                "count": count,
                "width": 3,
                "residues": 76,
                "est_seconds": 30.0,
            }
        ],
        "boltzgen": {
            "diffusion_batch_size": 2,
            "inverse_fold_num_sequences": 1,
            "skip_inverse_folding": False,
            "step_config": {},
        },
        "filtering": {
            "budget": 2,
            "alpha": None,
            "filter_biased": None,
            "metrics_override": {},
            "additional_filters": [],
            "size_buckets": [],
            "refolding_rmsd_threshold": None,
        },
        "max_runtime_seconds": 300,
    }


def test_design_script_runs_as_a_processing_job(sm: Any, s3: Any, logs: Any) -> None:
    name = unique("design")
    for script in sorted(SCRIPTS.glob("*.py")):
        s3.put_object(Bucket=BUCKET, Key=f"code/{name}/{script.name}", Body=script.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="inputs/bundle1/targets/binder.yaml", Body=SPEC.encode())
    manifest = [{"prefix": f"s3://{BUCKET}/inputs/"}, "bundle1/targets/binder.yaml"]
    s3.put_object(Bucket=BUCKET, Key=f"inputs/_manifests/{name}.json", Body=json.dumps(manifest).encode())
    work = _design_work(name, start=100, count=4)
    s3.put_object(Bucket=BUCKET, Key=f"work/{name}/work.json", Body=json.dumps(work).encode())

    request = job_request(
        name,
        f"s3://{BUCKET}/code/{name}/",
        args=["--work", "/opt/ml/processing/input/work/work.json"],
        inputs=[
            s3_input("work", f"s3://{BUCKET}/work/{name}/"),
            s3_input("specs", f"s3://{BUCKET}/inputs/_manifests/{name}.json", "ManifestFile"),
        ],
        instance_type="ml.g5.2xlarge",
        max_runtime=300,
    )
    entrypoint = ["python3", "/opt/ml/processing/input/code/design.py"]
    request["AppSpecification"]["ContainerEntrypoint"] = entrypoint
    sm.create_processing_job(**request)
    desc = wait_terminal(sm, name, timeout=180)
    assert desc["ProcessingJobStatus"] == "Completed", (desc.get("FailureReason"), desc.get("ExitMessage"))

    # The manifest the check sensor verifies is in S3, with every listed file present at its size.
    prefix = f"out/{name}/"
    listing = {
        o["Key"][len(prefix) :]: o["Size"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1000).get("Contents", [])
    }
    produced = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "_manifest.json")["Body"].read())
    assert produced["stage"] == "design"
    assert produced["designs_expected"] == 4
    assert produced["designs_produced"] == 4
    assert produced["shortfall"] == 0
    # Global numbering: the item starts at design 100 of a campaign whose ids are three digits wide.
    assert sorted(produced["design_ids"]) == [f"binder_{i}" for i in range(100, 104)]
    for entry in produced["files"]:
        assert listing[entry["path"]] == entry["size"], entry["path"]

    # The job's output reached CloudWatch Logs on moto, one stream for the job.
    streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")["logStreams"]
    assert len(streams) == 1
    events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=streams[0]["logStreamName"])["events"]
    assert any("boltzgen" in e["message"].lower() for e in events)

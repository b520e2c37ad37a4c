"""Jobs really run: inputs from S3, outputs to S3, logs to CloudWatch, and every way a job ends."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from emulator_helpers import (
    BUCKET,
    QUOTA_TYPE,
    job_request,
    output_keys,
    put_script,
    s3_input,
    unique,
    wait_for,
    wait_terminal,
)

from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"

WORKER = """
import json, os, pathlib, shutil, sys
root = pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"])
out = pathlib.Path(sys.argv[2])
work = json.loads(pathlib.Path(sys.argv[1]).read_text())
(out / "nested").mkdir(parents=True)
(out / "nested" / "echo.json").write_text(json.dumps({
    "work": work,
    "args": sys.argv[1:],
    "gpus": os.environ.get("BOLTZGEN_SIM_GPUS"),
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "boltzgen": shutil.which("boltzgen"),
    "aws_key": os.environ.get("AWS_ACCESS_KEY_ID"),
    "specs": sorted(str(p.relative_to(root / "processing/input/specs"))
                    for p in (root / "processing/input/specs").rglob("*") if p.is_file()),
}))
print("designed", work["n"], "things")
(root / "output" / "message").write_text("ok " + "x" * 2000)
"""


def _put_work(s3: Any, name: str, payload: dict[str, Any]) -> str:
    s3.put_object(Bucket=BUCKET, Key=f"work/{name}/work.json", Body=json.dumps(payload).encode())
    return f"s3://{BUCKET}/work/{name}/"


def test_job_runs_end_to_end_with_manifest_input_outputs_and_logs(
    sm: Any, s3: Any, logs: Any, stack: LocalStack
) -> None:
    name = unique("e2e")
    # A ManifestFile input: files under a prefix in another bucket layout, kept at their relative paths.
    for rel in ("abc123/spec.yaml", "abc123/target/1g13.cif", "zzz999/other.yaml"):
        s3.put_object(Bucket=BUCKET, Key=f"inputs/{rel}", Body=rel.encode())
    manifest = [{"prefix": f"s3://{BUCKET}/inputs/"}, "abc123/spec.yaml", "abc123/target/1g13.cif"]
    s3.put_object(Bucket=BUCKET, Key=f"inputs/_manifests/{name}.json", Body=json.dumps(manifest).encode())
    request = job_request(
        name,
        put_script(s3, name, WORKER),
        args=["/opt/ml/processing/input/work/work.json", "/opt/ml/processing/output/result"],
        inputs=[
            s3_input("work", _put_work(s3, name, {"n": 3})),
            s3_input("specs", f"s3://{BUCKET}/inputs/_manifests/{name}.json", "ManifestFile"),
        ],
        instance_type="ml.g5.12xlarge",
    )
    sm.create_processing_job(**request)
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["ExitMessage"] == ("ok " + "x" * 2000)[:1024]

    assert output_keys(s3, name) == ["nested/echo.json"]
    echo = json.loads(s3.get_object(Bucket=BUCKET, Key=f"out/{name}/nested/echo.json")["Body"].read())
    assert echo["work"] == {"n": 3}
    assert echo["specs"] == ["abc123/spec.yaml", "abc123/target/1g13.cif"]
    # /opt/ml was rewritten to the job's workspace in arguments and environment values.
    workspace = stack.state_dir / "emulator" / "jobs" / name / "opt_ml"
    assert echo["args"] == [
        f"{workspace}/processing/input/work/work.json",
        f"{workspace}/processing/output/result",
    ]
    # ml.g5.12xlarge has 4 GPUs: the simulator is told so; the simulator's boltzgen is first on PATH.
    assert echo["gpus"] == "4"
    assert echo["cuda"] == "0,1,2,3"
    assert echo["boltzgen"] == str(stack.state_dir / "shim" / "boltzgen")
    # The emulator's own AWS credentials do not leak into the job.
    assert echo["aws_key"] is None

    streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")["logStreams"]
    assert [s["logStreamName"].startswith(f"{name}/algo-1-") for s in streams] == [True]
    events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=streams[0]["logStreamName"])["events"]
    assert "designed 3 things" in [e["message"] for e in events]
    local_log = stack.state_dir / "emulator" / "logs" / f"{name}.log"
    assert "designed 3 things" in local_log.read_text()


def test_configured_simulated_gpu_count_is_exported(sm: Any, s3: Any) -> None:
    name = unique("simgpu")
    code = put_script(
        s3,
        name,
        """
        import os, pathlib
        pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"], "processing/output/result/gpus.txt").write_text(
            os.environ["BOLTZGEN_SIM_GPUS"] + "|" + os.environ["CUDA_VISIBLE_DEVICES"])
        """,
    )
    sm.create_processing_job(**job_request(name, code, instance_type="ml.g5.2xlarge"))
    assert wait_terminal(sm, name)["ProcessingJobStatus"] == "Completed"
    assert s3.get_object(Bucket=BUCKET, Key=f"out/{name}/gpus.txt")["Body"].read() == b"2|0,1"


def test_non_zero_exit_fails_with_algorithm_error_and_uploads_nothing(sm: Any, s3: Any) -> None:
    name = unique("fail")
    code = put_script(
        s3,
        name,
        """
        import os, pathlib, sys
        root = pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"])
        (root / "processing/output/result/partial.txt").write_text("half")
        (root / "output/message").write_text("CUDA out of memory")
        sys.exit(3)
        """,
    )
    sm.create_processing_job(**job_request(name, code))
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert desc["FailureReason"].startswith("AlgorithmError:")
    assert "exit code 3" in desc["FailureReason"]
    assert desc["ExitMessage"] == "CUDA out of memory"
    assert output_keys(s3, name) == []


def test_missing_input_fails_with_client_error(sm: Any, s3: Any) -> None:
    name = unique("noinput")
    request = job_request(
        name, put_script(s3, name, "print(1)"), inputs=[s3_input("work", f"s3://{BUCKET}/nothing/here/")]
    )
    sm.create_processing_job(**request)
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert desc["FailureReason"].startswith("ClientError:")
    assert "nothing/here" in desc["FailureReason"]


COPIER = """
import os, pathlib, shutil
root = pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"])
shutil.copytree(root / "processing/input/many", root / "processing/output/result", dirs_exist_ok=True)
"""


def test_many_objects_arrive_and_leave_intact(sm: Any, s3: Any) -> None:
    # Inputs and outputs move on several threads at once: every object, at its path, with its bytes.
    name = unique("many")
    rels = [f"shard{i % 7}/design_{i}/{kind}" for i in range(60) for kind in ("metrics.csv", "model.cif")]
    for rel in rels:
        s3.put_object(Bucket=BUCKET, Key=f"many/{name}/{rel}", Body=f"{rel}\n".encode() * 50)
    manifest = [{"prefix": f"s3://{BUCKET}/many/{name}/"}, *rels]
    s3.put_object(Bucket=BUCKET, Key=f"many/{name}.json", Body=json.dumps(manifest).encode())
    request = job_request(
        name,
        put_script(s3, name, COPIER),
        inputs=[s3_input("many", f"s3://{BUCKET}/many/{name}.json", "ManifestFile")],
    )
    sm.create_processing_job(**request)
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Completed", desc.get("FailureReason")
    assert output_keys(s3, name) == sorted(rels)
    for rel in rels[::17]:
        body = s3.get_object(Bucket=BUCKET, Key=f"out/{name}/{rel}")["Body"].read()
        assert body == f"{rel}\n".encode() * 50


def test_missing_manifest_entry_fails_naming_the_input(sm: Any, s3: Any) -> None:
    name = unique("gap")
    rels = [f"part_{i}.txt" for i in range(20)]
    for rel in rels[:-1]:
        s3.put_object(Bucket=BUCKET, Key=f"gap/{name}/{rel}", Body=b"x")
    manifest = [{"prefix": f"s3://{BUCKET}/gap/{name}/"}, *rels]
    s3.put_object(Bucket=BUCKET, Key=f"gap/{name}.json", Body=json.dumps(manifest).encode())
    request = job_request(
        name,
        put_script(s3, name, "print(1)"),
        inputs=[s3_input("parts", f"s3://{BUCKET}/gap/{name}.json", "ManifestFile")],
    )
    sm.create_processing_job(**request)
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert desc["FailureReason"].startswith("ClientError: Failed to download data for input 'parts'")
    assert f"gap/{name}.json" in desc["FailureReason"]
    assert output_keys(s3, name) == []


def _pid_file(stack: LocalStack, name: str) -> Path:
    return stack.state_dir / "emulator" / "jobs" / name / "opt_ml" / "child.pid"


SLEEPER = """
import os, pathlib, subprocess, time
root = pathlib.Path(os.environ["BOLTZGEN_STEP_ROOT"])
child = subprocess.Popen(["sleep", "300"])
(root / "child.pid").write_text(str(child.pid))
(root / "processing/output/result/partial.txt").write_text("half")
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_stop_kills_the_process_tree(sm: Any, s3: Any, stack: LocalStack) -> None:
    name = unique("stop")
    sm.create_processing_job(**job_request(name, put_script(s3, name, SLEEPER)))
    pid_file = wait_for(lambda: _pid_file(stack, name).is_file() and _pid_file(stack, name), what="child pid")
    child = int(wait_for(pid_file.read_text, what="pid written"))
    sm.stop_processing_job(ProcessingJobName=name)
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] in (
        "Stopping",
        "Stopped",
    )
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Stopped"
    assert wait_for(lambda: _gone(child), what=f"child {child} to die")
    assert output_keys(s3, name) == []
    with pytest.raises(ClientError) as err:
        sm.stop_processing_job(ProcessingJobName=name)
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_max_runtime_fails_the_job(sm: Any, s3: Any, stack: LocalStack) -> None:
    name = unique("timeout")
    sm.create_processing_job(**job_request(name, put_script(s3, name, SLEEPER), max_runtime=2))
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert "MaxRuntimeInSeconds" in desc["FailureReason"]
    child = int(_pid_file(stack, name).read_text())
    assert wait_for(lambda: _gone(child), what=f"child {child} to die")


def test_instance_quota_refuses_jobs_beyond_it(sm: Any, s3: Any) -> None:
    first, second = unique("quota"), unique("quota")
    code = put_script(s3, first, "import time; time.sleep(300)")
    sm.create_processing_job(**job_request(first, code, instance_type=QUOTA_TYPE))
    with pytest.raises(ClientError) as err:
        sm.create_processing_job(**job_request(second, code, instance_type=QUOTA_TYPE))
    assert err.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    assert f"'{QUOTA_TYPE} for processing job usage' is 1 Instances" in err.value.response["Error"]["Message"]
    sm.stop_processing_job(ProcessingJobName=first)
    wait_terminal(sm, first)
    sm.create_processing_job(**job_request(second, code, instance_type=QUOTA_TYPE))
    sm.stop_processing_job(ProcessingJobName=second)
    assert wait_terminal(sm, second)["ProcessingJobStatus"] == "Stopped"


def test_instance_preferences_start_on_the_first_type_with_room(sm: Any, s3: Any) -> None:
    holder, fallback, refused = unique("prefer"), unique("prefer"), unique("prefer")
    code = put_script(s3, holder, "import time; time.sleep(300)")
    sm.create_processing_job(**job_request(holder, code, instance_type=QUOTA_TYPE))

    def preferring(name: str, *types: str) -> dict[str, Any]:
        request = job_request(name, code)
        cluster = request["ProcessingResources"]["ClusterConfig"]
        del cluster["InstanceType"]
        cluster["InstancePreferences"] = [{"InstanceType": t} for t in types]
        return request

    # The quota type is full: the job starts on the next preference, as SageMaker reports it.
    sm.create_processing_job(**preferring(fallback, QUOTA_TYPE, "ml.m5.xlarge"))
    cluster = sm.describe_processing_job(ProcessingJobName=fallback)["ProcessingResources"]["ClusterConfig"]
    assert cluster["SelectedInstanceType"] == "ml.m5.xlarge" and cluster["SelectedInstanceCount"] == 1
    assert [p["InstanceType"] for p in cluster["InstancePreferences"]] == [QUOTA_TYPE, "ml.m5.xlarge"]
    with pytest.raises(ClientError) as err:
        sm.create_processing_job(**preferring(refused, QUOTA_TYPE))
    assert err.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    both = preferring(refused, QUOTA_TYPE, "ml.m5.xlarge")
    both["ProcessingResources"]["ClusterConfig"]["InstanceType"] = QUOTA_TYPE
    with pytest.raises(ClientError, match="mutually exclusive"):
        sm.create_processing_job(**both)
    for name in (holder, fallback):
        sm.stop_processing_job(ProcessingJobName=name)
        wait_terminal(sm, name)


def test_injected_throttling_only_the_first_n_times(sm_raw: Any, sm: Any, s3: Any, stack: LocalStack) -> None:
    stack.set_faults([{"pattern": "throttled-*", "action": "throttle", "times": 1}])
    name = unique("throttled")
    request = job_request(name, put_script(s3, name, "print(1)"))
    with pytest.raises(ClientError) as err:
        sm_raw.create_processing_job(**request)  # retries disabled on this client
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    sm_raw.create_processing_job(**request)
    assert wait_terminal(sm, name)["ProcessingJobStatus"] == "Completed"
    # boto3's default retries absorb a transient throttle, as against AWS.
    stack.set_faults([{"pattern": "throttled-*", "action": "throttle", "times": 2}])
    retried = unique("throttled")
    sm.create_processing_job(**job_request(retried, put_script(s3, retried, "print(1)")))
    assert wait_terminal(sm, retried)["ProcessingJobStatus"] == "Completed"


def test_injected_quota_error_and_run_faults(sm: Any, s3: Any, stack: LocalStack) -> None:
    stack.set_faults(
        [
            {"pattern": "re:^overq-", "action": "quota"},
            {"pattern": "boom-*", "action": "fail", "exit_code": 7, "message": "injected"},
            {"pattern": "halt-*", "action": "stop", "seconds": 0.5},
            {"pattern": "slow-*", "action": "delay", "seconds": 1.5},
        ]
    )
    with pytest.raises(ClientError) as err:
        sm.create_processing_job(**job_request(unique("overq"), "s3://x/y/"))
    assert err.value.response["Error"]["Code"] == "ResourceLimitExceeded"

    boom, halt, slow = unique("boom"), unique("halt"), unique("slow")
    sm.create_processing_job(**job_request(boom, put_script(s3, boom, "print(1)")))
    sm.create_processing_job(**job_request(halt, put_script(s3, halt, SLEEPER)))
    sm.create_processing_job(**job_request(slow, put_script(s3, slow, "print(1)")))
    assert sm.describe_processing_job(ProcessingJobName=slow)["ProcessingJobStatus"] == "InProgress"
    failed = wait_terminal(sm, boom)
    assert (failed["ProcessingJobStatus"], failed["ExitMessage"]) == ("Failed", "injected")
    assert "exit code 7" in failed["FailureReason"]
    assert wait_terminal(sm, halt)["ProcessingJobStatus"] == "Stopped"
    delayed = wait_terminal(sm, slow)
    assert delayed["ProcessingJobStatus"] == "Completed"
    assert (delayed["ProcessingStartTime"] - delayed["CreationTime"]).total_seconds() >= 1.5


def test_bad_fault_rules_are_refused(stack: LocalStack) -> None:
    from sagemaker_emulator.stack import StackError

    with pytest.raises(StackError, match="'action' must be one of"):
        stack.set_faults([{"pattern": "x", "action": "explode"}])


def test_restart_keeps_jobs_and_fails_the_ones_that_were_running(sm: Any, s3: Any, stack: LocalStack) -> None:
    done, running = unique("kept"), unique("orphan")
    sm.create_processing_job(**job_request(done, put_script(s3, done, "print(1)")))
    wait_terminal(sm, done)
    sm.create_processing_job(**job_request(running, put_script(s3, running, SLEEPER)))
    pid_file = wait_for(lambda: _pid_file(stack, running).is_file() and _pid_file(stack, running), what="pid")
    child = int(wait_for(pid_file.read_text, what="pid written"))

    stack.restart_emulator()

    fresh = stack.client("sagemaker")
    assert fresh.describe_processing_job(ProcessingJobName=done)["ProcessingJobStatus"] == "Completed"
    lost = fresh.describe_processing_job(ProcessingJobName=running)
    assert lost["ProcessingJobStatus"] == "Failed"
    assert lost["FailureReason"].startswith("InternalServerError:")
    assert "restarted" in lost["FailureReason"]
    assert wait_for(lambda: _gone(child), what="the orphaned job's processes to be killed")


def test_client_with_standard_retries_reaches_stack(stack: LocalStack) -> None:
    import boto3

    client = boto3.client(
        "sagemaker",
        endpoint_url=stack.emulator_url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard"}),
    )
    assert "ProcessingJobSummaries" in client.list_processing_jobs(MaxResults=1)

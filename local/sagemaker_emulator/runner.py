"""Running a processing job for real: S3 inputs, the container command as a process group, S3 outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sagemaker_emulator.config import EmulatorConfig
from sagemaker_emulator.faults import RUN_ACTIONS, FaultBook, FaultRule
from sagemaker_emulator.gpus import GpuPool
from sagemaker_emulator.instance_types import gpu_count
from sagemaker_emulator.joblog import JobLog
from sagemaker_emulator.store import ACTIVE_STATUSES, Job, JobStore
from sagemaker_emulator.workspace import inside, local_path, relative_key, rewrite, split_s3_uri

log = logging.getLogger(__name__)

EXIT_MESSAGE_BYTES = 1024
_POLL_SECONDS = 0.2

# Host settings a job inherits: where model weights are cached, and whether to stay offline.
HOST_CACHE_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")


SIM_KNOB_PREFIX, SIM_GPUS = "BOLTZGEN_SIM_", "BOLTZGEN_SIM_GPUS"
#: The step scripts of the stages SageMaker runs on CPU instances: the mixed engine's real stages.
CPU_STEP_SCRIPTS = frozenset({"analysis.py", "filtering.py"})


def runs_cpu_stage(job: Job) -> bool:
    """
    Whether the job runs a CPU stage's step script (``.../code/analysis.py``, ``.../code/filtering.py``).

    :param job: the job.
    """
    entrypoint = job.request.get("AppSpecification", {}).get("ContainerEntrypoint") or []
    return any(Path(word).name in CPU_STEP_SCRIPTS for word in entrypoint)


def jobs_hub_cache(state_dir: Path) -> Path:
    """
    The Hugging Face hub cache every job uses: the host's (HF_HUB_CACHE, HF_HOME/hub) or the emulator's own.

    :param state_dir: the emulator's state directory.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return state_dir / "hf-cache"


# Objects one job moves at once. SageMaker fetches inputs and uploads outputs in parallel; one at a
# time, a filtering job's input (thousands of small analysis files) took minutes to fetch.
TRANSFER_THREADS = 8
# Above this, an output goes through the multipart transfer manager instead of one PutObject.
_SINGLE_PUT_BYTES = 64 * 1024 * 1024


class JobStopped(Exception):
    """The job was stopped before its container finished."""


class JobFailed(Exception):
    """The job failed; the message is its FailureReason."""


@dataclass
class _Running:
    job: Job
    stop: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None


def kill_process_group(pgid: int, grace: float) -> None:
    """
    SIGTERM a process group, then SIGKILL whatever is left after ``grace`` seconds.

    :param pgid: the process group (the leader's pid).
    :param grace: seconds to wait between the two signals.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class JobRunner:
    """
    Runs each job in a thread of its own and keeps the job table up to date.

    :param config: the emulator's settings.
    :param store: the job table.
    :param faults: the fault rules.
    """

    def __init__(self, config: EmulatorConfig, store: JobStore, faults: FaultBook) -> None:
        self.config = config
        self.store = store
        self.faults = faults
        gpus = config.gpus if config.gpus is not None else 0
        self.gpu_pool = GpuPool(gpus)
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        session = boto3.session.Session(region_name=config.region)
        # Several jobs transfer at once, each with TRANSFER_THREADS workers on this one client.
        self._s3 = session.client(
            "s3", endpoint_url=config.s3_endpoint, config=Config(max_pool_connections=4 * TRANSFER_THREADS)
        )
        self._logs = (
            session.client("logs", endpoint_url=config.logs_endpoint) if config.logs_endpoint else None
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """:param job: a job just recorded as InProgress."""
        running = _Running(job)
        running.thread = threading.Thread(
            target=self._run, args=(running,), name=f"job-{job.name}", daemon=True
        )
        with self._lock:
            self._running[job.name] = running
        running.thread.start()

    def request_stop(self, name: str) -> None:
        """
        Ask a running job to stop; the job's thread kills the process tree and records Stopped.

        :param name: the job name.
        """
        with self._lock:
            running = self._running.get(name)
        if running is None:
            self.store.transition(name, ("Stopping",), status="Stopped", end_time=time.time())
            return
        running.stop.set()

    def shutdown(self, reason: str) -> None:
        """
        Kill every running job and record it Failed with ``reason`` (the emulator is going away).

        :param reason: the FailureReason to record.
        """
        with self._lock:
            running = list(self._running.values())
        for item in running:
            self.store.transition(
                item.job.name, ACTIVE_STATUSES, status="Failed", failure_reason=reason, end_time=time.time()
            )
            item.stop.set()
            if item.proc is not None:
                kill_process_group(item.proc.pid, grace=1.0)
        for item in running:
            if item.thread is not None:
                item.thread.join(timeout=5)

    def wait_idle(self, timeout: float) -> bool:
        """:param timeout: seconds to wait for every job thread to finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return True
            time.sleep(0.05)
        return False

    # -- one job ---------------------------------------------------------------------------------

    def _job_dir(self, name: str) -> Path:
        return self.config.state_dir / "jobs" / name

    def _run(self, running: _Running) -> None:
        job = running.job
        root = self._job_dir(job.name) / "opt_ml"
        joblog: JobLog | None = None
        devices: list[int] = []
        try:
            joblog = JobLog(self.config.state_dir / "logs" / f"{job.name}.log", job.name, self._logs)
            self.store.update(job.name, workspace=str(root))
            faults = self.faults.take(job.name, RUN_ACTIONS)
            for rule in faults:
                if rule.action == "delay" and running.stop.wait(rule.seconds):
                    raise JobStopped
            needed = gpu_count(job.instance_type)
            if self.gpu_pool.total and needed:
                acquired = self.gpu_pool.acquire(needed, running.stop)
                if acquired is None:
                    raise JobStopped
                devices = acquired
            self._prepare(job, root)
            self._download_inputs(job, root, running.stop)
            fail = next((r for r in faults if r.action == "fail"), None)
            stop = next((r for r in faults if r.action == "stop"), None)
            if fail is not None:
                self._injected_failure(job, root, fail, running.stop, joblog)
            if stop is not None:
                threading.Timer(stop.seconds, self._fault_stop, args=(job.name,)).start()
            exit_code = self._execute(running, root, devices, joblog)
            if exit_code != 0:
                raise JobFailed(f"AlgorithmError: See job logs for more information (exit code {exit_code})")
            if running.stop.is_set():
                raise JobStopped
            self._upload_outputs(job, root, running.stop)
            self._finish(job.name, root, "Completed", joblog=joblog)
        except JobStopped:
            self._finish(job.name, root, "Stopped", joblog=joblog)
        except JobFailed as exc:
            self._finish(job.name, root, "Failed", str(exc), joblog=joblog)
        except Exception as exc:
            log.exception("job %s failed inside the emulator", job.name)
            reason = f"InternalServerError: {type(exc).__name__}: {exc}"[:1024]
            self._finish(job.name, root, "Failed", reason, joblog=joblog)
        finally:
            if devices:
                self.gpu_pool.release(devices)
            if joblog is not None:
                joblog.close()
            with self._lock:
                self._running.pop(job.name, None)

    def _finish(
        self, name: str, root: Path, status: str, reason: str | None = None, joblog: JobLog | None = None
    ) -> None:
        if joblog is not None:
            # A client that sees the job ended reads its log next: every line must be there.
            joblog.flush()
        fields: dict[str, Any] = {
            "status": status,
            "end_time": time.time(),
            "exit_message": _exit_message(root),
        }
        if reason is not None:
            fields["failure_reason"] = reason[:1024]
        # A job already marked Failed by shutdown() keeps that verdict.
        self.store.transition(name, ACTIVE_STATUSES, **fields)

    def _fault_stop(self, name: str) -> None:
        if self.store.transition(name, ("InProgress",), status="Stopping"):
            self.request_stop(name)

    def _injected_failure(
        self, job: Job, root: Path, rule: FaultRule, stop: threading.Event, joblog: JobLog
    ) -> None:
        if stop.wait(rule.seconds):
            raise JobStopped
        message = rule.message or f"Injected failure for {job.name}"
        # As a failing container does: its last words in the log, its reason in the exit message.
        joblog.write(f"injected failure, exit code {rule.exit_code}: {message}")
        (root / "output").mkdir(parents=True, exist_ok=True)
        (root / "output" / "message").write_text(message, encoding="utf-8")
        raise JobFailed(f"AlgorithmError: See job logs for more information (exit code {rule.exit_code})")

    def _prepare(self, job: Job, root: Path) -> None:
        for sub in ("processing/input", "processing/output", "output", "config"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root.parent / "home").mkdir(exist_ok=True)
        (root.parent / "tmp").mkdir(exist_ok=True)
        for output in job.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            local_path(output["S3Output"]["LocalPath"], root).mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in job.request.items() if k != "Tags"}
        (root / "config" / "processingjobconfig.json").write_text(
            json.dumps(config, indent=2), encoding="utf-8"
        )
        resource = {"current_host": "algo-1", "hosts": ["algo-1"]}
        (root / "config" / "resourceconfig.json").write_text(json.dumps(resource), encoding="utf-8")

    # -- S3 --------------------------------------------------------------------------------------

    def _download_inputs(self, job: Job, root: Path, stop: threading.Event) -> None:
        for item in job.request.get("ProcessingInputs", []):
            if stop.is_set():
                raise JobStopped
            s3 = item["S3Input"]
            dest = local_path(s3["LocalPath"], root)
            dest.mkdir(parents=True, exist_ok=True)
            try:
                if s3["S3DataType"] == "ManifestFile":
                    objects = self._manifest_objects(s3["S3Uri"], dest)
                else:
                    objects = self._prefix_objects(s3["S3Uri"], dest)
                _in_parallel([partial(self._fetch, *o) for o in objects], stop)
            except (ClientError, BotoCoreError, ValueError) as exc:
                raise JobFailed(
                    f"ClientError: Failed to download data for input '{item['InputName']}' "
                    f"from {s3['S3Uri']}: {exc}"
                ) from exc

    def _fetch(self, bucket: str, key: str, target: Path) -> None:
        # One GetObject; download_file would add a HeadObject and a transfer manager per object.
        target.parent.mkdir(parents=True, exist_ok=True)
        body = self._s3.get_object(Bucket=bucket, Key=key)["Body"]
        with body, target.open("wb") as out:
            shutil.copyfileobj(body, out, 1024 * 1024)

    def _prefix_objects(self, uri: str, dest: Path) -> list[tuple[str, str, Path]]:
        bucket, prefix = split_s3_uri(uri)
        objects = [
            (bucket, obj["Key"], inside(dest / relative_key(obj["Key"], prefix), dest))
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        ]
        if not objects:
            raise ValueError(
                f'No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure that '
                "the bucket exists in the selected region, that objects exist under that S3 prefix, and that "
                "the role has s3:ListBucket permissions on the bucket."
            )
        return objects

    def _manifest_objects(self, uri: str, dest: Path) -> list[tuple[str, str, Path]]:
        bucket, key = split_s3_uri(uri)
        body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            manifest = json.loads(body)
            prefix_uri = manifest[0]["prefix"]
            entries = manifest[1:]
        except (ValueError, LookupError, TypeError) as exc:
            raise ValueError(
                f"manifest {uri} must be a JSON list: "
                '[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]'
            ) from exc
        prefix_bucket, prefix = split_s3_uri(prefix_uri)
        objects = []
        for rel in entries:
            if not isinstance(rel, str) or not rel:
                raise ValueError(
                    f"manifest {uri}: entries after the prefix must be relative keys, got {rel!r}"
                )
            objects.append((prefix_bucket, prefix + rel, inside(dest / rel, dest)))
        return objects

    def _upload_outputs(self, job: Job, root: Path, stop: threading.Event) -> None:
        for output in job.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            s3 = output["S3Output"]
            source = local_path(s3["LocalPath"], root)
            bucket, prefix = split_s3_uri(s3["S3Uri"])
            prefix = prefix.rstrip("/")
            uploads = []
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                rel = path.relative_to(source).as_posix()
                uploads.append(partial(self._put, path, bucket, f"{prefix}/{rel}" if prefix else rel))
            try:
                _in_parallel(uploads, stop)
            except (ClientError, BotoCoreError) as exc:
                raise JobFailed(
                    f"ClientError: Failed to upload output '{output['OutputName']}' to {s3['S3Uri']}: {exc}"
                ) from exc

    def _put(self, path: Path, bucket: str, key: str) -> None:
        if path.stat().st_size > _SINGLE_PUT_BYTES:
            self._s3.upload_file(str(path), bucket, key)
            return
        with path.open("rb") as body:
            self._s3.put_object(Bucket=bucket, Key=key, Body=body)

    # -- the container ---------------------------------------------------------------------------

    def job_environment(self, job: Job, root: Path, devices: list[int]) -> dict[str, str]:
        """
        The environment of the job's process: a minimal base, the GPUs, then the job's Environment.

        :param job: the job.
        :param root: its workspace standing in for ``/opt/ml``.
        :param devices: the local GPU indices it was given (empty without local GPUs).
        """
        path = [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        if self.config.shim_dir is not None:
            path.insert(0, str(self.config.shim_dir))
        if self.config.cpu_shim_dir is not None and runs_cpu_stage(job):
            path.insert(0, str(self.config.cpu_shim_dir))
        env = {
            "PATH": os.pathsep.join(path),
            "HOME": str(root.parent / "home"),
            "TMPDIR": str(root.parent / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
        }
        # A processing image bakes the model weights in; on a workstation the host's Hugging Face cache
        # plays that part, so real BoltzGen finds its weights offline instead of downloading 6 GB per job.
        for key in HOST_CACHE_VARIABLES:
            if os.environ.get(key):
                env[key] = os.environ[key]
        if "HF_HOME" not in env and "HF_HUB_CACHE" not in env:
            # One cache for every job (a job's HOME is its own): the configs the design stage writes
            # name files in it, and the CPU stages read them at the same paths, as on one image.
            env["HF_HUB_CACHE"] = str(jobs_hub_cache(self.config.state_dir))
        if self.config.shim_dir is not None:
            # The simulator's knobs set where the emulator runs reach its jobs (GPUs are the emulator's).
            env.update({k: v for k, v in os.environ.items() if k.startswith(SIM_KNOB_PREFIX)})
            env.pop(SIM_GPUS, None)
        if self.gpu_pool.total:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
        else:
            simulated = self.config.sim_gpus.get(job.instance_type, gpu_count(job.instance_type))
            env["BOLTZGEN_SIM_GPUS"] = str(simulated)
            # The step scripts read BOLTZGEN_STEP_GPUS instead of nvidia-smi on a host without GPUs.
            env["BOLTZGEN_STEP_GPUS"] = str(simulated)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in range(simulated))
        for key, value in (job.request.get("Environment") or {}).items():
            env[key] = rewrite(value, root)
        return env

    def _execute(self, running: _Running, root: Path, devices: list[int], joblog: JobLog) -> int:
        job = running.job
        app = job.request["AppSpecification"]
        command = [rewrite(w, root) for w in app.get("ContainerEntrypoint") or []]
        command += [rewrite(w, root) for w in app.get("ContainerArguments") or []]
        if not command:
            raise JobFailed(
                "ClientError: the emulator runs no images: AppSpecification.ContainerEntrypoint is required"
            )
        env = self.job_environment(job, root, devices)
        started = time.time()
        try:
            proc = subprocess.Popen(
                command,
                cwd=str(root.parent),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise JobFailed(
                f"AlgorithmError: could not start the container entrypoint {command[0]!r}: {exc}"
            ) from exc
        running.proc = proc
        self.store.update(job.name, pid=proc.pid, start_time=started)
        reader = threading.Thread(target=_pump, args=(proc, joblog), daemon=True)
        reader.start()
        max_runtime = job.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400)
        deadline = time.monotonic() + max_runtime
        timed_out = False
        while proc.poll() is None:
            if running.stop.wait(_POLL_SECONDS):
                kill_process_group(proc.pid, self.config.stop_grace_seconds)
                break
            if time.monotonic() > deadline:
                timed_out = True
                kill_process_group(proc.pid, self.config.stop_grace_seconds)
                break
        code = proc.wait()
        # The group may outlive its leader (a child that ignored SIGTERM, or a daemonised helper).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=5)
        if timed_out:
            raise JobFailed(
                f"MaxRuntimeExceeded: Processing job {job.name} exceeded MaxRuntimeInSeconds of "
                f"{max_runtime} seconds and was stopped"
            )
        if running.stop.is_set():
            raise JobStopped
        return code


def _pump(proc: subprocess.Popen[bytes], joblog: JobLog) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        joblog.write(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def _exit_message(root: Path) -> str | None:
    path = root / "output" / "message"
    try:
        with path.open("rb") as fh:
            data = fh.read(EXIT_MESSAGE_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="ignore")


def _in_parallel(calls: Sequence[Callable[[], None]], stop: threading.Event) -> None:
    """
    Run ``calls`` on TRANSFER_THREADS threads; the first error cancels the rest and is raised.

    :param calls: the transfers.
    :param stop: set when the job is stopped; raises JobStopped instead of starting more.
    """

    def guarded(call: Callable[[], None]) -> None:
        if stop.is_set():
            raise JobStopped
        call()

    with ThreadPoolExecutor(min(TRANSFER_THREADS, max(1, len(calls))), thread_name_prefix="transfer") as pool:
        futures = [pool.submit(guarded, call) for call in calls]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    if stop.is_set():
        raise JobStopped

"""The one-machine AWS stack: moto server (S3, CloudWatch Logs) and the SageMaker emulator on loopback.

    python -m sagemaker_emulator.stack up [--bucket NAME ...] [--moto-port 4566] [--emulator-port 4599]
    eval "$(python -m sagemaker_emulator.stack env)"
    python -m sagemaker_emulator.stack status
    python -m sagemaker_emulator.stack down

State (pids, logs, the emulator's job table) lives in ``.local-stack/`` at the project root, or in
``--state-dir`` / ``$BOLTZGEN_LOCAL_STATE``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3

from sagemaker_emulator.config import type_counts
from sagemaker_emulator.real_boltzgen import RealBoltzGenError, find_venv

log = logging.getLogger(__name__)

DEFAULT_MOTO_PORT = 4566
DEFAULT_EMULATOR_PORT = 4599
DEFAULT_BUCKET = "boltzgen-demo"
HOST = "127.0.0.1"
STATE_ENV = "BOLTZGEN_LOCAL_STATE"
DUMMY_KEY = "testing"
_STACK_FILE = "stack.json"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_state_dir() -> Path:
    """``$BOLTZGEN_LOCAL_STATE``, else ``.local-stack/`` at the project root."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().resolve()
    root = _PROJECT_ROOT if (_PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return root / ".local-stack"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """
    ``count`` distinct TCP ports free on loopback right now.

    :param count: how many ports.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL built here
            return 200 <= int(resp.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and is the process we started (its command line holds ``marker``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _stop_group(pid: int, marker: str, timeout: float = 15.0) -> None:
    if not _alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, marker):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _stop_child(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class StackError(RuntimeError):
    """The stack could not be started or reached."""


class LocalStack:
    """
    moto server and the SageMaker emulator as background processes of this machine.

    :param state_dir: pids, logs and emulator state; default :func:`default_state_dir`.
    :param moto_port: the port of moto server (S3, CloudWatch Logs).
    :param emulator_port: the port of the SageMaker emulator.
    :param simulated: put the BoltzGen simulator's ``boltzgen`` first on the jobs' PATH.
    :param mixed: with ``simulated``, the jobs on CPU instance types (analysis, filtering) run the real
        ``boltzgen`` of the BoltzGen venv (``BOLTZGEN_VENV`` or ``.boltzgen/venv``) instead.
    :param sim_gpus: simulated GPUs per instance type (default: the instance type's real count).
    :param buckets: buckets to create in moto on start.
    :param quotas: concurrent instances allowed per instance type.
    :param default_quota: quota of the types not in ``quotas`` (None: unlimited).
    :param config_file: a JSON/YAML capacity file for the emulator (quotas, gpus, sim_gpus).
    :param gpus: local GPUs handed to jobs (None: detect; 0 on a machine without GPUs).
    :param region: the AWS region of every client.
    :param stop_grace_seconds: SIGTERM-to-SIGKILL time when a job is stopped.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        moto_port: int = DEFAULT_MOTO_PORT,
        emulator_port: int = DEFAULT_EMULATOR_PORT,
        *,
        simulated: bool = True,
        mixed: bool = False,
        sim_gpus: dict[str, int] | None = None,
        buckets: Sequence[str] = (DEFAULT_BUCKET,),
        quotas: dict[str, int] | None = None,
        default_quota: int | None = None,
        config_file: Path | None = None,
        gpus: int | None = None,
        region: str = "us-east-1",
        stop_grace_seconds: float = 5.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()
        self.moto_port = moto_port
        self.emulator_port = emulator_port
        self.simulated = simulated
        self.mixed = mixed
        self.sim_gpus = dict(sim_gpus or {})
        self.buckets = list(buckets)
        self.quotas = dict(quotas or {})
        self.default_quota = default_quota
        self.config_file = config_file
        self.gpus = gpus
        self.region = region
        self.stop_grace_seconds = stop_grace_seconds
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_state(cls, state_dir: Path | str | None = None) -> LocalStack:
        """
        The stack recorded in a state directory by a previous :meth:`start`.

        :param state_dir: the state directory; default :func:`default_state_dir`.
        """
        stack = cls(state_dir)
        record = stack._record()
        if record:
            stack.moto_port = record["moto"]["port"]
            stack.emulator_port = record["emulator"]["port"]
            stack.simulated = record.get("simulated", True)
            stack.mixed = record.get("mixed", False)
            stack.region = record.get("region", stack.region)
            stack.buckets = record.get("buckets", stack.buckets)
        return stack

    # -- addresses -------------------------------------------------------------------------------

    @property
    def moto_url(self) -> str:
        """The endpoint of S3 and CloudWatch Logs."""
        return f"http://{HOST}:{self.moto_port}"

    @property
    def emulator_url(self) -> str:
        """The endpoint of SageMaker."""
        return f"http://{HOST}:{self.emulator_port}"

    def env(self) -> dict[str, str]:
        """The environment that points boto3, aiobotocore and Airflow's AWS connection at this stack."""
        connection = {
            "conn_type": "aws",
            "login": DUMMY_KEY,
            "password": DUMMY_KEY,
            "extra": {
                "region_name": self.region,
                "endpoint_url": self.moto_url,
                "service_config": {"sagemaker": {"endpoint_url": self.emulator_url}},
            },
        }
        return {
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ENDPOINT_URL_SAGEMAKER": self.emulator_url,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection, separators=(",", ":")),
            STATE_ENV: str(self.state_dir),
        }

    def client(self, service: str) -> Any:
        """
        A boto3 client of this stack (``sagemaker`` goes to the emulator, the rest to moto).

        :param service: e.g. ``s3``, ``logs``, ``sagemaker``.
        """
        endpoint = self.emulator_url if service == "sagemaker" else self.moto_url
        factory: Any = boto3.client
        return factory(
            service,
            endpoint_url=endpoint,
            region_name=self.region,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / _STACK_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_running(self) -> bool:
        """Whether both processes recorded in the state directory are alive and answering."""
        record = self._record()
        moto, emulator = record.get("moto") or {}, record.get("emulator") or {}
        if not (moto.get("pid") and emulator.get("pid")):
            return False  # nothing recorded, or a start that was interrupted half way
        return (
            _alive(moto["pid"], "moto.server")
            and _alive(emulator["pid"], "sagemaker_emulator.server")
            and _http_ok(f"{self.moto_url}/moto-api/")
            and _http_ok(f"{self.emulator_url}/_emulator/health")
        )

    def status(self) -> dict[str, Any]:
        """What the state directory records and whether each process answers."""
        record = self._record()
        out: dict[str, Any] = {"state_dir": str(self.state_dir), "running": self.is_running()}
        for name, marker, url in (
            ("moto", "moto.server", f"{self.moto_url}/moto-api/"),
            ("emulator", "sagemaker_emulator.server", f"{self.emulator_url}/_emulator/health"),
        ):
            entry = record.get(name)
            out[name] = (
                {**entry, "alive": _alive(entry["pid"], marker), "answering": _http_ok(url)}
                if entry
                else None
            )
        out["simulated"] = record.get("simulated")
        out["mixed"] = record.get("mixed", False)
        out["shim_dir"] = record.get("shim_dir")
        return out

    def start(self, timeout: float = 60.0) -> LocalStack:
        """
        Start moto server and the emulator in the background, wait until both answer, create the buckets.

        :param timeout: seconds to wait for each process to answer.
        """
        if self.is_running():
            log.info("local stack already running (%s)", self.state_dir)
            self._create_buckets()
            return self
        for port in (self.moto_port, self.emulator_port):
            if _port_open(port):
                raise StackError(f"port {port} on {HOST} is already in use; choose another port")
        if self.mixed:
            try:
                find_venv()  # before anything starts: the emulator would only log it
            except RealBoltzGenError as err:
                raise StackError(str(err)) from err
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shim_dir = self._install_shim() if self.simulated else None
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_"))}
        base_env.update(
            AWS_ACCESS_KEY_ID=DUMMY_KEY,
            AWS_SECRET_ACCESS_KEY=DUMMY_KEY,
            AWS_DEFAULT_REGION=self.region,
            AWS_REGION=self.region,
            PYTHONUNBUFFERED="1",
        )
        moto_pid = self._spawn(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.moto_port)],
            base_env,
        )
        record: dict[str, Any] = {
            "moto": {"pid": moto_pid, "port": self.moto_port},
            "region": self.region,
            "simulated": self.simulated,
            "mixed": self.mixed,
            "shim_dir": str(shim_dir) if shim_dir else None,
            "buckets": self.buckets,
        }
        self._write_record(record)
        try:
            self._wait("moto", moto_pid, "moto.server", f"{self.moto_url}/moto-api/", timeout)
            command = [
                sys.executable, "-m", "sagemaker_emulator.server",
                "--host", HOST, "--port", str(self.emulator_port),
                "--state-dir", str(self.state_dir / "emulator"),
                "--region", self.region,
                "--s3-endpoint", self.moto_url, "--logs-endpoint", self.moto_url,
                "--stop-grace-seconds", str(self.stop_grace_seconds),
            ]  # fmt: skip
            if shim_dir:
                command += ["--shim-dir", str(shim_dir)]
            if self.mixed:
                command += ["--engine", "mixed"]
            if self.config_file:
                command += ["--config", str(Path(self.config_file).resolve())]
            if self.gpus is not None:
                command += ["--gpus", str(self.gpus)]
            if self.default_quota is not None:
                command += ["--default-quota", str(self.default_quota)]
            for itype, n in self.quotas.items():
                command += ["--quota", f"{itype}={n}"]
            for itype, n in self.sim_gpus.items():
                command += ["--sim-gpus", f"{itype}={n}"]
            emulator_pid = self._spawn("emulator", command, base_env)
            record["emulator"] = {"pid": emulator_pid, "port": self.emulator_port}
            self._write_record(record)
            self._wait(
                "emulator",
                emulator_pid,
                "sagemaker_emulator.server",
                f"{self.emulator_url}/_emulator/health",
                timeout,
            )
            self._create_buckets()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop what :meth:`start` started (by recorded pids and process groups), emulator first."""
        record = self._record()
        for name, marker in (("emulator", "sagemaker_emulator.server"), ("moto", "moto.server")):
            if name not in record:
                continue
            pid = record[name]["pid"]
            proc = self._procs.pop(pid, None)
            if proc is not None:
                # Started by this object: the handle is certain even before the child has exec'd.
                _stop_child(proc)
            else:
                _stop_group(pid, marker)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / _STACK_FILE).unlink()

    def restart_emulator(self, timeout: float = 60.0) -> None:
        """
        Kill the emulator abruptly (SIGKILL, as a crashed host) and start it again on the same state.

        :param timeout: seconds to wait for it to answer again.
        """
        record = self._record()
        pid = record["emulator"]["pid"]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        os.killpg(pid, signal.SIGKILL)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            proc.wait()
        while _alive(pid, "sagemaker_emulator.server"):
            time.sleep(0.05)
        while _port_open(self.emulator_port):
            time.sleep(0.05)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_"))}
        base_env.update(
            AWS_ACCESS_KEY_ID=DUMMY_KEY, AWS_SECRET_ACCESS_KEY=DUMMY_KEY, AWS_DEFAULT_REGION=self.region
        )
        new_pid = self._spawn("emulator", [c.decode() for c in command if c], base_env)
        record["emulator"]["pid"] = new_pid
        self._write_record(record)
        self._wait(
            "emulator", new_pid, "sagemaker_emulator.server", f"{self.emulator_url}/_emulator/health", timeout
        )

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """
        Replace the emulator's fault rules (see :mod:`sagemaker_emulator.faults`).

        :param rules: rule objects, e.g. ``[{"pattern": "bad-*", "action": "fail"}]``.
        """
        request = urllib.request.Request(  # noqa: S310 - loopback URL built here
            f"{self.emulator_url}/_emulator/faults",
            data=json.dumps(rules).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                pass
        except urllib.error.HTTPError as exc:
            raise StackError(f"fault rules rejected: {exc.read().decode(errors='replace')}") from exc

    # -- helpers ---------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> int:
        with (self.state_dir / f"{name}.log").open("ab") as logfile:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.state_dir),
                start_new_session=True,
            )
        self._procs[proc.pid] = proc
        return proc.pid

    def _wait(self, name: str, pid: int, marker: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _http_ok(url):
                return
            if self._exited(pid, marker):
                break
            time.sleep(0.1)
        tail = ""
        with contextlib.suppress(OSError):
            tail = (self.state_dir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise StackError(f"{name} did not answer at {url} within {timeout:.0f}s; its log ends with:\n{tail}")

    def _exited(self, pid: int, marker: str) -> bool:
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll() is not None
        return not _alive(pid, marker)

    def _write_record(self, record: dict[str, Any]) -> None:
        tmp = self.state_dir / f"{_STACK_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        tmp.replace(self.state_dir / _STACK_FILE)

    def _install_shim(self) -> Path | None:
        try:
            from boltzgen_sim import install_shim
        except ImportError:
            log.warning("boltzgen_sim.install_shim is not available: jobs will not find a simulated boltzgen")
            return None
        folder = self.state_dir / "shim"
        folder.mkdir(parents=True, exist_ok=True)
        install_shim(folder)
        return folder

    def _create_buckets(self) -> None:
        s3 = self.client("s3")
        # S3 refuses a bucket without its region named anywhere but in us-east-1.
        location: dict[str, Any] = (
            {}
            if self.region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        )
        for bucket in self.buckets:
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket, **location)


def build_parser() -> argparse.ArgumentParser:
    """The ``up|down|status|env`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"default: ${STATE_ENV} or .local-stack/ at the project root",
    )
    parser = argparse.ArgumentParser(prog="python -m sagemaker_emulator.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start moto server and the emulator")
    up.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT)
    up.add_argument("--emulator-port", type=int, default=DEFAULT_EMULATOR_PORT)
    up.add_argument("--bucket", action="append", default=None, help=f"repeatable; default {DEFAULT_BUCKET}")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--simulated", dest="simulated", action="store_true", default=True,
                      help="jobs run the BoltzGen simulator as `boltzgen` (default)")  # fmt: skip
    mode.add_argument("--real-boltzgen", dest="simulated", action="store_false",
                      help="jobs run the `boltzgen` found on PATH")  # fmt: skip
    mode.add_argument("--mixed", action="store_true",
                      help="GPU jobs run the simulator, CPU jobs (analysis, filtering) the real boltzgen "
                           "of $BOLTZGEN_VENV or .boltzgen/venv (make boltzgen-venv)")  # fmt: skip
    up.add_argument("--sim-gpus", action="append", default=[], metavar="TYPE=N")
    up.add_argument("--quota", action="append", default=[], metavar="TYPE=N")
    up.add_argument("--default-quota", type=int)
    up.add_argument("--gpus", type=int, help="local GPUs handed to jobs (default: detect)")
    up.add_argument("--config", type=Path, help="emulator capacity file (JSON/YAML)")
    up.add_argument("--region", default="us-east-1")
    sub.add_parser("down", parents=[common], help="stop what `up` started")
    status = sub.add_parser("status", parents=[common], help="report the stack's processes")
    status.add_argument("--json", action="store_true")
    sub.add_parser("env", parents=[common], help="print `export` lines for a shell to eval")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the stack command line; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "up":
        stack = LocalStack(
            args.state_dir,
            args.moto_port,
            args.emulator_port,
            simulated=args.simulated,
            mixed=args.mixed,
            sim_gpus=type_counts(args.sim_gpus, "--sim-gpus"),
            buckets=args.bucket or [DEFAULT_BUCKET],
            quotas=type_counts(args.quota, "--quota"),
            default_quota=args.default_quota,
            config_file=args.config,
            gpus=args.gpus,
            region=args.region,
        )
        try:
            stack.start()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"local stack up: S3/Logs {stack.moto_url}, SageMaker {stack.emulator_url}, "
            f"state {stack.state_dir}"
        )
        print(
            "point clients at it with: "
            f'eval "$(python -m sagemaker_emulator.stack env --state-dir {stack.state_dir})"'
        )
        return 0
    stack = LocalStack.from_state(args.state_dir)
    if args.command == "down":
        was = stack.is_running()
        stack.stop()
        print("local stack stopped" if was else "local stack was not running")
        return 0
    if args.command == "status":
        info = stack.status()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"state dir: {info['state_dir']}")
            for name in ("moto", "emulator"):
                entry = info[name]
                detail = (
                    f"pid {entry['pid']} port {entry['port']} alive={entry['alive']} "
                    f"answering={entry['answering']}"
                    if entry
                    else "not started"
                )
                print(f"{name}: {detail}")
            print(f"running: {info['running']}")
        return 0 if info["running"] else 3
    if args.command == "env":
        if not stack._record():
            print(f"error: no local stack recorded in {stack.state_dir}; run `up` first", file=sys.stderr)
            return 1
        for key, value in stack.env().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

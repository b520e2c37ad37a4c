"""The emulator's HTTP service: the SageMaker JSON 1.1 protocol on ``POST /``, plus a small admin API.

``python -m sagemaker_emulator.server --port 4599 --state-dir .local-stack/emulator ...``

Admin endpoints (not part of SageMaker): ``GET /_emulator/health``; ``GET|PUT|DELETE
/_emulator/faults`` reads, replaces or clears the fault rules (see :mod:`sagemaker_emulator.faults`);
``GET /_emulator/jobs/<name>`` is a page with the job's description and log
(:mod:`sagemaker_emulator.jobpage`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from sagemaker_emulator import real_boltzgen
from sagemaker_emulator.api import SageMakerEmulator
from sagemaker_emulator.config import EmulatorConfig, detect_gpus, load_capacity_file, type_counts
from sagemaker_emulator.errors import ApiError
from sagemaker_emulator.faults import parse_rules
from sagemaker_emulator.jobpage import JOB_NAME_RE, render_job_page
from sagemaker_emulator.runner import jobs_hub_cache

log = logging.getLogger("sagemaker_emulator")

TARGET_PREFIX = "SageMaker."
MAX_BODY = 10 * 1024 * 1024
JOB_PAGE_PREFIX = "/_emulator/jobs/"
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")


def signed_region(authorization: str | None) -> str | None:
    """
    Return the region of a SigV4 ``Authorization`` header's credential scope, None when unsigned.

    :param authorization: ``AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/sagemaker/aws4_request, ...``.
    """
    match = _CREDENTIAL_SCOPE.search(authorization or "")
    return match.group(1) if match else None


class _Handler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: Any, content_type: str = "application/x-amz-json-1.1") -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: ApiError) -> None:
        self._send(error.status, {"__type": error.code, "message": error.message})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError("ValidationException", f"Request body of {length} bytes is too large")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError("SerializationException", f"Request body is not valid JSON: {exc}") from exc

    def do_POST(self) -> None:
        try:
            if self.path.startswith("/_emulator/"):
                self._admin("POST")
                return
            target = self.headers.get("X-Amz-Target", "")
            if not target.startswith(TARGET_PREFIX):
                raise ApiError("UnknownOperationException", f"Missing or unknown X-Amz-Target {target!r}")
            body = self._body()
            if not isinstance(body, dict):
                raise ApiError("SerializationException", "Request body must be a JSON object")
            operation = target[len(TARGET_PREFIX) :]
            region = signed_region(self.headers.get("Authorization"))
            result = self.server.emulator.call(operation, body, region)
            log.info("%s %s", operation, body.get("ProcessingJobName", ""))
            self._send(200, result)
        except ApiError as exc:
            self._send_error(exc)
        except Exception as exc:
            log.exception("internal error")
            self._send_error(ApiError("InternalFailure", f"{type(exc).__name__}: {exc}", status=500))

    def do_GET(self) -> None:
        self._admin("GET")

    def do_PUT(self) -> None:
        self._admin("PUT")

    def do_DELETE(self) -> None:
        self._admin("DELETE")

    def _admin(self, method: str) -> None:
        faults = self.server.emulator.faults
        try:
            if self.path == "/_emulator/health" and method == "GET":
                self._send(200, {"status": "ok"}, "application/json")
            elif self.path == "/_emulator/faults" and method == "GET":
                self._send(200, {"rules": [vars(r) for r in faults.rules()]}, "application/json")
            elif self.path == "/_emulator/faults" and method in ("PUT", "POST"):
                try:
                    rules = parse_rules(self._body())
                except ValueError as exc:
                    raise ApiError("ValidationException", str(exc)) from exc
                faults.set_rules(rules)
                self._send(200, {"rules": [vars(r) for r in rules]}, "application/json")
            elif self.path == "/_emulator/faults" and method == "DELETE":
                faults.set_rules([])
                self._send(200, {"rules": []}, "application/json")
            elif self.path.startswith(JOB_PAGE_PREFIX) and method == "GET":
                self._job_page(self.path[len(JOB_PAGE_PREFIX) :].split("?", 1)[0].split("#", 1)[0])
            else:
                self._send(
                    404, {"__type": "NotFound", "message": f"{method} {self.path}"}, "application/json"
                )
        except ApiError as exc:
            self._send_error(exc)

    def _job_page(self, name: str) -> None:
        if not JOB_NAME_RE.match(name):
            raise ApiError("ValidationException", f"{name!r} is not a processing job name")
        description = self.server.emulator.describe_processing_job({"ProcessingJobName": name})
        log_path = self.server.emulator.config.state_dir / "logs" / f"{name}.log"
        log_text = log_path.read_text(errors="replace") if log_path.is_file() else None
        body = render_job_page(description, log_text).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """
    A threaded HTTP server bound to one :class:`SageMakerEmulator`.

    :param address: (host, port) to listen on.
    :param emulator: the operations to serve.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: SageMakerEmulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator


def build_parser() -> argparse.ArgumentParser:
    """The command line of the emulator service."""
    parser = argparse.ArgumentParser(prog="python -m sagemaker_emulator.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4599)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("SAGEMAKER_EMULATOR_STATE", ".sagemaker-emulator")),
        help="job table, workspaces, logs, faults (default $SAGEMAKER_EMULATOR_STATE)",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--s3-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for inputs and outputs (default $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--logs-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL_LOGS") or os.environ.get("AWS_ENDPOINT_URL"),
        help="CloudWatch Logs endpoint (default $AWS_ENDPOINT_URL; none: local log files only)",
    )
    parser.add_argument(
        "--config", type=Path, help="JSON or YAML file: quotas, default_quota, gpus, sim_gpus"
    )
    parser.add_argument("--quota", action="append", default=[], metavar="TYPE=N")
    parser.add_argument("--default-quota", type=int)
    parser.add_argument("--gpus", type=int, help="local GPUs to hand to jobs (default: nvidia-smi -L)")
    parser.add_argument("--sim-gpus", action="append", default=[], metavar="TYPE=N")
    parser.add_argument("--shim-dir", type=Path, help="folder put first on the jobs' PATH")
    parser.add_argument(
        "--engine",
        choices=("real", "sim", "mixed"),
        default=os.environ.get("BOLTZGEN_ENGINE", "real"),
        help="sim: install the BoltzGen simulator as `boltzgen` first on the jobs' PATH; mixed: the "
        "simulator for jobs on GPU instance types, the real boltzgen of $BOLTZGEN_VENV (default "
        ".boltzgen/venv) for the others (default $BOLTZGEN_ENGINE or real)",
    )
    parser.add_argument("--stop-grace-seconds", type=float, default=5.0)
    parser.add_argument("--log-level", default="INFO")
    return parser


def _shim_dir(args: argparse.Namespace) -> Path | None:
    if args.shim_dir:
        return Path(args.shim_dir).resolve()
    if args.engine not in ("sim", "mixed"):
        return None
    from boltzgen_sim import install_shim

    folder = Path(args.state_dir).resolve() / "shim"
    install_shim(folder)
    return folder


def _cpu_shim_dir(args: argparse.Namespace) -> Path | None:
    """The mixed engine's real ``boltzgen``, with a molecule directory in the jobs' hub cache."""
    if args.engine != "mixed":
        return None
    venv = real_boltzgen.find_venv()
    state_dir = Path(args.state_dir).resolve()
    if real_boltzgen.ensure_moldir(jobs_hub_cache(state_dir), venv):
        log.info("built a stand-in molecule directory (canonical residues) in %s", jobs_hub_cache(state_dir))
    return real_boltzgen.install_cpu_shim(state_dir / "real-shim", venv)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """:param args: parsed command line of :func:`build_parser`."""
    file_settings = load_capacity_file(args.config) if args.config else {}
    quotas = {**file_settings.get("quotas", {}), **type_counts(args.quota, "--quota")}
    sim_gpus = {**file_settings.get("sim_gpus", {}), **type_counts(args.sim_gpus, "--sim-gpus")}
    gpus = args.gpus if args.gpus is not None else file_settings.get("gpus")
    return EmulatorConfig(
        state_dir=args.state_dir.resolve(),
        region=file_settings.get("region", args.region),
        s3_endpoint=args.s3_endpoint,
        logs_endpoint=args.logs_endpoint,
        quotas=quotas,
        default_quota=args.default_quota
        if args.default_quota is not None
        else file_settings.get("default_quota"),
        gpus=gpus if gpus is not None else detect_gpus(),
        sim_gpus=sim_gpus,
        shim_dir=_shim_dir(args),
        cpu_shim_dir=_cpu_shim_dir(args),
        stop_grace_seconds=file_settings.get("stop_grace_seconds", args.stop_grace_seconds),
    )


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; running jobs are then killed and recorded Failed."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except (ValueError, real_boltzgen.RealBoltzGenError) as exc:
        raise SystemExit(str(exc)) from exc
    emulator = SageMakerEmulator(config)
    server = EmulatorHTTPServer((args.host, args.port), emulator)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "SageMaker emulator on http://%s:%d (state %s, GPUs %s)",
        args.host,
        args.port,
        config.state_dir,
        config.gpus,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        emulator.close()


if __name__ == "__main__":
    main()

"""
``python -m boltzgen_demo demo|up|down|status``.

    demo    the demo campaign end to end on a local stack of its own, results in demo-output/
    up      the local stack and a local Airflow (UI, scheduler, DAG processor, triggerer); with
            --engine celery also PostgreSQL, Redis and Celery workers instead of SQLite
    down    stop what `up` started
    status  what `up` started and whether it answers
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from boltzgen_demo import airflow_local, engines
from boltzgen_demo.backing_services import BackingServices, ServiceError
from boltzgen_demo.demo import DemoSettings, run_demo
from sagemaker_emulator.stack import DEFAULT_BUCKET, LocalStack, StackError


def _root() -> Path:
    return airflow_local.project_root()


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    root = _root()
    parser = argparse.ArgumentParser(
        prog="python -m boltzgen_demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo campaign end to end on the local stack")
    demo.add_argument("--campaign", type=Path, help="default: the demo campaign (demo_protein with --mixed)")
    demo.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"default {DEFAULT_BUCKET}")
    demo.add_argument("--state-dir", type=Path, help="default .local-stack/demo (demo-mixed with --mixed)")
    demo.add_argument("--airflow-home", type=Path, default=root / ".airflow")
    demo.add_argument("--output", type=Path, default=root / "demo-output")
    demo.add_argument("--conf", default="{}", help="run params as JSON, e.g. '{\"num_designs\": 4}'")
    demo.add_argument("--fresh", action="store_true", help="start from an empty bucket: every stage runs")
    demo.add_argument("--top", type=int, default=3, help="designs shown per spec (default 3)")
    mixed_help = (
        "GPU stages on the simulator, analysis and filtering on the real boltzgen of $BOLTZGEN_VENV "
        "or .boltzgen/venv (make boltzgen-venv)"
    )
    demo.add_argument("--mixed", action="store_true", help=mixed_help)
    for name, help_text in (
        ("up", "start the local stack and a local Airflow"),
        ("down", "stop what `up` started"),
        ("status", "show what `up` started"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--state-dir", type=Path, default=root / ".local-stack")
        cmd.add_argument("--airflow-home", type=Path, default=root / ".airflow")
        cmd.add_argument(
            "--services-dir",
            type=Path,
            default=root / ".local-stack" / "celery",
            help="PostgreSQL's and Redis's data (the celery engine)",
        )
        if name == "up":
            cmd.add_argument(
                "--engine",
                choices=engines.ENGINES,
                default="local",
                help="local: SQLite, LocalExecutor (default); celery: PostgreSQL, Redis, CeleryExecutor",
            )
            cmd.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
            cmd.add_argument("--concurrency", type=int, default=4, help="task slots per worker (default 4)")
            cmd.add_argument("--port", type=int, default=8080, help="the API server's port (default 8080)")
            cmd.add_argument("--bucket", default=DEFAULT_BUCKET)
            cmd.add_argument("--mixed", action="store_true", help=mixed_help)
    return parser


def _demo(args: argparse.Namespace) -> int:
    try:
        conf = json.loads(args.conf)
    except ValueError as err:
        print(f"error: --conf is not JSON: {err}", file=sys.stderr)
        return 2
    if not isinstance(conf, dict):
        print("error: --conf must be a JSON object", file=sys.stderr)
        return 2
    root = _root()
    campaigns = root / "include/configs/campaigns"
    args.campaign = args.campaign or campaigns / ("demo_protein.yaml" if args.mixed else "demo.yaml")
    args.state_dir = args.state_dir or root / ".local-stack" / ("demo-mixed" if args.mixed else "demo")
    if not args.campaign.is_file():
        print(f"error: campaign file {args.campaign} not found", file=sys.stderr)
        return 2
    settings = DemoSettings(
        campaign_file=args.campaign.resolve(),
        bucket=args.bucket,
        state_dir=args.state_dir.resolve(),
        airflow_home=args.airflow_home.resolve(),
        output_dir=args.output.resolve(),
        conf=conf,
        fresh=args.fresh,
        top=args.top,
        mixed=args.mixed,
    )
    return run_demo(settings)


def _up(args: argparse.Namespace) -> int:
    home = args.airflow_home.resolve()
    stack = LocalStack(args.state_dir, simulated=True, mixed=args.mixed, buckets=[args.bucket])
    try:
        stack.start(timeout=120)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"local stack: S3/Logs {stack.moto_url}, SageMaker {stack.emulator_url} (state {stack.state_dir})")
    services = BackingServices.in_folder(args.services_dir)
    engine_env: dict[str, str] | None = None
    workers: list[engines.CeleryWorker] = []
    url = f"http://127.0.0.1:{args.port}"
    try:
        if args.engine == "celery":
            workers = engines.celery_workers(args.workers, args.concurrency)
            services.start()
            engine_env = engines.celery_env(services)
            print(f"PostgreSQL {services.postgres.url()}, Redis {services.redis.url()} ({services.folder})")
        env = airflow_local.airflow_env(
            home, stack.env(), check_interval=10, api_port=args.port, engine_env=engine_env
        )
        print(f"Airflow in {home}: migrating the database, creating pools ...", flush=True)
        pools = airflow_local.prepare(home, env)
        print("pools: " + ", ".join(f"{k}={v}" for k, v in sorted(pools.items())))
        pids = airflow_local.start_components(home, env, engines.components(home, workers))
        print(
            "started " + ", ".join(f"{k} (pid {v})" for k, v in pids.items()) + f"; logs in {home / 'logs'}"
        )
        airflow_local.wait_for_api(url, home)
    except (airflow_local.AirflowError, ServiceError, ValueError, KeyboardInterrupt) as err:
        print(f"error: {err}" if str(err) else "interrupted", file=sys.stderr)
        airflow_local.stop_components(home)
        if args.engine == "celery":
            services.stop()
        stack.stop()
        return 1
    password = airflow_local.admin_password(home)
    print(f"\nAirflow UI: {url}  login {airflow_local.ADMIN_USER} / {password or '(see ' + str(home) + ')'}")
    print(f'AWS clients: eval "$(python -m sagemaker_emulator.stack env --state-dir {stack.state_dir})"')
    print("stop everything with: make down")
    return 0


def _down(args: argparse.Namespace) -> int:
    home = args.airflow_home.resolve()
    stopped = airflow_local.stop_components(home)
    print("Airflow: stopped " + (", ".join(stopped) if stopped else "nothing (not running)"))
    backing = BackingServices.in_folder(args.services_dir).stop()
    if backing:
        print("stopped " + ", ".join(backing) + f" (data kept in {args.services_dir})")
    stack = LocalStack.from_state(args.state_dir)
    was = stack.is_running()
    stack.stop()
    print("local stack: " + ("stopped" if was else "was not running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    home = args.airflow_home.resolve()
    recorded = airflow_local.recorded_components(home)
    running = airflow_local.running_components(home)
    for name in dict.fromkeys([*airflow_local.COMPONENTS, *recorded]):
        pid = recorded.get(name)
        print(
            f"{name}: "
            + (f"pid {pid} {'running' if name in running else 'exited'}" if pid else "not started")
        )
    stack = LocalStack.from_state(args.state_dir)
    print(f"local stack: {'running' if stack.is_running() else 'not running'} ({stack.state_dir})")
    return 0 if running and stack.is_running() else 3


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    :return: the exit code.
    """
    args = build_parser().parse_args(argv)
    handlers = {"demo": _demo, "up": _up, "down": _down, "status": _status}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

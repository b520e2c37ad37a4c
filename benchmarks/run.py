"""
Run every benchmark suite, print a table per suite and write ``benchmarks/results/<suite>.json``.

    python benchmarks/run.py                    parse, planner, plan_scale
    python benchmarks/run.py --orchestration    also one 50-shard run through the real Airflow scheduler and
                                                the emulator (--orchestration-shards N for another size)
    python benchmarks/run.py --scale            also one 500-shard run (about 90 min, idle 2-core machine)
    ... --engine celery                         those two on PostgreSQL, Redis and two Celery workers
                                                (results in orchestration_celery.json, scale_celery.json)
    python benchmarks/run.py --only planner     one suite
    python benchmarks/run.py --smoke --out DIR  tiny sizes (checks that the suites work; figures mean nothing)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, load_average

SUITES = {
    "parse": "bench_parse",
    "planner": "bench_planner",
    "plan_scale": "bench_plan_scale",
    "orchestration": "bench_orchestration",
    "scale": "bench_orchestration",
}
OPTIONAL = {"orchestration", "scale"}


def main(argv: list[str] | None = None) -> int:
    """
    Run the selected suites.

    :param argv: command line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument("--orchestration", action="store_true", help="include the orchestration suite")
    parser.add_argument(
        "--orchestration-shards", type=int, default=50, help="shards of the orchestration run (default 50)"
    )
    parser.add_argument("--scale", action="store_true", help="include the 500-shard scale run")
    parser.add_argument("--scale-shards", type=int, default=500, help="shards of the scale run (default 500)")
    parser.add_argument(
        "--engine",
        choices=("local", "celery"),
        default="local",
        help="deployment of the orchestration and scale runs (default local: SQLite, LocalExecutor)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    wanted = {"orchestration": args.orchestration, "scale": args.scale}
    names = args.only or [n for n in SUITES if n not in OPTIONAL or wanted[n]]
    print(f"load average before: {load_average()}")
    for name in names:
        module = importlib.import_module(SUITES[name])
        print(f"\n== {name} ==")
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if name == "orchestration":
            extra = {"shards": args.orchestration_shards, "engine": args.engine}
        elif name == "scale":
            extra = {"shards": args.scale_shards, "suite": "scale", "engine": args.engine}
        module.main(smoke=args.smoke, folder=args.out, **extra)
        print(f"({time.perf_counter() - started:.1f} s; load average {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

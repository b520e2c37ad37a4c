"""
DAG parse time of ``dags/boltzgen_campaigns.py`` for 1, 10 and 100 campaign files, above the bare
Airflow import.

Every measurement is a fresh Python process. The baseline process imports ``airflow.sdk`` and the
amazon provider's SageMaker operator and sensor modules; the parse process does the same, then
executes the DAG file (``runpy.run_path``, as the DAG processor executes a file) with
``BOLTZGEN_CAMPAIGNS_DIR`` pointing at N copies of the demo campaign. Only the file's execution is
timed in the parse process, so what is reported is the cost the DAG file adds on top of Airflow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, load_average, median, table, write_result

TARGET_MS_PER_CAMPAIGN = 20.0
DAG_FILE = ROOT / "dags" / "boltzgen_campaigns.py"
DEMO = ROOT / "include" / "configs" / "campaigns" / "demo.yaml"

_CHILD = """
import json, runpy, sys, time
started = time.perf_counter()
import airflow.sdk
import airflow.providers.amazon.aws.operators.sagemaker
import airflow.providers.amazon.aws.sensors.sagemaker
imported = time.perf_counter()
result = {"baseline_s": imported - started}
if sys.argv[1] != "-":
    namespace = runpy.run_path(sys.argv[1])
    result["file_s"] = time.perf_counter() - imported
    dags = list({id(v): v for v in namespace.values() if isinstance(v, airflow.sdk.DAG)}.values())
    result["dags"] = len(dags)
    result["invalid"] = sum("invalid" in v.tags for v in dags)
print(json.dumps(result))
"""


def write_campaigns(folder: Path, count: int) -> None:
    """
    Write ``count`` copies of the demo campaign with distinct names.

    :param folder: where to write them.
    :param count: how many.
    """
    text = DEMO.read_text()
    text = re.sub(r"(?m)^name: .*$", "name: {name}", text, count=1)
    text = re.sub(r"(?m)^  specs: .*$", f"  specs: {ROOT / 'include' / 'specs'}", text, count=1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"bench_{i:04d}.yaml").write_text(text.replace("{name}", f"bench_{i:04d}"))


def _child(dag_file: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, dag_file], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"parse process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(sizes: tuple[int, ...] = (1, 10, 100), repeats: int = 5, warm: bool = True) -> dict[str, Any]:
    """
    Measure and return the parse figures.

    :param sizes: campaign counts.
    :param repeats: processes per measurement (the median is reported).
    :param warm: run one unmeasured process first (warms the OS file cache).
    """
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        home = Path(tmp) / "airflow-home"
        home.mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
        }
        # One throw-away process warms the OS file cache so the first size is not penalised.
        if warm:
            _child("-", env)
        baseline = [_child("-", env)["baseline_s"] for _ in range(repeats)]
        cases = []
        for size in sizes:
            folder = Path(tmp) / f"campaigns-{size}"
            write_campaigns(folder, size)
            runs = [
                _child(str(DAG_FILE), {**env, "BOLTZGEN_CAMPAIGNS_DIR": str(folder)}) for _ in range(repeats)
            ]
            bad = [r for r in runs if r["dags"] != size or r["invalid"]]
            if bad:
                raise RuntimeError(f"expected {size} valid DAGs, got {bad[0]}")
            file_ms = median([r["file_s"] for r in runs]) * 1000
            cases.append(
                {
                    "campaigns": size,
                    "dags": runs[0]["dags"],
                    "file_ms": round(file_ms, 2),
                    "per_campaign_ms": round(file_ms / size, 3),
                    "baseline_in_process_ms": round(median([r["baseline_s"] for r in runs]) * 1000, 2),
                    "runs_file_ms": [round(r["file_s"] * 1000, 2) for r in runs],
                }
            )
    largest = cases[-1]
    document: dict[str, Any] = {
        "suite": "parse",
        "dag_file": str(DAG_FILE.relative_to(ROOT)),
        "method": "fresh process per run; baseline = import airflow.sdk + amazon SageMaker operator/sensor "
        "modules; file_ms = runpy.run_path of the DAG file after the baseline in the same process",
        "repeats": repeats,
        "baseline_import_ms": round(median(baseline) * 1000, 2),
        "campaigns": largest["campaigns"],
        "per_campaign_ms": largest["per_campaign_ms"],
        "target_per_campaign_ms": TARGET_MS_PER_CAMPAIGN,
        "meets_target": largest["per_campaign_ms"] <= TARGET_MS_PER_CAMPAIGN,
        "cases": cases,
        "load_average_before": before,
    }
    if len(cases) > 1 and cases[-1]["campaigns"] > cases[0]["campaigns"]:
        first, last = cases[0], cases[-1]
        document["marginal_per_campaign_ms"] = round(
            (last["file_ms"] - first["file_ms"]) / (last["campaigns"] - first["campaigns"]), 3
        )
    return document


def report(document: dict[str, Any]) -> str:
    """
    The figures as a table.

    :param document: from :func:`run`.
    """
    rows = [
        [
            c["campaigns"],
            c["file_ms"],
            c["per_campaign_ms"],
            round(c["file_ms"] / document["baseline_import_ms"], 3),
        ]
        for c in document["cases"]
    ]
    lines = [
        f"DAG parse above the Airflow import (baseline import {document['baseline_import_ms']:.0f} ms, "
        f"median of {document['repeats']})",
        table(["campaigns", "file ms", "ms/campaign", "file/baseline"], rows),
    ]
    if "marginal_per_campaign_ms" in document:
        lines.append(f"marginal cost per extra campaign: {document['marginal_per_campaign_ms']:.2f} ms")
    verdict = "meets" if document["meets_target"] else "MISSES"
    lines.append(
        f"{document['campaigns']} campaigns: {document['per_campaign_ms']:.2f} ms per campaign "
        f"({verdict} the {document['target_per_campaign_ms']:.0f} ms target)"
    )
    return "\n".join(lines)


def main(smoke: bool = False, folder: Path | None = None) -> dict[str, Any]:
    """
    Run the suite, print its table and write ``parse.json``.

    :param smoke: a tiny, fast size (checks the suite works; the figures mean nothing).
    :param folder: where to write the JSON.
    """
    document = run(sizes=(2,), repeats=1, warm=False) if smoke else run()
    write_result("parse", document, folder)
    print(report(document))
    return document


if __name__ == "__main__":
    main("--smoke" in sys.argv)

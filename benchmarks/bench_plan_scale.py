"""
Planning a campaign of one million designs (100 specs x 10,000): time to load and plan, and the
bytes the ``plan`` task hands to Airflow through XCom.

The XCom figures come from what the ``plan`` task calls, run against S3 on moto in this process
(real boto3, moto's in-memory S3): :func:`boltzgen_airflow.run.prepare.plan_run`, then
:func:`boltzgen_airflow.run.prepare.publish_shards`, which writes the shard descriptors to S3 and returns
the task's return value, one small reference per shard (the map input of the ``shard`` group); the
rest of ``plan_run``'s result is the ``plan_info`` XCom. Both are measured as ``json.dumps`` text,
the encoding Airflow stores. Every mapped task instance pulls the whole return value.
The specs are 100 real spec files (one BoltzGen example spec and its CIF structure, with different
designed lengths), so discovery, hashing and staging run as in a real run.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, load_average, median, table, write_result

from boltzgen_airflow.campaign.catalog import auto_preset
from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.params import RunOptions
from boltzgen_airflow.campaign.specs import discover_bundles
from boltzgen_airflow.planning.plan import plan_campaign
from boltzgen_airflow.stages import SHARD_STAGES

EXAMPLE = ROOT / "include" / "specs" / "vanilla_protein"
BUCKET = "bench-plan-scale"
CAMPAIGN = """
name: bench_scale
aws:
  bucket: {bucket}
  role_arn: arn:aws:iam::123456789012:role/boltzgen
  image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2
design:
  specs: {specs}
  num_designs: {designs}
  budget: 100
  diffusion_batch_size: 10
scaling:
  preset: auto
"""


def write_specs(folder: Path, count: int) -> None:
    """
    Write ``count`` spec bundles: the vanilla protein example with designed lengths 40..239.

    :param folder: the specs root.
    :param count: number of specs.
    """
    spec = (EXAMPLE / "1g13prot.yaml").read_text()
    for i in range(count):
        target = folder / f"target{i:03d}"
        target.mkdir(parents=True)
        shutil.copy(EXAMPLE / "1g13.cif", target / "1g13.cif")
        low = 40 + i * 2
        (target / f"spec{i:03d}.yaml").write_text(spec.replace("80..140", f"{low}..{low + 60}"))


def run(specs: int = 100, designs: int = 10_000, repeats: int = 5) -> dict[str, Any]:
    """
    Measure planning time and XCom size.

    :param specs: number of specs.
    :param designs: designs per spec.
    :param repeats: repeats of the load and plan timing (the median is reported).
    """
    import boto3
    from moto import mock_aws

    from boltzgen_airflow.run import prepare

    before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp) / "specs"
        write_specs(root, specs)
        path = Path(tmp) / "bench_scale.yaml"
        path.write_text(CAMPAIGN.format(bucket=BUCKET, specs=root, designs=designs))

        load_s, discover_s, plan_s = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            campaign = load_campaign(path, {})
            loaded = time.perf_counter()
            bundles = discover_bundles(root, campaign.design.include)
            discovered = time.perf_counter()
            plan = plan_campaign(campaign, bundles)
            planned = time.perf_counter()
            load_s.append(loaded - started)
            discover_s.append(discovered - loaded)
            plan_s.append(planned - discovered)

        options = RunOptions(
            num_designs=designs,
            budget=campaign.design.budget,
            protocol=campaign.design.protocol,
            target_hours=campaign.sharding.target_hours,
        )
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            started = time.perf_counter()
            planned_run = prepare.plan_run(client, campaign, options, "manual__bench")
            plan_run_s = time.perf_counter() - started
            result = planned_run.info_json()
            shards = [s.to_json() for s in planned_run.shards]
            refs = [
                r.to_json()
                for r in prepare.publish_shards(client, campaign, "manual__bench", planned_run.shards)
            ]
            publish_s = time.perf_counter() - started - plan_run_s
            objects = sum(
                page.get("KeyCount", 0)
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            )

    shards_bytes = len(json.dumps(refs).encode())
    descriptors_bytes = len(json.dumps(shards).encode())
    info_bytes = len(json.dumps(result).encode())
    largest = max(len(json.dumps(s).encode()) for s in shards)
    return {
        "suite": "plan_scale",
        "specs": specs,
        "designs_per_spec": designs,
        "designs": specs * designs,
        "shards": len(shards),
        "work_items": sum(len(s["items"]) for s in shards),
        "preset": auto_preset(specs * designs)
        if campaign.scaling.preset == "auto"
        else campaign.scaling.preset,
        "repeats": repeats,
        "load_ms": round(median(load_s) * 1000, 2),
        "discover_specs_ms": round(median(discover_s) * 1000, 2),
        "plan_ms": round(median(plan_s) * 1000, 2),
        "load_and_plan_ms": round((median(load_s) + median(plan_s)) * 1000, 2),
        "plan_run_s": round(plan_run_s, 3),
        "plan_run_note": "run.prepare.plan_run against moto's in-process S3: discovery, staging, "
        "work.json per shard stage, manifests",
        "publish_shards_s": round(publish_s, 3),
        "s3_objects_written": objects,
        "xcom_return_bytes": shards_bytes,
        "shard_descriptors_bytes": descriptors_bytes,
        # Each shard stage resolves the map input in three task runs: start, resume, check.
        "xcom_pulled_by_all_shard_tasks_bytes": shards_bytes * len(shards) * 3 * len(SHARD_STAGES),
        # ... and what they would pull if the map input held the descriptors themselves.
        "xcom_pulled_if_descriptors_bytes": descriptors_bytes * len(shards) * 3 * len(SHARD_STAGES),
        "xcom_plan_info_bytes": info_bytes,
        "xcom_total_bytes": shards_bytes + info_bytes,
        "xcom_bytes_per_shard": round(shards_bytes / len(shards), 1),
        "largest_shard_descriptor_bytes": largest,
        "estimate_makespan_hours": plan.estimate.makespan_hours,
        "load_average_before": before,
    }


def report(document: dict[str, Any]) -> str:
    """
    The figures as a table.

    :param document: from :func:`run`.
    """
    rows = [
        ["load campaign", f"{document['load_ms']:.1f} ms"],
        ["discover + hash specs", f"{document['discover_specs_ms']:.1f} ms"],
        ["plan (pure)", f"{document['plan_ms']:.1f} ms"],
        [
            "plan_run (with S3 writes)",
            f"{document['plan_run_s']:.2f} s ({document['s3_objects_written']} objects)",
        ],
        ["publish_shards (descriptors to S3)", f"{document['publish_shards_s']:.2f} s"],
        ["XCom return (shard references)", f"{document['xcom_return_bytes']:,} B"],
        ["shard descriptors (in S3, not XCom)", f"{document['shard_descriptors_bytes']:,} B"],
        ["XCom plan_info", f"{document['xcom_plan_info_bytes']:,} B"],
        [
            "per shard: reference / largest descriptor",
            f"{document['xcom_bytes_per_shard']:,.0f} B / {document['largest_shard_descriptor_bytes']:,} B",
        ],
        [
            "pulled by the shard tasks (3 task runs per shard stage)",
            f"{document['xcom_pulled_by_all_shard_tasks_bytes']:,} B "
            f"(descriptors as map input: {document['xcom_pulled_if_descriptors_bytes']:,} B)",
        ],
    ]
    return (
        f"Planning {document['specs']} specs x {document['designs_per_spec']:,} designs "
        f"({document['shards']} shards, {document['work_items']} work items, preset {document['preset']})\n"
        + table(["what", "figure"], rows)
    )


def main(smoke: bool = False, folder: Path | None = None) -> dict[str, Any]:
    """
    Run the suite, print its table and write ``plan_scale.json``.

    :param smoke: 2 specs x 100 designs, once.
    :param folder: where to write the JSON.
    """
    document = run(specs=2, designs=100, repeats=1) if smoke else run()
    write_result("plan_scale", document, folder)
    print(report(document))
    return document


if __name__ == "__main__":
    main("--smoke" in sys.argv)

"""
Fixtures of the campaign view tests: a run folder in S3 (moto server) holding real BoltzGen-layout
output, made by the BoltzGen simulator's ``boltzgen run`` for one spec, published the way the
``report`` task publishes it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.storage.layout import Layout

PROJECT = Path(__file__).resolve().parents[2]
SPEC = "vanilla_protein/1g13prot.yaml"
NUM_DESIGNS, BUDGET = 120, 6
RUN_ID = "manual__2026-03-01T10:00:00+00:00"
BUCKET = "bg-view-api"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PublishedRun:
    """A run folder in S3 and what made it."""

    client: Any
    campaign: Campaign
    run_id: str
    output: Path
    metrics_csv: Path


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[Any]:
    """A boto3 S3 client of a moto server on loopback."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
    finally:
        server.stop()


def _simulate(out: Path) -> None:
    env = {**os.environ, "BOLTZGEN_SIM_GPUS": "1", "BOLTZGEN_SIM_SEED": "7"}
    command = [
        str(Path(sys.executable).with_name("boltzgen-sim")),
        "run",
        str(PROJECT / "include" / "specs" / SPEC),
        "--output",
        str(out),
        "--protocol",
        "protein-anything",
        "--num_designs",
        str(NUM_DESIGNS),
        "--budget",
        str(BUDGET),
        "--diffusion_batch_size",
        "10",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True)


def _put_tree(client: Any, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=BUCKET, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes()
            )


def _put_json(client: Any, key: str, document: Any) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(document).encode())


@pytest.fixture(scope="session")
def published_run(moto_s3: Any, tmp_path_factory: pytest.TempPathFactory) -> PublishedRun:
    """One spec's run: results/ and report CSVs, run.json, shards.json, the analysis commit."""
    root = tmp_path_factory.mktemp("view-run")
    output = root / "boltzgen"
    _simulate(output)
    campaign_file = root / "view.yaml"
    campaign_file.write_text(
        f"name: view\naws:\n  bucket: {BUCKET}\n  prefix: bg\n"
        "  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing\n  image_uri: boltzgen-sim:latest\n"
        f"design:\n  specs: {PROJECT / 'include' / 'specs'}\n"
        f"  num_designs: {NUM_DESIGNS}\n  budget: {BUDGET}\n"
    )
    campaign = load_campaign(campaign_file, environ={})
    client = moto_s3
    client.create_bucket(Bucket=BUCKET)
    layout = Layout(BUCKET, "bg")
    run = layout.run_prefix(campaign.name, RUN_ID)
    # What report publishes: the filtering attempt's output under results/<spec without .yaml>/.
    _put_tree(
        client,
        output / "final_ranked_designs",
        f"{run}results/vanilla_protein/1g13prot/final_ranked_designs/",
    )
    # The analysis attempt of the one shard: every design's refolded structure.
    attempt = layout.attempt_prefix("analysis", "a" * 16, "bg-view-ana-s0000-0123456789")
    item = f"{attempt}vanilla_protein--1g13prot.000-{NUM_DESIGNS}/"
    shutil.copytree(output / "intermediate_designs_inverse_folded" / "refold_cif", root / "refold_cif")
    _put_tree(client, root / "refold_cif", item + "intermediate_designs_inverse_folded/refold_cif/")
    commit_key = layout.commit_key("analysis", "a" * 16)
    _put_json(
        client, commit_key, {"schema": 1, "stage": "analysis", "attempt_prefix": attempt, "run_id": RUN_ID}
    )
    _put_json(
        client,
        layout.shards_key(campaign.name, RUN_ID),
        {"shards": [{"shard": "s0000", "specs": [SPEC], "stages": {"analysis": {"commit_key": commit_key}}}]},
    )
    stages = {
        s: {"status": "committed", "job_name": f"bg-view-{s[:3]}-s0000-0123456789", "seconds": 10.0}
        for s in ("design", "inverse_folding", "folding", "analysis")
    }
    _put_json(
        client,
        layout.run_manifest_key(campaign.name, RUN_ID),
        {
            "campaign": campaign.name,
            "run_id": RUN_ID,
            "dag_id": campaign.dag_id,
            "status": "complete",
            "started_at": "2026-03-01T10:00:00+00:00",
            "finished_at": "2026-03-01T10:30:00+00:00",
            "estimate": {"instance_hours": 1.5, "cost_usd": 2.25, "stages": {}},
            "actual": {"instance_hours": 1.25, "cost_usd": 1.75, "stages": {}},
            "specs": [
                {
                    "spec": SPEC,
                    "status": "complete",
                    "shards_total": 1,
                    "shards_committed": 1,
                    "missing_shards": [],
                    "designs_expected": NUM_DESIGNS,
                    "designs_produced": NUM_DESIGNS,
                    "final_designs": BUDGET,
                }
            ],
            "shards": [{"shard": "s0000", "specs": [SPEC], "stages": stages}],
        },
    )
    client.put_object(Bucket=BUCKET, Key=f"{run}report/index.html", Body=b"<!DOCTYPE html><title>r</title>")
    return PublishedRun(
        client, campaign, RUN_ID, output, output / "final_ranked_designs" / "all_designs_metrics.csv"
    )

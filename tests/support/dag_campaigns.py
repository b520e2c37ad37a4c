"""A small campaign over two of the example specs, as the DAG tests run it."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
#: Designs of each spec: one design per shard, so as many shards per spec (two keep a spec partial
#: when one of its shards fails, and each job short).
DESIGNS_PER_SPEC = 2
E2E_CAMPAIGN = """\
name: {name}
description: Two example specs through every stage on the local stack.
owner: e2e
tags: [e2e]
retries: 0
aws:
  bucket: {bucket}
  prefix: e2e
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "{include}"
  protocol: protein-anything
  num_designs: {designs}
  budget: 2
  diffusion_batch_size: 1
scaling:
  preset: small
sharding:
  target_hours: 0.01
  pack_filtering: false
# One job per shard stage and one filtering job per spec, as the tests count them.
stages:
  fuse: none
"""


def write_campaign(folder: Path, name: str, bucket: str, include: str = "[vz]*/*.yaml") -> Path:
    """Write a small campaign over two of the example specs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    fields = {"name": name, "bucket": bucket, "include": include, "designs": DESIGNS_PER_SPEC}
    text = E2E_CAMPAIGN.format(specs=PROJECT / "include" / "specs", **fields)
    path.write_text(text)
    return path

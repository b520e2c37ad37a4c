"""Time campaign loading and planning of 100 specs x 10,000 designs (what the plan task does)."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from boltzgen_airflow.campaign.loading import load_campaign  # noqa: E402
from boltzgen_airflow.campaign.specs import SpecBundle  # noqa: E402
from boltzgen_airflow.planning.plan import plan_campaign  # noqa: E402

CAMPAIGN = """
name: bench
aws:
  bucket: bench-bucket
  role_arn: arn:aws:iam::123456789012:role/boltzgen
  image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2
design:
  specs: specs
  num_designs: 10000
  budget: 100
  diffusion_batch_size: 10
scaling:
  preset: xlarge
  design: {instance_type: ml.g5.12xlarge}
sharding:
  target_hours: 2
"""


def main(repeats: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "specs").mkdir()
        path = folder / "bench.yaml"
        path.write_text(CAMPAIGN)
        bundles = [
            SpecBundle(spec=f"targets/spec{i:03d}.yaml", hash=f"{i:064x}", residues=80 + (i * 37) % 500)
            for i in range(100)
        ]
        load_times, plan_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            campaign = load_campaign(path, {})
            loaded = time.perf_counter()
            plan = plan_campaign(campaign, bundles)
            done = time.perf_counter()
            load_times.append(loaded - start)
            plan_times.append(done - loaded)
    est = plan.estimate
    print(
        f"campaign load: median {statistics.median(load_times) * 1000:.1f} ms "
        f"(first {load_times[0] * 1000:.1f} ms)"
    )
    print(
        f"plan 100 specs x 10,000 designs: median {statistics.median(plan_times) * 1000:.1f} ms "
        f"(first {plan_times[0] * 1000:.1f} ms)"
    )
    print(f"  {len(plan.shards)} shards, {sum(len(s.items) for s in plan.shards)} work items")
    print(
        f"  makespan {est.makespan_hours:.1f} h (lower bound {est.lower_bound_hours:.1f} h), "
        f"{est.gpu_hours:,.0f} GPU-h, ${est.cost_usd:,.0f}"
    )


if __name__ == "__main__":
    main()

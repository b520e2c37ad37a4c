"""Synthetic but realistic campaign results: BoltzGen 0.3.2 metric CSVs and a run manifest."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boltzgen_airflow.report.model import Report

AMINO_ACIDS = [
    "ALA",
    "ARG",
    "ASN",
    "ASP",
    "CYS",
    "GLN",
    "GLU",
    "GLY",
    "HIS",
    "ILE",
    "LEU",
    "LYS",
    "MET",
    "PHE",
    "PRO",
    "SER",
    "THR",
    "TRP",
    "TYR",
    "VAL",
]
ONE_LETTER = "ARNDCQEGHILKMFPSTWYV"
RMSD_THRESHOLD = 2.5
# BoltzGen 0.3.2's default ranking metrics (boltzgen/task/filter/filter.py), metric -> inverse importance.
RANK_METRICS = {
    "design_to_target_iptm": 1,
    "design_ptm": 1,
    "neg_min_design_to_target_pae": 1,
    "plip_hbonds_refolded": 2,
    "plip_saltbridge_refolded": 2,
    "delta_sasa_refolded": 2,
}
FILTERS = [
    ("has_x", 0.0),
    ("filter_rmsd", RMSD_THRESHOLD),
    ("filter_rmsd_design", RMSD_THRESHOLD),
    ("designfolding-filter_rmsd", RMSD_THRESHOLD),
    ("ALA_fraction", 0.3),
    ("GLY_fraction", 0.3),
    ("GLU_fraction", 0.3),
    ("LEU_fraction", 0.3),
    ("VAL_fraction", 0.3),
]
# The column order BoltzGen writes: priority columns first, then the rest.
PRIORITY = [
    "id",
    "final_rank",
    "designed_sequence",
    "designed_chain_sequence",
    "num_design",
    "design_to_target_iptm",
    "min_design_to_target_pae",
    "design_ptm",
    "filter_rmsd",
    "designfolding-filter_rmsd",
    "plip_hbonds_refolded",
    "delta_sasa_refolded",
    "design_hydrophobicity",
    "loop",
    "helix",
    "sheet",
]


def _design(rng: random.Random, ident: str, target: str) -> dict[str, Any]:
    length = rng.randint(60, 120)
    sequence = "".join(rng.choice(ONE_LETTER) for _ in range(length))
    if rng.random() < 0.04:
        sequence = sequence[:10] + "X" + sequence[11:]
    fractions = {aa: sequence.count(code) / length for aa, code in zip(AMINO_ACIDS, ONE_LETTER, strict=True)}
    if rng.random() < 0.08:  # an alanine-rich design that the biased-composition filter removes
        fractions["ALA"] = round(rng.uniform(0.31, 0.45), 5)
    bb_rmsd = rng.lognormvariate(0.4, 0.6)
    pae = rng.uniform(1.5, 18.0)
    row: dict[str, Any] = {
        "id": ident,
        "file_name": f"{ident}.cif",
        "designed_sequence": sequence,
        "designed_chain_sequence": sequence,
        "num_design": length,
        **{f"{aa}_fraction": round(fractions[aa], 5) for aa in AMINO_ACIDS},
        "UNK_fraction": 0.0,
        "loop": round(rng.uniform(0.1, 0.5), 5),
        "helix": round(rng.uniform(0.2, 0.8), 5),
        "sheet": round(rng.uniform(0.0, 0.3), 5),
        "liability_score": round(rng.uniform(0, 10), 5),
        "bb_rmsd": round(bb_rmsd, 5),
        "bb_rmsd_design": round(bb_rmsd * rng.uniform(0.6, 1.1), 5),
        "designfolding-bb_rmsd": round(bb_rmsd * rng.uniform(0.7, 1.4), 5),
        "iptm": round(rng.uniform(0.2, 0.95), 5),
        "ptm": round(rng.uniform(0.4, 0.95), 5),
        "design_to_target_iptm": round(rng.betavariate(5, 3), 5),
        "design_ptm": round(rng.betavariate(6, 2), 5),
        "design_iptm": round(rng.uniform(0.2, 0.95), 5),
        "min_design_to_target_pae": round(pae, 5),
        "min_interaction_pae": round(pae * 0.9, 5),
        "complex_plddt": round(rng.uniform(0.5, 0.95), 5),
        "delta_sasa_refolded": round(rng.uniform(400, 2200), 5),
        "plip_hbonds_refolded": rng.randint(0, 14),
        "plip_saltbridge_refolded": rng.randint(0, 6),
        "design_hydrophobicity": round(rng.uniform(-1, 1), 5),
        "target_id": target,
    }
    row["filter_rmsd"] = row["bb_rmsd"]
    row["filter_rmsd_design"] = row["bb_rmsd_design"]
    row["designfolding-filter_rmsd"] = row["designfolding-bb_rmsd"]
    row["neg_min_design_to_target_pae"] = -row["min_design_to_target_pae"]
    row["has_x"] = "X" in sequence
    return row


def _rank_min_desc(keys: list[tuple[float, float]]) -> list[int]:
    """pandas ``rank(method="min", ascending=False)`` of tuples."""
    return [1 + sum(1 for other in keys if other > key) for key in keys]


def boltzgen_filter(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BoltzGen 0.3.2's filter_df + sort_df on plain dicts: pass flags, ranks, final_rank, quality_score."""
    seen: set[str] = set()
    rows = [r for r in rows if not (r["designed_sequence"] in seen or seen.add(r["designed_sequence"]))]
    for row in rows:
        row["num_filters_passed"] = 0
        passed_so_far = True
        for feature, threshold in FILTERS:
            ok = float(row[feature]) <= threshold
            row[f"pass_{feature}_filter"] = ok
            passed_so_far = passed_so_far and ok
            row["num_filters_passed"] += int(passed_so_far)
        row["pass_filters"] = passed_so_far
    for metric, weight in RANK_METRICS.items():
        ranks = _rank_min_desc([(r["num_filters_passed"], float(r[metric])) for r in rows])
        for row, rank in zip(rows, ranks, strict=True):
            row[f"rank_{metric}"] = rank / weight
    for row in rows:
        row["max_rank"] = max(row[f"rank_{m}"] for m in RANK_METRICS)
    dense = {v: i + 1 for i, v in enumerate(sorted({r["max_rank"] for r in rows}))}
    for row in rows:
        row["secondary_rank"] = dense[row["max_rank"]]
    rows.sort(key=lambda r: (r["secondary_rank"], -r["design_to_target_iptm"]))
    for i, row in enumerate(rows):
        row["final_rank"] = i + 1
        row["quality_score"] = round(1 - i / (len(rows) - 1), 5)
    return rows


def select_final(rng: random.Random, ranked: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """A stand-in for the diversity selection: mostly the best, some skipped; kept in rank order."""
    chosen = [r for r in ranked[: budget * 2] if rng.random() < 0.7][:budget]
    return [{**r, "sequence": r["designed_sequence"]} for r in sorted(chosen, key=lambda r: r["final_rank"])]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    header = [c for c in PRIORITY if c in rows[0]] + [c for c in rows[0] if c not in PRIORITY]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


@dataclass
class SpecFixture:
    name: str
    folder: Path
    ranked: list[dict[str, Any]]
    final: list[dict[str, Any]]
    budget: int


def make_spec(rng: random.Random, root: Path, name: str, stem: str, count: int, budget: int) -> SpecFixture:
    width = len(str(count - 1))
    rows = [_design(rng, f"{stem}_{i:0{width}d}", stem.split("_", maxsplit=1)[0]) for i in range(count)]
    ranked = boltzgen_filter(rows)
    final = select_final(rng, ranked, budget)
    folder = root / stem / "final_ranked_designs"
    write_csv(folder / "all_designs_metrics.csv", ranked)
    write_csv(folder / f"final_designs_metrics_{budget}.csv", final)
    return SpecFixture(name, folder, ranked, final, budget)


def make_manifest(
    specs: list[SpecFixture], shards_per_spec: int = 3, failures: dict[str, str] | None = None
) -> dict[str, Any]:
    """
    A run manifest for the specs, with shard stage statuses.

    :param failures: shard id -> the stage that failed there; later stages are then missing.
    """
    failures = failures or {}
    stages = ["design", "inverse_folding", "folding", "analysis"]
    shards = []
    spec_entries = []
    index = 0
    for spec in specs:
        per_shard = len(spec.ranked) // shards_per_spec
        missing = []
        for _ in range(shards_per_spec):
            shard = f"s{index:04d}"
            index += 1
            failed_at = failures.get(shard)
            entry_stages: dict[str, Any] = {}
            broken = False
            for n, stage in enumerate(stages):
                if broken:
                    entry_stages[stage] = {"status": "missing", "job_name": "", "seconds": None}
                    continue
                status = (
                    "failed" if stage == failed_at else ("cached" if n == 0 and index % 2 else "committed")
                )
                entry_stages[stage] = {
                    "status": status,
                    "job_name": f"bg-demo-{stage.replace('_', '-')}-{shard}-a1",
                    "seconds": 600.0 + 37 * n + index,
                    "designs_expected": per_shard,
                    "designs_produced": 0 if status == "failed" else per_shard,
                }
                broken = status == "failed"
            if failed_at:
                missing.append(shard)
            shards.append({"shard": shard, "spec": spec.name, "stages": entry_stages})
        spec_entries.append(
            {
                "spec": spec.name,
                "status": "partial" if missing else "complete",
                "shards_total": shards_per_spec,
                "shards_committed": shards_per_spec - len(missing),
                "missing_shards": missing,
                "designs_expected": per_shard * shards_per_spec,
                "designs_produced": per_shard * (shards_per_spec - len(missing)),
                "final_designs": len(spec.final),
            }
        )
        shards.append(
            {
                "shard": f"filter-{spec.folder.parent.name}",
                "spec": spec.name,
                "stages": {
                    "filtering": {"status": "committed", "job_name": "bg-demo-filtering", "seconds": 95.0}
                },
            }
        )
    return {
        "campaign": "demo-binders",
        "run_id": "manual__2026-03-02T10:15:00+00:00",
        "dag_id": "boltzgen__demo-binders",
        "started_at": "2026-03-02T10:15:00+00:00",
        "finished_at": "2026-03-02T13:45:00+00:00",
        "status": "partial" if failures else "complete",
        "results_prefix": "s3://bg-results/boltzgen/campaigns/demo-binders/runs/manual__2026-03-02T10-15-00",
        "estimate": {
            "makespan_hours": 3.2,
            "lower_bound_hours": 2.4,
            "gpu_hours": 9.75,
            "instance_hours": 11.5,
            "cost_usd": 14.25,
            "stages": {
                "design": {"instance_hours": 2.0, "cost_usd": 2.42},
                "inverse_folding": {"instance_hours": 0.5, "cost_usd": 0.61},
                "folding": {"instance_hours": 7.25, "cost_usd": 10.12},
                "analysis": {"instance_hours": 1.5, "cost_usd": 0.9},
                "filtering": {"instance_hours": 0.25, "cost_usd": 0.2},
            },
        },
        "actual": {
            "instance_hours": 12.75,
            "cost_usd": 16.41,
            "wall_hours": 3.5,
            "stages": {
                "design": {"instance_hours": 2.5, "cost_usd": 3.03, "jobs": 6},
                "inverse_folding": {"instance_hours": 0.4, "cost_usd": 0.48, "jobs": 6},
                "folding": {"instance_hours": 8.1, "cost_usd": 10.85, "jobs": 6},
                "analysis": {"instance_hours": 1.5, "cost_usd": 1.85, "jobs": 6},
                "filtering": {"instance_hours": 0.25, "cost_usd": 0.2, "jobs": 2},
            },
        },
        "specs": spec_entries,
        "shards": shards,
    }


@dataclass
class RenderedRun:
    specs: list[SpecFixture]
    manifest: dict[str, Any]
    report: Report
    html: str
    written: list[Path]

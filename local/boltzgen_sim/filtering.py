"""`filtering` step: BoltzGen's hard filters, rank-based quality and lazy-greedy diversity selection."""

from __future__ import annotations

import heapq
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from boltzgen_sim.knobs import Knobs

#: The smallest valid PDF: one empty page.
TINY_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def build_filters(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The hard filters, in BoltzGen's order."""
    threshold = float(cfg.get("refolding_rmsd_threshold", 2.5))
    filters: list[dict[str, Any]] = [
        {"feature": "has_x", "lower_is_better": True, "threshold": 0},
        {"feature": "filter_rmsd", "lower_is_better": True, "threshold": threshold},
        {"feature": "filter_rmsd_design", "lower_is_better": True, "threshold": threshold},
    ]
    if cfg.get("filter_designfolding", True):
        filters.append(
            {"feature": "designfolding-filter_rmsd", "lower_is_better": True, "threshold": threshold}
        )
    if cfg.get("filter_cysteine", True):
        filters.append({"feature": "CYS_fraction", "lower_is_better": True, "threshold": 0})
    if cfg.get("filter_biased", True):
        for aa in ("ALA", "GLY", "GLU", "LEU", "VAL"):
            filters.append({"feature": f"{aa}_fraction", "lower_is_better": True, "threshold": 0.3})
    filters.extend(cfg.get("additional_filters") or [])
    return filters


def build_metrics(cfg: dict[str, Any]) -> dict[str, float]:
    """Ranking metrics with their inverse-importance weights, after ``metrics_override``."""
    inv = bool(cfg.get("from_inverse_folded", True))
    suffix = "_refolded" if inv else ""
    metrics: dict[str, float] = {
        "design_to_target_iptm": 1, "design_ptm": 1, "neg_min_design_to_target_pae": 1,
        "plip_hbonds" + suffix: 2, "plip_saltbridge" + suffix: 2,
        "delta_sasa_refolded" if inv else "delta_sasa_original": 2,
    }  # fmt: skip
    if cfg.get("use_affinity"):
        metrics = {
            "design_to_target_iptm": 1.1,
            "design_ptm": 1.1,
            "neg_min_design_to_target_pae": 1.1,
            "affinity_probability_binary1": 1,
            "plip_hbonds" + suffix: 2,
            "plip_saltbridge" + suffix: 2,
            "delta_sasa_refolded" if inv else "delta_sasa_original": 2,
        }
    for key, value in (cfg.get("metrics_override") or {}).items():
        if value is None:
            metrics.pop(key, None)
        else:
            metrics[key] = float(value)
    return metrics


def run_filtering(cfg: dict[str, Any], knobs: Knobs) -> None:
    """Filter, rank and select ``budget`` diverse designs into ``<outdir>/final_ranked_designs``."""
    design_dir = Path(cfg["design_dir"])
    budget = int(cfg.get("budget", 30))
    top_budget = int(cfg.get("top_budget", 10))
    alpha = float(cfg.get("alpha", 0.1))
    outdir = Path(cfg.get("outdir") or design_dir) / "final_ranked_designs"
    top_dir = outdir / f"intermediate_ranked_{top_budget}_designs"
    div_dir = outdir / f"final_{budget}_designs"
    csv_files = sorted(design_dir.glob("aggregate_metrics_*.csv"))
    if not csv_files:
        raise FileNotFoundError(f"No file starting with 'aggregate_metrics_' found in {design_dir}")
    df = pd.read_csv(csv_files[0])
    if outdir.exists():
        shutil.rmtree(outdir)
    for d in (outdir, top_dir, div_dir):
        d.mkdir(parents=True, exist_ok=True)

    inv = bool(cfg.get("from_inverse_folded", True))
    df["filter_rmsd"] = df["bb_rmsd"] if inv else df["rmsd"]
    df["filter_rmsd_design"] = df["bb_rmsd_design"] if inv else df["rmsd_design"]
    if "designfolding-rmsd" in df:
        df["designfolding-filter_rmsd"] = df["designfolding-rmsd"]
    if "designfolding-bb_rmsd" in df and inv:
        df["designfolding-filter_rmsd"] = df["designfolding-bb_rmsd"]
    if "min_design_to_target_pae" in df:
        df["neg_min_design_to_target_pae"] = -df["min_design_to_target_pae"]
    if "design_hydrophobicity" in df:
        df["neg_design_hydrophobicity"] = -df["design_hydrophobicity"]
    if "design_largest_hydrophobic_patch_refolded" in df:
        df["neg_design_largest_hydrophobic_patch_refolded"] = -df["design_largest_hydrophobic_patch_refolded"]
    df["neg_min_interaction_pae"] = -df["min_interaction_pae"]
    df["neg_filter_rmsd"] = -df["filter_rmsd"]
    df["neg_filter_rmsd_design"] = -df["filter_rmsd_design"]
    df["has_x"] = df["designed_sequence"].str.contains("X")
    print(f"Total number of designs: {len(df):>5}")
    before = len(df)
    df = df.drop_duplicates(subset="designed_sequence", keep="first")
    print(f"Duplicates found: {before - len(df)}. Removing duplicates. {len(df)} designs remain.\n")

    df["num_filters_passed"] = 0
    cols: list[str] = []
    for flt in build_filters(cfg):
        feat = flt["feature"]
        if feat not in df:
            raise KeyError(feat)
        col = f"pass_{feat}_filter"
        cols.append(col)
        df[col] = df[feat] <= flt["threshold"] if flt["lower_is_better"] else df[feat] >= flt["threshold"]
        df["num_filters_passed"] += df[cols].all(axis=1)
        df["pass_filters"] = df[cols].all(axis=1)
        print(f"Num designs that pass the {feat} filter with threshold {flt['threshold']}: {df[col].sum()}")
    num_pass = int(df["pass_filters"].sum())
    if num_pass < top_budget or num_pass < budget:
        print(f"Only {num_pass} designs pass filters. We highly recommend relaxing the thresholds.")

    rank_df = pd.DataFrame(index=df.index)
    for col, weight in build_metrics(cfg).items():
        rank_df[f"rank_{col}"] = (
            df[["num_filters_passed", col]]
            .apply(tuple, axis=1)
            .rank(method="min", ascending=False)
            .astype(int)
            / weight
        )
    df = pd.concat([df, rank_df], axis=1)
    df["max_rank"] = rank_df.max(axis=1)
    df = df.sort_values("max_rank")
    df["secondary_rank"] = df["max_rank"].rank(method="dense").astype(int)
    tie = "design_to_target_iptm" if "design_to_target_iptm" in df else "design_iptm"
    df = df.sort_values(by=["secondary_rank", tie], ascending=[True, False])
    df["final_rank"] = np.arange(1, len(df) + 1)
    # As BoltzGen: one design divides 0 by 0, so its quality_score is NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        df["quality_score"] = 1 - (df["final_rank"] - 1) / np.float64(len(df) - 1)
    first = priority_columns(df, inv)
    df = df[first + [c for c in df.columns if c not in first]]

    seqs = pd.read_pickle(design_dir / "ca_coords_sequences.pkl.gz")  # noqa: S301
    seqs_df = seqs[["id", "sequence"]]
    df_m = pd.merge(df, seqs_df, on="id", how="inner").reset_index(drop=True)
    selection = _lazy_greedy(df_m, budget, alpha, cfg.get("size_buckets") or [])
    df_div = df_m.iloc[selection].reset_index(drop=True)

    digits = len(str(len(df)))
    (top_dir / "before_refolding").mkdir(parents=True, exist_ok=True)
    for i, (_, row) in enumerate(df[:top_budget].iterrows()):
        new = f"rank{i:0{digits}d}_{row['file_name']}"
        shutil.copy2(design_dir / row["file_name"], top_dir / "before_refolding" / new)
        shutil.copy2(design_dir / "refold_cif" / row["file_name"], top_dir / new)
    (div_dir / "before_refolding").mkdir(parents=True, exist_ok=True)
    for i in selection:
        name = df_m.loc[i, "file_name"]
        new = f"rank{int(df_m.loc[i, 'final_rank']):0{digits}d}_{name}"
        shutil.copy2(design_dir / name, div_dir / "before_refolding" / new)
        shutil.copy2(design_dir / "refold_cif" / name, div_dir / new)
    df_div.to_csv(outdir / f"final_designs_metrics_{budget}.csv", index=False)
    df.to_csv(outdir / "all_designs_metrics.csv", index=False)
    (outdir / "results_overview.pdf").write_bytes(TINY_PDF)
    print("Files + CSV saved to", outdir)


def priority_columns(df: pd.DataFrame, inv: bool) -> list[str]:
    """The columns Filter.sort_df puts first, in its order.

    BoltzGen 0.3.2 lacks a comma after ``"filter_rmsd"`` in its list, so it names a column
    ``"filter_rmsdplip_saltbridge..."`` that never exists (or, with design folding, the
    design-folding column alone): ``plip_saltbridge*`` is not among the first columns. Same here.
    """
    suffix = "_refolded" if inv else ""
    tie = "design_to_target_iptm" if "design_to_target_iptm" in df else "design_iptm"
    pae = "min_design_to_target_pae" if "min_design_to_target_pae" in df else "min_interaction_pae"
    rmsd_design = (
        "designfolding-filter_rmsd"
        if "designfolding-filter_rmsd" in df
        else "filter_rmsdplip_saltbridge" + suffix
    )
    candidates = [
        "id", "final_rank", "designed_sequence", "designed_chain_sequence", "num_design",
        "affinity_probability_binary1", tie, pae, "design_ptm", "filter_rmsd", rmsd_design,
        "plip_hbonds" + suffix, "delta_sasa_refolded", "design_largest_hydrophobic_patch_refolded",
        "design_chain_hydrophobicity", "design_hydrophobicity", "loop", "helix", "sheet",
    ]  # fmt: skip
    return [c for c in candidates if c in df.columns]


def _lazy_greedy(df_m: pd.DataFrame, k: int, alpha: float, buckets_cfg: list[dict[str, int]]) -> list[int]:
    seqs = df_m["sequence"].tolist()
    quality = df_m["quality_score"].to_numpy()
    if len(quality) <= k:
        return list(range(len(quality)))
    from Bio import Align

    aligner = Align.PairwiseAligner()  # BoltzGen's scoring: the defaults
    cache: dict[tuple[int, int], float] = {}

    def sim(i: int, j: int) -> float:
        if i == j:
            return 1.0
        key = (min(i, j), max(i, j))
        if key not in cache:
            cache[key] = aligner.align(seqs[i], seqs[j])[0].score / max(len(seqs[i]), len(seqs[j]))
        return cache[key]

    def bucket_of(n: int) -> int:
        # The last bucket that holds n (Filter.select_lazy_greedy keeps looking after a match).
        found = [idx for idx, b in enumerate(buckets_cfg) if b["min"] <= n < b["max"]]
        return found[-1] if found else len(buckets_cfg)

    selected = [int(np.argmax(quality))]
    buckets = np.zeros(len(buckets_cfg) + 1)
    first_len = len(seqs[selected[0]])
    # ... while the first design counts in the first bucket that holds it, and in none otherwise.
    for idx, spec in enumerate(buckets_cfg):
        if spec["min"] <= first_len < spec["max"]:
            buckets[idx] += 1
            break
    heap = [
        (-((1 - alpha) * quality[i] + alpha * (1 - sim(i, selected[0]))), i)
        for i in range(len(quality))
        if i != selected[0]
    ]
    heapq.heapify(heap)
    for _ in range(k - 1):
        while True:
            # An empty heap raises IndexError here, as in BoltzGen, when the buckets leave too few designs.
            _, cand = heapq.heappop(heap)
            b = bucket_of(len(seqs[cand]))
            if b < len(buckets_cfg) and buckets[b] == buckets_cfg[b]["num_designs"]:
                continue
            gain = (1 - alpha) * quality[cand] + alpha * (1 - max(sim(cand, j) for j in selected))
            heapq.heappush(heap, (-gain, cand))
            if heap[0][1] == cand:
                heapq.heappop(heap)
                selected.append(cand)
                buckets[b] += 1
                break
    return sorted(selected)

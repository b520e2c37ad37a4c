"""Example spec bundles kept under an ``s3://`` prefix, and a campaign that plans them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boltzgen_airflow.campaign.loading import parse_campaign
from boltzgen_airflow.campaign.model import Campaign

PROJECT = Path(__file__).resolve().parents[2]
SPECS = PROJECT / "include" / "specs"
SPEC_PREFIX = "library/specs"
VANILLA = "vanilla_protein/1g13prot.yaml"
PEPTIDES = "binding_disordered_peptides/tpp4.yaml"
ZINC = "denovo_zinc_finger_against_dna/zinc_finger.yaml"
FILES = {
    VANILLA: ["vanilla_protein/1g13.cif"],
    PEPTIDES: [],
    ZINC: ["denovo_zinc_finger_against_dna/zf.cif"],
}


def upload(client: Any, bucket: str, *rels: str) -> None:
    """Copy example spec files under the specs prefix."""
    for rel in rels:
        client.put_object(Bucket=bucket, Key=f"{SPEC_PREFIX}/{rel}", Body=(SPECS / rel).read_bytes())


def campaign(bucket: str, **design: Any) -> Campaign:
    """A campaign whose specs are the prefix, run into ``bucket``; ``design``: more design settings."""
    data = {
        "name": "s3specs",
        "aws": {
            "bucket": bucket,
            "prefix": "runs",
            "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
            "image_uri": "boltzgen-sim:latest",
        },
        "design": {"specs": f"s3://{bucket}/{SPEC_PREFIX}/", "num_designs": 4, "budget": 2, **design},
        "scaling": {"preset": "small"},
        "sharding": {"target_hours": 0.05},
    }
    return parse_campaign(data, "s3specs.yaml", {})

"""Fixtures of the report tests: seeded BoltzGen outputs for two specs and a partial run over them."""

from __future__ import annotations

import random

import pytest
from report_synthetic import RenderedRun, SpecFixture, make_manifest, make_spec

from boltzgen_airflow.report.model import SpecResult, build_report
from boltzgen_airflow.report.rendering import write_report


@pytest.fixture(scope="session")
def two_specs(tmp_path_factory: pytest.TempPathFactory) -> list[SpecFixture]:
    """Two specs' filtering outputs (seeded), written as BoltzGen writes them."""
    root = tmp_path_factory.mktemp("results")
    rng = random.Random(20260302)
    return [
        make_spec(rng, root, "binders/pdl1_binder.yaml", "pdl1_binder", 60, 12),
        make_spec(rng, root, "binders/il6_binder.yaml", "il6_binder", 45, 8),
    ]


@pytest.fixture(scope="session")
def partial_run(two_specs: list[SpecFixture], tmp_path_factory: pytest.TempPathFactory) -> RenderedRun:
    """A run whose shard s0001 failed at folding (so its analysis is missing), written once."""
    manifest = make_manifest(two_specs, failures={"s0001": "folding"})
    results = {spec.name: SpecResult.from_directory(spec.folder) for spec in two_specs}
    report = build_report(manifest, results)
    written = write_report(report, tmp_path_factory.mktemp("report"))
    return RenderedRun(two_specs, manifest, report, written[0].read_text(encoding="utf-8"), written)

"""The campaign report shows what the manifest and BoltzGen's metric CSVs hold, safely and offline."""

from __future__ import annotations

import base64
import csv
import random
import re
from pathlib import Path

import pytest
from report_html import Element, parse
from report_synthetic import RenderedRun, SpecFixture, make_manifest, make_spec, write_csv

from boltzgen_airflow.exceptions import ReportInputError
from boltzgen_airflow.report.model import SpecResult, Threshold, build_report, default_thresholds
from boltzgen_airflow.report.rendering import render_html


def _designs_table(page: Element, spec: str) -> Element:
    table = page.find("table", class_="data designs", data_spec=spec)
    assert table is not None, f"no designs table for {spec}"
    return table


def _results(specs: list[SpecFixture]) -> dict[str, SpecResult]:
    return {spec.name: SpecResult.from_directory(spec.folder) for spec in specs}


def test_top_designs_are_the_final_designs_in_boltzgen_rank_order(partial_run: RenderedRun) -> None:
    page = parse(partial_run.html)
    for spec in partial_run.specs:
        table = _designs_table(page, spec.name)
        expected = sorted(spec.final, key=lambda r: r["final_rank"])[:10]
        ids = [tr.attrs["data-design-id"] for tr in table.find("tbody").iter("tr")]
        assert ids == [r["id"] for r in expected]
        header = [th.text() for th in table.find("thead").iter("th")]
        first = dict(zip(header, table.rows()[0], strict=True))
        best = expected[0]
        assert first["Rank"] == str(best["final_rank"])
        assert first["ipTM"] == f"{best['design_to_target_iptm']:.3f}"
        assert first["pTM"] == f"{best['design_ptm']:.3f}"
        assert first["min PAE"] == f"{best['min_design_to_target_pae']:.2f}"
        assert first["RMSD"] == f"{best['filter_rmsd']:.2f}"
        assert first["H-bonds"] == str(best["plip_hbonds_refolded"])
        assert first["ΔSASA"] == f"{best['delta_sasa_refolded']:,.0f}"
        assert first["Quality"] == f"{best['quality_score']:.3f}"
        sequence = table.find("code", class_="seq")
        assert sequence.attrs["title"] == best["designed_sequence"]
        assert sequence.text() == best["designed_sequence"][:23] + "…"


def test_rank_comes_from_final_rank_not_file_order(tmp_path: Path, two_specs: list[SpecFixture]) -> None:
    spec = two_specs[0]
    shuffled = list(spec.final)
    random.Random(7).shuffle(shuffled)
    final_csv = write_csv(tmp_path / f"final_designs_metrics_{spec.budget}.csv", shuffled)
    result = SpecResult.from_files(spec.folder / "all_designs_metrics.csv", final_csv)
    report = build_report(make_manifest([spec]), {spec.name: result}, top_n=100)
    assert [d.id for d in report.top_designs[spec.name]] == [r["id"] for r in spec.final]
    assert report.specs[0].budget == spec.budget


def test_counts_match_the_manifest_and_the_metrics(partial_run: RenderedRun) -> None:
    page = parse(partial_run.html)
    manifest = partial_run.manifest
    produced = sum(s["designs_produced"] for s in manifest["specs"])
    expected = sum(s["designs_expected"] for s in manifest["specs"])
    finals = sum(len(spec.final) for spec in partial_run.specs)
    assert page.find(id="designs-produced").text() == str(produced)
    assert f"of {expected} planned" in page.find(id="summary").text()
    assert page.find(id="final-designs").text() == str(finals)
    for spec in partial_run.specs:
        row = page.find("tr", data_spec=spec.name)
        cells = [td.text() for td in row.iter("td")]
        passing = sum(1 for r in spec.ranked if r["pass_filters"])
        assert cells[4] == str(len(spec.ranked))
        assert cells[5] == str(passing)
        assert cells[6] == f"{len(spec.final)} (budget {spec.budget})"
        entry = next(s for s in manifest["specs"] if s["spec"] == spec.name)
        assert cells[3] == f"{entry['designs_produced']} / {entry['designs_expected']}"
        assert cells[2] == f"{entry['shards_committed']} / {entry['shards_total']}"


def test_cost_table_shows_estimate_and_actual_per_stage(partial_run: RenderedRun) -> None:
    page = parse(partial_run.html)
    table = page.find("table", id="cost-table")
    by_stage = {
        tr.attrs["data-stage"]: [td.text() for td in tr.iter("td")] for tr in table.find("tbody").iter("tr")
    }
    estimate, actual = partial_run.manifest["estimate"], partial_run.manifest["actual"]
    for stage, est in estimate["stages"].items():
        act = actual["stages"][stage]
        row = by_stage[stage]
        assert row[1:3] == [f"{est['instance_hours']:.2f}", f"{act['instance_hours']:.2f}"]
        assert row[4:6] == [f"${est['cost_usd']:,.2f}", f"${act['cost_usd']:,.2f}"]
        assert row[7] == str(act["jobs"])
    total = by_stage["total"]
    assert total[4:6] == ["$14.25", "$16.41"]
    assert total[6] == "+15%"  # (16.41 - 14.25) / 14.25
    assert total[7] == str(sum(s["jobs"] for s in actual["stages"].values()))
    assert by_stage["makespan"][1:4] == ["3.20", "3.50", "+9%"]
    assert page.find(id="actual-cost").text() == "$16.41"
    assert page.find(id="wall-hours").text() == "3.50 h"


def test_wall_time_comes_from_timestamps_when_not_given(two_specs: list[SpecFixture]) -> None:
    manifest = make_manifest(two_specs)
    del manifest["actual"]["wall_hours"]
    report = build_report(manifest, _results(two_specs))
    assert report.wall_hours == pytest.approx(3.5)
    manifest["started_at"] = "2026-03-02T10:15:00"  # no zone: read as UTC
    assert build_report(manifest, _results(two_specs)).wall_hours == pytest.approx(3.5)
    manifest["started_at"] = "yesterday"
    with pytest.raises(ReportInputError, match=r"manifest.started_at: not an ISO 8601 time: 'yesterday'"):
        build_report(manifest, _results(two_specs))


def test_histograms_mark_boltzgen_thresholds_with_pass_counts(partial_run: RenderedRun) -> None:
    page = parse(partial_run.html)
    ranked = [r for spec in partial_run.specs for r in spec.ranked]
    figure = page.find("figure", data_metric="filter_rmsd")
    passing = sum(1 for r in ranked if r["filter_rmsd"] <= 2.5)
    assert f"{passing} of {len(ranked)} pass ≤ 2.5" in figure.find("figcaption").text()
    design_alone = page.find("figure", data_metric="designfolding-filter_rmsd")
    passing = sum(1 for r in ranked if r["designfolding-filter_rmsd"] <= 2.5)
    assert f"{passing} of {len(ranked)} pass ≤ 2.5" in design_alone.text()
    iptm = page.find("figure", data_metric="design_to_target_iptm")
    assert "pass" not in iptm.text()
    assert f"{len(ranked)} designs" in iptm.text()


def test_peptide_threshold_changes_what_passes(two_specs: list[SpecFixture]) -> None:
    report = build_report(make_manifest(two_specs), _results(two_specs), thresholds=default_thresholds(2.0))
    rmsd = next(d for d in report.distributions if d.column == "filter_rmsd")
    ranked = [r for spec in two_specs for r in spec.ranked]
    assert rmsd.passing == sum(1 for r in ranked if r["filter_rmsd"] <= 2.0)
    custom = build_report(
        make_manifest(two_specs), _results(two_specs), thresholds={"design_ptm": Threshold(0.8, False)}
    )
    ptm = next(d for d in custom.distributions if d.column == "design_ptm")
    assert ptm.passing == sum(1 for r in ranked if r["design_ptm"] >= 0.8)


def test_partial_run_lists_failed_and_missing_shards_prominently(partial_run: RenderedRun) -> None:
    page = parse(partial_run.html)
    assert page.find(id="run-status").text() == "partial"
    problems = page.find("section", id="problems")
    assert problems is not None
    assert problems.find("h2").text() == "Partial results"
    assert problems.find("table", id="problem-table").rows() == [
        ["s0001", "folding", "failed", "binders/pdl1_binder.yaml", "bg-demo-folding-s0001-a1"],
        ["s0001", "analysis", "missing", "binders/pdl1_binder.yaml", "—"],
    ]
    assert "binders/pdl1_binder.yaml: missing shard s0001" in problems.find(id="missing-shards").text()
    # The problem box comes before everything else in the page body.
    main = page.find("main")
    assert next(main.iter("section")).attrs["id"] == "problems"
    shard = page.find("tr", data_shard="s0001")
    statuses = {
        td.attrs["data-stage"]: td.attrs["data-status"] for td in shard.iter("td") if "data-stage" in td.attrs
    }
    assert statuses == {
        "design": "committed",
        "inverse_folding": "committed",
        "folding": "failed",
        "analysis": "missing",
    }
    assert "status-failed" in shard.find("td", data_stage="folding").attrs["class"]


def test_complete_run_has_no_problem_box(two_specs: list[SpecFixture]) -> None:
    html = render_html(build_report(make_manifest(two_specs), _results(two_specs)))
    page = parse(html)
    assert page.find(id="problems") is None
    assert page.find(id="run-status").text() == "complete"
    cells = [
        td.attrs["data-status"] for td in page.find(id="shard-table").iter("td") if "data-status" in td.attrs
    ]
    assert set(cells) == {"committed", "cached"}


def test_data_from_specs_and_metrics_is_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("spec")</script><img src=x onerror=alert(1)>&amp;.yaml'
    evil_id = '"><svg onload=alert(2)>'
    rng = random.Random(3)
    spec = make_spec(rng, tmp_path, evil, "evil_binder", 12, 4)
    spec.final[0]["id"] = evil_id
    spec.final[0]["designed_sequence"] = "MK<b>' onmouseover='alert(3)"
    write_csv(spec.folder / "final_designs_metrics_4.csv", spec.final)
    manifest = make_manifest([spec], shards_per_spec=2, failures={"s0000": "design"})
    html = render_html(build_report(manifest, {evil: SpecResult.from_directory(spec.folder)}))
    for raw in ("<script>alert", "<img src=x", "<svg", "<b>", "' onmouseover='"):
        assert raw not in html
    page = parse(html)
    assert [s.text().startswith("// Marks") for s in page.iter("script")] == [True]
    assert page.find("tr", data_spec=evil).find("td").text() == evil
    assert page.find("tr", data_design_id=evil_id) is not None
    assert page.find("code", title="MK<b>' onmouseover='alert(3)") is not None
    assert evil in page.find(id="problem-table").text()


def test_page_loads_nothing_from_outside(partial_run: RenderedRun) -> None:
    html = partial_run.html
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?):", html)
    assert not re.search(r"(?i)@import|url\(", html)
    page = parse(html)
    csp = page.find("meta", http_equiv="Content-Security-Policy")
    assert csp is not None and "default-src 'none'" in csp.attrs["content"]
    for element in page.iter():
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            if name in element.attrs:
                assert element.attrs[name].startswith("data:image/png;base64,"), (element.tag, name)
    images = list(page.iter("img"))
    assert len(images) == 1 + len(partial_run.report.distributions)
    for img in images:
        png = base64.b64decode(img.attrs["src"].split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_write_report_writes_page_and_csvs(partial_run: RenderedRun) -> None:
    written = partial_run.written
    assert [p.name for p in written] == ["index.html", "top_designs.csv", "shard_status.csv", "cost.csv"]
    assert "<table" in written[0].read_text()
    with written[1].open(newline="") as handle:
        top = list(csv.DictReader(handle))
    expected = [(spec.name, r["id"]) for spec in partial_run.specs for r in spec.final]
    assert [
        (row["spec"], row["id"]) for row in top
    ] == expected  # every final design, not only the page's top 10
    best = partial_run.specs[0].final[0]
    assert top[0]["designed_sequence"] == best["designed_sequence"]
    assert float(top[0]["design_to_target_iptm"]) == pytest.approx(best["design_to_target_iptm"])
    assert top[0]["rank"] == str(best["final_rank"])
    with written[2].open(newline="") as handle:
        shards = list(csv.DictReader(handle))
    assert len(shards) == sum(len(s["stages"]) for s in partial_run.manifest["shards"])
    failed = [row for row in shards if row["status"] == "failed"]
    assert [(row["shard"], row["stage"], row["job_name"]) for row in failed] == [
        ("s0001", "folding", "bg-demo-folding-s0001-a1")
    ]
    with written[3].open(newline="") as handle:
        cost = {row["stage"]: row for row in csv.DictReader(handle)}
    assert cost["folding"]["actual_cost_usd"] == "10.85"
    assert cost["total"]["estimated_cost_usd"] == "14.25"


def test_older_or_partial_metric_columns_are_tolerated(tmp_path: Path, two_specs: list[SpecFixture]) -> None:
    """Without BoltzGen's filter columns: older names are used, absent metrics dashed, file order kept."""
    keep = ["id", "designed_sequence", "design_iptm", "bb_rmsd", "min_interaction_pae"]
    spec = two_specs[1]
    rows = [{k: r[k] for k in keep} for r in spec.ranked[:6]]
    rows[2]["bb_rmsd"] = ""  # pandas writes NaN as an empty field
    all_csv = write_csv(tmp_path / "all_designs_metrics.csv", rows)
    final_csv = write_csv(tmp_path / "final_designs_metrics_3.csv", rows[3:])
    report = build_report(make_manifest([spec]), {spec.name: SpecResult.from_files(all_csv, final_csv)})
    assert [d.id for d in report.top_designs[spec.name]] == [r["id"] for r in rows[3:]]
    assert report.specs[0].designs_passing is None
    rmsd = next(d for d in report.distributions if d.key == "rmsd")
    assert rmsd.column == "bb_rmsd" and rmsd.total == 5
    page = parse(render_html(report))
    cells = page.find("table", class_="data designs").rows()[0]
    assert cells[3] == f"{rows[3]['design_iptm']:.3f}"
    assert cells[4] == "—"  # no design_ptm column
    assert cells[-1] == "—"  # no quality_score column
    assert page.find("tr", data_spec=spec.name).find("td", class_="n passing").text() == "—"


def test_spec_without_filtering_results_is_named(two_specs: list[SpecFixture]) -> None:
    results = _results(two_specs[:1])
    page = parse(render_html(build_report(make_manifest(two_specs), results)))
    assert page.find(id="specs-without-results").text() == "No filtering results for: binders/il6_binder.yaml"
    assert page.find("table", class_="data designs", data_spec="binders/il6_binder.yaml") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("status"), "manifest.status: required"),
        (
            lambda m: m.update(status="done"),
            "manifest.status: 'done' is not one of complete, partial, failed",
        ),
        (lambda m: m.pop("run_id"), "manifest.run_id: required"),
        (
            lambda m: m["shards"][2]["stages"]["folding"].update(status="running"),
            "manifest.shards[2].stages.folding.status: 'running' is not one of",
        ),
        (
            lambda m: m["actual"].update(cost_usd="12$"),
            "manifest.actual.cost_usd: expected a number, got '12$'",
        ),
        (
            lambda m: m["estimate"]["stages"]["design"].update(cost_usd=True),
            "manifest.estimate.stages.design.cost_usd: expected a number",
        ),
        (
            lambda m: m["specs"][1].update(final_designs=2.5),
            "manifest.specs[1].final_designs: expected a whole number",
        ),
        (
            lambda m: m["specs"][0].update(missing_shards="s0001"),
            "manifest.specs[0].missing_shards: expected a list",
        ),
        (lambda m: m["specs"][0].pop("spec"), "manifest.specs[0].spec: required"),
    ],
)
def test_bad_manifest_is_named_in_the_error(two_specs: list[SpecFixture], change, message: str) -> None:
    manifest = make_manifest(two_specs)
    change(manifest)
    results = _results(two_specs) if "spec" in manifest["specs"][0] else {}
    with pytest.raises(ReportInputError, match=re.escape(message)):
        build_report(manifest, results)


def test_bad_metrics_files_are_named_in_the_error(tmp_path: Path, two_specs: list[SpecFixture]) -> None:
    no_id = tmp_path / "no_id" / "all_designs_metrics.csv"
    no_id.parent.mkdir()
    no_id.write_text("design,filter_rmsd\na,1.0\n")
    with pytest.raises(ReportInputError, match=re.escape(f"{no_id}: no 'id' column")):
        SpecResult.from_directory(no_id.parent)
    with pytest.raises(ReportInputError, match="metrics file not found"):
        SpecResult.from_directory(tmp_path / "nowhere")

    spec = two_specs[0]
    rows = [dict(r) for r in spec.ranked[:4]]
    rows[1]["design_ptm"] = "high"
    folder = tmp_path / "bad_value"
    write_csv(folder / "all_designs_metrics.csv", rows)
    with pytest.raises(
        ReportInputError, match=r"bad_value/all_designs_metrics.csv: line 3: column 'design_ptm'"
    ):
        build_report(make_manifest([spec]), {spec.name: SpecResult.from_directory(folder)})

    stranger = {"binders/other.yaml": SpecResult.from_directory(spec.folder)}
    with pytest.raises(
        ReportInputError, match=r"spec_results: specs not in manifest.specs: binders/other.yaml"
    ):
        build_report(make_manifest([spec]), stranger)


def test_failed_run_with_a_bare_manifest_still_renders() -> None:
    """The report task runs after failures too: only campaign, run_id and status are needed."""
    manifest = {
        "campaign": "demo",
        "run_id": "scheduled__2026-03-01",
        "status": "failed",
        "specs": [{"spec": "a.yaml", "status": "failed", "missing_shards": ["s0000"]}],
        "shards": [{"shard": "s0000", "specs": ["a.yaml"], "stages": {"design": {"status": "failed"}}}],
    }
    report = build_report(manifest, {})
    assert report.distributions == () and report.wall_hours is None
    page = parse(render_html(report))
    assert page.find(id="problems").find("h2").text() == "Run failed"
    assert page.find(id="problem-table").rows() == [["s0000", "design", "failed", "a.yaml", "—"]]
    assert page.find(id="distributions") is None
    assert list(page.iter("img")) == []  # no figures to draw, and no empty ones
    assert page.find(id="wall-hours").text() == "—"
    assert page.find(id="specs-without-results").text() == "No filtering results for: a.yaml"


def test_rounds_table_shows_each_spec_over_its_campaign_run(two_specs: list[SpecFixture]) -> None:
    manifest = make_manifest(two_specs)
    a, b = (s.name for s in two_specs)
    manifest["rounds"] = {
        "round": 3, "campaign_run_id": "manual__1", "until_passing": 5, "max_rounds": 4,
        "max_cost_usd": 20.0, "spent_usd": 19.5, "reason": "spend cap: $19.50 of max_cost_usd $20.00 spent",
        "specs": [
            {"spec": a, "rounds": 1, "made": 8, "passing": 6, "pass_rate": 0.75, "spend_usd": 2.0,
             "stopped": "target reached"},
            {"spec": b, "rounds": 3, "made": 120, "passing": 3, "pass_rate": 0.025, "spend_usd": 17.5,
             "stopped": "spend cap"},
        ],
    }  # fmt: skip
    page = parse(render_html(build_report(manifest, _results(two_specs))))
    section = page.find(id="rounds")
    assert section is not None and "Stopped: spend cap: $19.50" in section.text()
    rows = {
        tr.attrs["data-spec"]: [td.text() for td in tr.iter("td")] for tr in section.iter("tr") if tr.attrs
    }
    assert rows[a] == [a, "1", "8", "6", "75.0%", "$2.00", "target reached"]
    assert rows[b] == [b, "3", "120", "3", "2.5%", "$17.50", "spend cap"]
    # A run of one round without a cap shows no rounds table.
    manifest["rounds"] = {**manifest["rounds"], "round": 1, "until_passing": None, "max_cost_usd": None}
    assert parse(render_html(build_report(manifest, _results(two_specs)))).find(id="rounds") is None

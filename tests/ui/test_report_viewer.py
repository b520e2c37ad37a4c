"""The static report's 3D view: one self-contained file whose canvas draws the top design, offline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from view_browser import drawn_pixels, launch, needs_chromium
from view_run import BUDGET, PROJECT, SPEC, PublishedRun

from boltzgen_airflow.report.model import STRUCTURES_PER_SPEC, SpecResult, build_report
from boltzgen_airflow.report.rendering import write_report


def _manifest() -> dict:
    return {
        "campaign": "view",
        "run_id": "r1",
        "status": "complete",
        "specs": [{"spec": SPEC, "status": "complete", "final_designs": BUDGET}],
    }


def test_the_report_embeds_the_top_designs_structures(published_run: PublishedRun, tmp_path: Path) -> None:
    result = SpecResult.from_directory(published_run.output / "final_ranked_designs")
    assert len(result.structures) == BUDGET
    report = build_report(_manifest(), {SPEC: result})
    top = [d.id for d in report.final_designs[SPEC][:STRUCTURES_PER_SPEC]]
    assert list(report.structures[SPEC]) == top
    html = write_report(report, tmp_path)[0].read_text()
    assert html.count('class="view-3d"') == len(top)
    assert "$3Dmol" in html and "<script src" not in html


@needs_chromium
def test_the_report_draws_a_molecule_offline(published_run: PublishedRun, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = build_report(
        _manifest(), {SPEC: SpecResult.from_directory(published_run.output / "final_ranked_designs")}
    )
    index = write_report(report, tmp_path)[0]
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri())
            viewer = page.locator("#structure-viewer")
            page.wait_for_selector("#structure-viewer canvas", timeout=30_000)
            page.wait_for_timeout(500)
            first = drawn_pixels(viewer.screenshot())
            chains = (viewer.get_attribute("data-chains") or "").split(",")
            second_id = report.final_designs[SPEC][1].id
            page.click(f'button.view-3d[data-design="{second_id}"]')
            page.wait_for_timeout(500)
            assert page.locator("#structure-title").inner_text() == second_id
            page.select_option("#structure-colour", "spectrum")
            page.wait_for_timeout(300)
            recoloured = drawn_pixels(viewer.screenshot())
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []
    assert first["fraction"] > 0.005, first  # a molecule, not a blank canvas
    # Coloured by chain: the designed chain A in dark blue, the target chain B in orange.
    assert len(chains) >= 2, chains
    assert first["blue_fraction"] > 0.05 and first["orange_fraction"] > 0.05, first
    assert recoloured["fraction"] > 0.005, recoloured
    changed = abs(recoloured["blue_fraction"] - first["blue_fraction"]) + abs(
        recoloured["orange_fraction"] - first["orange_fraction"]
    )
    assert changed > 0.05, (first, recoloured)  # the N-to-C spectrum is not the chain colours


@needs_chromium
def test_an_all_atom_complex_is_drawn_as_cartoons_coloured_by_chain(
    published_run: PublishedRun, tmp_path: Path
) -> None:
    """Real BoltzGen CIFs carry every atom and several chains (here PDB 1g13, chains A, B and C)."""
    from playwright.sync_api import sync_playwright

    result = SpecResult.from_directory(published_run.output / "final_ranked_designs")
    first = next(iter(result.structures))
    complex_cif = (PROJECT / "include/specs/vanilla_protein/1g13.cif").read_text()
    report = build_report(_manifest(), {SPEC: replace(result, structures={first: complex_cif})})
    index = write_report(report, tmp_path)[0]
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(index.as_uri())
            page.wait_for_selector("#structure-viewer canvas", timeout=30_000)
            page.wait_for_timeout(500)
            viewer = page.locator("#structure-viewer")
            assert viewer.get_attribute("data-chains") == "A,B,C"
            legend = page.locator("#structure-legend .legend-item").all_inner_texts()
            pixels = drawn_pixels(viewer.screenshot(path=str(tmp_path / "complex.png")))
        finally:
            browser.close()
    assert legend == ["chain A", "chain B", "chain C"]
    assert pixels["fraction"] > 0.05, pixels  # cartoons of three chains fill the view
    assert pixels["colours"] > 30, pixels  # three chain colours, shaded

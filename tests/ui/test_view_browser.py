"""
The campaign view in a real browser against a real Airflow after a run of the demo campaign (cut
to one spec, see view_deployment.py):
log in, find "BoltzGen" in the navigation, open the run, sort, open a design's 3D view (its canvas
draws a molecule), follow the report task's link, open the report; nobody logged in gets nothing.

Runs Airflow's scheduler, DAG processor, triggerer and API server with the local stack (a few
minutes): ``make test-ui``. ``BOLTZGEN_UI_SCREENSHOTS=<folder>`` keeps the screenshots there.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from view_browser import drawn_pixels, launch, needs_chromium
from view_deployment import (
    BUCKET,
    DAG_ID,
    DRY_RUN_ID,
    PASSWORD,
    RUN_ID,
    SHARDS,
    SPEC,
    USER,
    Deployment,
    demo_deployment,
)

pytestmark = [pytest.mark.ui, needs_chromium, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reuse = os.environ.get("BOLTZGEN_UI_URL")  # a view_deployment.py already running (while developing)
    if reuse:
        yield Deployment(None, None, reuse, RUN_ID, "success", 0.0)  # type: ignore[arg-type]
        return
    with demo_deployment(tmp_path_factory.mktemp("ui")) as running:
        print(f"demo run {running.run_state} after {running.seconds:.0f}s")
        assert running.run_state == "success", running.services.task_states(DAG_ID, running.run_id)
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    keep = os.environ.get("BOLTZGEN_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, Path(keep) / png.name)


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_nobody_logged_in_reads_nothing(deployment: Deployment) -> None:
    run = quote(deployment.run_id, safe="")
    base = f"{deployment.url}/boltzgen/api"
    for path in (
        "/campaigns",
        f"/dags/{DAG_ID}/runs",
        f"/dags/{DAG_ID}/runs/{run}",
        f"/dags/{DAG_ID}/runs/{run}/designs?spec={SPEC}",
        f"/dags/{DAG_ID}/runs/{run}/files/report/index.html",
    ):
        assert _status(base + path) == 401, path
        assert _status(base + path, {"Authorization": "Bearer forged"}) in (401, 403), path
    assert _status(base + "/campaigns", {"Cookie": "_token=forged"}) in (401, 403)


def _login(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def test_a_designer_finds_the_run_sorts_and_looks_at_a_design(deployment: Deployment, shots: Path) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            started = time.monotonic()
            _login(page, deployment.url + "/")
            # "BoltzGen" in Airflow's navigation opens the view inside the UI.
            page.get_by_role("link", name="BoltzGen").first.click()
            page.wait_for_url("**/plugin/boltzgen")
            frame = page.frame_locator("iframe").first
            frame.locator("a.campaign-link", has_text="demo").click()
            frame.locator(f'tr[data-run="{deployment.run_id}"] a.run-link').click()
            frame.locator("section.spec").first.wait_for()
            page.screenshot(path=str(shots / "view-in-airflow.png"))

            # The run on its own page (what the report task's link opens).
            run_url = f"{deployment.url}/boltzgen/runs/{DAG_ID}/{quote(deployment.run_id, safe='')}"
            page.goto(run_url)
            specs = page.locator("section.spec")
            specs.first.wait_for()
            assert specs.count() == 1
            table = page.locator("#all-0")
            table.locator("tbody tr").first.wait_for()
            ranks = [int(t) for t in table.locator("tbody td:first-child").all_inner_texts()]
            assert ranks == sorted(ranks)
            table.locator('th[data-sort="iptm"]').click()
            page.wait_for_function(
                "() => document.querySelector('#all-0 th[data-sort=\"iptm\"]')"
                ".getAttribute('aria-sort') === 'descending'"
            )
            page.wait_for_timeout(300)
            iptm = [float(t) for t in table.locator('tbody td[data-metric="iptm"]').all_inner_texts()]
            assert len(iptm) > 1 and iptm == sorted(iptm, reverse=True)
            assert page.locator("#shard-table tbody tr").count() == SHARDS
            assert page.locator("figure.metric").count() >= 3
            page.screenshot(path=str(shots / "view-run.png"))

            # A design's 3D view: its canvas draws the molecule.
            design = table.locator("tbody tr").first.get_attribute("data-design")
            table.locator("button.view-3d").first.click()
            viewer = page.locator("#structure-viewer")
            page.wait_for_selector("#structure-viewer canvas")
            page.wait_for_function("() => document.querySelector('#structure-viewer').dataset.atoms > 0")
            page.wait_for_timeout(500)
            pixels = drawn_pixels(viewer.screenshot())
            assert page.locator("#structure-title").inner_text() == design
            page.locator("#structure-dialog").screenshot(path=str(shots / "view-structure.png"))
            assert pixels["fraction"] > 0.005, pixels
            assert pixels["blue_fraction"] > 0.5, pixels
            page.click("#structure-close")

            # The report task's "Campaign results" link leads back to the run's view.
            # (Airflow 3.3 lists a task's extra links on its Details tab.)
            run_path = f"/dags/{DAG_ID}/runs/{quote(deployment.run_id, safe='')}"
            page.goto(f"{deployment.url}{run_path}/tasks/report/details")
            link = page.get_by_role("link", name="Campaign results")
            link.wait_for(timeout=60_000)
            assert link.get_attribute("href") == run_url
            if link.get_attribute("target") == "_blank":
                with context.expect_page() as opened:
                    link.click()
                view = opened.value
            else:
                link.click()
                view = page
            view.locator("section.spec").first.wait_for()
            assert view.url == run_url

            # The published report opens in the browser (text/html), with its own 3D view.
            with context.expect_page() as report_opened:
                view.locator("#run-downloads a", has_text="Open the report").click()
            report = report_opened.value
            report.wait_for_selector("#structure-viewer canvas", timeout=60_000)
            report.wait_for_timeout(500)
            assert drawn_pixels(report.locator("#structure-viewer").screenshot())["fraction"] > 0.005
            report.screenshot(path=str(shots / "report-structure.png"))
            print(f"browser walk: {time.monotonic() - started:.1f}s")
        finally:
            browser.close()
    assert errors == []


def test_the_job_links_open_the_emulators_page_of_the_job(deployment: Deployment) -> None:
    """On the local stack the SageMaker and CloudWatch links are the emulator's job page, not the console."""

    if deployment.stack is None:
        pytest.skip("a reused deployment: the stack's address is not known")
    run = quote(deployment.run_id, safe="")
    path = f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances/shard.folding/links?map_index=0"
    links = deployment.api("GET", path)["extra_links"]
    job_page = links["SageMaker Processing Job"]
    assert job_page.startswith(f"{deployment.stack.emulator_url}/_emulator/jobs/bg-demo-fold-s0000-"), links
    assert links["CloudWatch Logs"] == job_page + "#log"
    with urllib.request.urlopen(job_page, timeout=30) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    job_name = job_page.rsplit("/", 1)[-1]
    assert f"<strong>{job_name}</strong>" in page
    assert '<span class="Completed">Completed</span>' in page
    assert 'id="log"' in page and 'id="description"' in page


def test_a_dry_run_shows_its_plan_and_estimate(deployment: Deployment, shots: Path) -> None:
    from playwright.sync_api import sync_playwright

    if deployment.services is None:
        pytest.skip("a reused deployment: no database to read the dry run's state from")
    # view_deployment.py triggered the dry run alongside the real run.
    state = deployment.wait_for_run(DRY_RUN_ID, 300)
    assert state == "success", deployment.services.task_states(DAG_ID, DRY_RUN_ID)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            _login(page, f"{deployment.url}/boltzgen/campaigns/{DAG_ID}")
            page.locator(f'tr[data-run="{DRY_RUN_ID}"] .tag', has_text="dry run").wait_for()
            page.locator(f'tr[data-run="{DRY_RUN_ID}"] a.run-link').click()
            page.locator("#plan-table").wait_for()
            stages = page.locator("#plan-table tbody td:first-child").all_inner_texts()
            jobs = page.locator("#plan-table tbody td:nth-child(3)").all_inner_texts()
            note = page.locator("#plan-note").inner_text()
            spec_shards = page.locator("#plan-specs tbody td:nth-child(2)").all_inner_texts()
            page.screenshot(path=str(shots / "view-dry-run.png"))
        finally:
            browser.close()
    assert stages == ["design", "inverse folding", "folding", "analysis", "filtering"]
    assert jobs == [str(SHARDS)] * 4 + ["1"]  # one job per shard and stage, one filtering for the spec
    assert note.startswith("A dry run")
    # The dry run's specs and their shards, as the plan cut them.
    assert spec_shards == [str(SHARDS)]


def test_the_report_opens_from_a_presigned_url_and_the_asset_event_links_the_view(
    deployment: Deployment,
) -> None:
    import json

    if deployment.stack is None:
        pytest.skip("a reused deployment: the stack's address is not known")
    s3 = deployment.stack.client("s3")
    key = f"boltzgen/campaigns/demo/runs/{deployment.run_id}/report/index.html"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "attachment" not in (response.headers.get("Content-Disposition") or "")
        assert b"BoltzGen campaign report" in response.read()
    sql = "SELECT extra FROM asset_event WHERE source_dag_id = ? AND source_run_id = ?"
    rows = deployment.services.query(sql, DAG_ID, deployment.run_id)
    (extra,) = [json.loads(row[0]) for row in rows]
    assert extra["view"] == f"{deployment.url}/boltzgen/runs/{DAG_ID}/{deployment.run_id}"
    assert extra["report"] == f"s3://{BUCKET}/{key}"

"""The campaign view's API over a real run folder in S3 (moto server): paging, sorting, filtering, files."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from view_run import BUDGET, NUM_DESIGNS, SPEC, PublishedRun

from boltzgen_airflow.ui import app as view_app
from boltzgen_airflow.ui.results import BadQuery, DesignQuery, ResultsNotFound, RunReader, histograms, page_of


def _csv(published_run: PublishedRun, name: str) -> list[dict[str, str]]:
    path = published_run.output / "final_ranked_designs" / name
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def reader(published_run: PublishedRun) -> RunReader:
    return RunReader(published_run.client, published_run.campaign)


def test_the_table_holds_every_ranked_design_and_marks_the_final_ones(
    reader: RunReader, published_run: PublishedRun
) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    rows = _csv(published_run, "all_designs_metrics.csv")
    assert [d.id for d in table.designs] == [
        r["id"] for r in sorted(rows, key=lambda r: int(r["final_rank"]))
    ]
    assert len(table.designs) == NUM_DESIGNS
    assert table.final_ids == {r["id"] for r in _csv(published_run, f"final_designs_metrics_{BUDGET}.csv")}
    assert table.budget == BUDGET
    assert table.columns["iptm"] == "design_to_target_iptm"


def test_pages_cover_every_design_once_in_rank_order(reader: RunReader, published_run: PublishedRun) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    seen = []
    for offset in range(0, NUM_DESIGNS, 25):
        page = page_of(table, DesignQuery(offset=offset, limit=25))
        assert page.total == page.matching == NUM_DESIGNS
        assert len(page.rows) == min(25, NUM_DESIGNS - offset)
        seen.extend(page.rows)
    assert [d.rank for d in seen] == sorted(d.rank for d in table.designs)
    assert len({d.id for d in seen}) == NUM_DESIGNS
    assert page_of(table, DesignQuery(offset=NUM_DESIGNS, limit=25)).rows == ()


def test_sorting_by_a_metric_follows_the_csv_column(reader: RunReader, published_run: PublishedRun) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    expected = sorted(
        (float(r["design_to_target_iptm"]) for r in _csv(published_run, "all_designs_metrics.csv")),
        reverse=True,
    )
    page = page_of(table, DesignQuery(sort="iptm", descending=True, offset=10, limit=20))
    assert [d.metrics["iptm"] for d in page.rows] == expected[10:30]
    ascending = page_of(table, DesignQuery(sort="rmsd", limit=5))
    assert [d.metrics["rmsd"] for d in ascending.rows] == sorted(d.metrics["rmsd"] for d in table.designs)[:5]


def test_filters_narrow_the_rows_and_the_count(reader: RunReader, published_run: PublishedRun) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    rows = _csv(published_run, "all_designs_metrics.csv")
    passing = [r["id"] for r in rows if r["pass_filters"].lower() in ("true", "1")]
    failing = NUM_DESIGNS - len(passing)
    assert 0 < len(passing) < NUM_DESIGNS, "the simulated run should have passing and failing designs"
    page = page_of(table, DesignQuery(passing=True, limit=500))
    assert sorted(d.id for d in page.rows) == sorted(passing)
    assert page_of(table, DesignQuery(passing=False, limit=1)).matching == failing
    final = page_of(table, DesignQuery(final_only=True, limit=500))
    assert {d.id for d in final.rows} == table.final_ids
    sequence = rows[3]["designed_sequence"][5:15].lower()
    found = page_of(table, DesignQuery(text=sequence, limit=500))
    assert rows[3]["id"] in {d.id for d in found.rows}
    assert all(sequence in d.sequence.lower() for d in found.rows)
    ranged = page_of(table, DesignQuery(metric="rmsd", high=2.5, limit=500))
    assert ranged.matching == sum(float(r["filter_rmsd"]) <= 2.5 for r in rows)


def test_a_bad_query_names_the_parameter() -> None:
    with pytest.raises(BadQuery, match="sort: 'colour'"):
        DesignQuery(sort="colour")
    with pytest.raises(BadQuery, match="limit"):
        DesignQuery(limit=10_000)
    with pytest.raises(BadQuery, match="metric"):
        DesignQuery(metric="plddt_of_nothing")


def test_histograms_count_every_design_and_the_rmsd_threshold(
    reader: RunReader, published_run: PublishedRun
) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    by_metric = {h.metric.key: h for h in histograms(table, reader.thresholds)}
    assert sum(by_metric["iptm"].counts) == NUM_DESIGNS
    rmsd = by_metric["rmsd"]
    assert rmsd.threshold is not None and rmsd.threshold.value == 2.5
    rows = _csv(published_run, "all_designs_metrics.csv")
    assert rmsd.passing == sum(float(r["filter_rmsd"]) <= 2.5 for r in rows)


def test_structures_come_from_the_final_designs_else_the_analysis_attempt(
    reader: RunReader, published_run: PublishedRun
) -> None:
    table = reader.designs(published_run.run_id, SPEC)
    final = sorted(table.final_ids)[0]
    key = reader.structure_key(published_run.run_id, SPEC, final)
    assert f"/final_{BUDGET}_designs/rank" in key and key.endswith(f"_{final}.cif")
    other = next(
        d.id for d in reversed(table.designs) if d.id not in table.final_ids and d.rank and d.rank > 10
    )
    name, body = reader.structure(published_run.run_id, SPEC, other)
    assert name == f"{other}.cif"
    assert (
        body
        == (published_run.output / "intermediate_designs_inverse_folded" / "refold_cif" / name).read_bytes()
    )
    with pytest.raises(ResultsNotFound, match="no structure"):
        reader.structure(published_run.run_id, SPEC, "1g13prot_999")
    with pytest.raises(ResultsNotFound, match="not a design id"):
        reader.structure(published_run.run_id, SPEC, "../run")
    for spec in ("../../run.yaml", "/etc/x.yaml", "vanilla_protein/../x.yaml", "no_suffix"):
        with pytest.raises(ResultsNotFound, match="not a spec name"):
            reader.designs(published_run.run_id, spec)


def test_only_published_files_can_be_read(reader: RunReader, published_run: PublishedRun) -> None:
    assert reader.read_file(published_run.run_id, "report/index.html").startswith(b"<!DOCTYPE html>")
    for path in ("run.json", "report/../run.json", "results//x.csv", "/etc/passwd", "shards.json"):
        with pytest.raises(ResultsNotFound):
            reader.read_file(published_run.run_id, path)


# -- the HTTP layer ------------------------------------------------------------------------------


@pytest.fixture
def client(published_run: PublishedRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The view's FastAPI app with Airflow's simple auth manager; a logged-in admin unless said otherwise."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    create_auth_manager()
    campaign = published_run.campaign
    monkeypatch.setattr(view_app.CAMPAIGNS, "all", lambda: {campaign.dag_id: campaign})
    monkeypatch.setattr(view_app.CLIENTS, "get", lambda _campaign: published_run.client)
    app = view_app.create_app()
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="designer", role="viewer")
    with TestClient(app) as test_client:
        test_client.app_under_test = app  # type: ignore[attr-defined]
        yield test_client


def _run_url(published_run: PublishedRun, tail: str = "") -> str:
    return f"/api/dags/{published_run.campaign.dag_id}/runs/{quote(published_run.run_id, safe='')}{tail}"


def test_designs_route_pages_sorts_and_reports_thresholds(client: Any, published_run: PublishedRun) -> None:
    response = client.get(
        _run_url(published_run, "/designs"),
        params={"spec": SPEC, "sort": "ptm", "desc": "true", "offset": 20, "limit": 10},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["matching"], body["offset"], len(body["rows"])) == (
        NUM_DESIGNS,
        NUM_DESIGNS,
        20,
        10,
    )
    values = [row["metrics"]["ptm"] for row in body["rows"]]
    assert values == sorted(values, reverse=True)
    assert body["thresholds"]["rmsd"] == "≤ 2.5"
    assert (
        sum(
            row["final"]
            for row in client.get(
                _run_url(published_run, "/designs"), params={"spec": SPEC, "final": "true"}
            ).json()["rows"]
        )
        == BUDGET
    )
    bad = client.get(_run_url(published_run, "/designs"), params={"spec": SPEC, "sort": "colour"})
    assert bad.status_code == 422 and "sort" in bad.json()["detail"]


def test_run_route_summarises_specs_and_links_each_shard_task(
    client: Any, published_run: PublishedRun
) -> None:
    body = client.get(_run_url(published_run)).json()
    (spec,) = body["specs"]
    assert (spec["designs_ranked"], spec["final_designs"], spec["budget"]) == (NUM_DESIGNS, BUDGET, BUDGET)
    assert body["summary"]["estimated_hours"] == 1.5 and body["summary"]["actual_cost_usd"] == 1.75
    (shard,) = body["shards"]
    task = shard["stages"]["folding"]["task"]
    assert task.endswith(
        f"/dags/boltzgen_view/runs/{quote(published_run.run_id, safe='')}/tasks/shard.folding/mapped/0"
    )


def test_files_are_served_with_their_type_and_the_report_sandboxed(
    client: Any, published_run: PublishedRun
) -> None:
    report = client.get(_run_url(published_run, "/files/report/index.html"))
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "sandbox" in report.headers["content-security-policy"]
    path = "results/vanilla_protein/1g13prot/final_ranked_designs/all_designs_metrics.csv"
    table = client.get(_run_url(published_run, "/files/" + path))
    assert table.headers["content-type"].startswith("text/csv")
    assert table.content == published_run.metrics_csv.read_bytes()
    assert client.get(_run_url(published_run, "/files/run.json")).status_code == 404


def test_nobody_logged_in_is_refused(client: Any, published_run: PublishedRun) -> None:
    from airflow.api_fastapi.core_api.security import get_user

    client.app_under_test.dependency_overrides.pop(get_user)
    for url in ("/api/campaigns", _run_url(published_run), _run_url(published_run, f"/designs?spec={SPEC}")):
        response = client.get(url)
        assert response.status_code == 401, url
        assert "Not authenticated" in response.text
    forged = client.get("/api/campaigns", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code in (401, 403)
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and "/login" in page.headers["location"]

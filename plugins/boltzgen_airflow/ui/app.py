"""
The campaign view: a FastAPI app the plugin mounts in Airflow's API server under ``/boltzgen``.

Pages (one HTML shell; ``static/view.js`` draws them from the JSON API):

    /                                  campaigns
    /campaigns/<dag id>                a campaign's runs
    /runs/<dag id>/<run id>            a run: specs, designs, distributions, shards, downloads

API (JSON unless said otherwise), every route refused without an Airflow login and for a DAG the
user may not read:

    GET /api/campaigns
    GET /api/dags/<dag id>/runs?offset=&limit=
    GET /api/dags/<dag id>/runs/<run id>
    GET /api/dags/<dag id>/runs/<run id>/designs?spec=&sort=&desc=&offset=&limit=&final=&passing=&q=
        &metric=&min=&max=
    GET /api/dags/<dag id>/runs/<run id>/plan            (the plan's specs and estimate; dry runs too)
    GET /api/dags/<dag id>/runs/<run id>/distributions?spec=
    GET /api/dags/<dag id>/runs/<run id>/structure?spec=&design=[&download=1]   (mmCIF)
    GET /api/dags/<dag id>/runs/<run id>/files/<report/... or results/...>       (the file)

S3 is read through the campaign's Airflow connection (``aws.conn_id``); neither keys nor presigned
URLs reach the browser: files are streamed through the API server.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime, and
# the types they name (Request, Response) are imported inside create_app.
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from boltzgen_airflow.campaign.model import Campaign
from boltzgen_airflow.stages import STAGES
from boltzgen_airflow.ui.paths import URL_PREFIX
from boltzgen_airflow.ui.results import (
    BadQuery,
    DesignQuery,
    Histogram,
    ResultsNotFound,
    RunReader,
    histograms,
    page_of,
    run_summary,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
CAMPAIGNS_TTL = 30.0
CLIENT_TTL = 600.0
RUNS_PAGE_MAX = 100
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".cif": "chemical/x-mmcif",
    ".json": "application/json",
    ".pdf": "application/pdf",
    ".yaml": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
}
# A published report is opened as a page of its own origin: it cannot read the Airflow session.
REPORT_CSP = (
    "sandbox allow-scripts allow-popups; default-src 'none'; img-src data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Campaigns:
    """The campaign files, read again at most every :data:`CAMPAIGNS_TTL` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = 0.0
        self._by_dag: dict[str, Campaign] = {}

    def all(self) -> dict[str, Campaign]:
        with self._lock:
            if time.monotonic() - self._loaded > CAMPAIGNS_TTL:
                self._by_dag = self._load()
                self._loaded = time.monotonic()
            return dict(self._by_dag)

    @staticmethod
    def _load() -> dict[str, Campaign]:
        from boltzgen_airflow.campaign.loading import campaign_files, load_campaign
        from boltzgen_airflow.exceptions import CampaignError
        from boltzgen_airflow.settings import campaigns_dir

        found = {}
        for path in campaign_files(campaigns_dir()):
            try:
                campaign = load_campaign(path)
            except CampaignError:
                continue  # its DAG is the stand-in that shows the error; nothing to read here
            found[campaign.dag_id] = campaign
        return found


class _Clients:
    """One S3 client per Airflow connection, made again every :data:`CLIENT_TTL` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, campaign: Campaign) -> Any:
        from boltzgen_airflow.sagemaker.hooks import s3_client

        key = (campaign.aws.conn_id, campaign.aws.region)
        with self._lock:
            made = self._clients.get(key)
            if made is None or time.monotonic() - made[0] > CLIENT_TTL:
                made = (time.monotonic(), s3_client(*key))
                self._clients[key] = made
            return made[1]


CAMPAIGNS = _Campaigns()
CLIENTS = _Clients()


def _airflow_base() -> str:
    """The path of Airflow's UI (``[api] base_url`` without the host), '' at the root."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def _task_link(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    base = f"{_airflow_base()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{task_id}"
    return base if map_index is None else f"{base}/mapped/{map_index}"


def _index(shard_or_filter: str) -> int | None:
    """``s0007`` -> 7: shards are mapped in plan order, filter ids in spec order."""
    digits = shard_or_filter[1:]
    return int(digits) if digits.isdigit() else None


def _stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def _histogram_json(histogram: Histogram) -> dict[str, Any]:
    threshold = histogram.threshold
    return {
        "metric": histogram.metric.key,
        "label": histogram.metric.label,
        "column": histogram.column,
        "edges": histogram.edges,
        "counts": histogram.counts,
        "threshold": None
        if threshold is None
        else {
            "value": threshold.value,
            "lower_is_better": threshold.lower_is_better,
            "label": threshold.label(),
        },
        "passing": histogram.passing,
    }


def _run_detail(reader: RunReader, dag_id: str, run_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    specs = []
    for index, entry in enumerate(manifest.get("specs", [])):
        spec = str(entry.get("spec"))
        ranked = passing = budget = None
        files: list[str] = []
        try:
            table = reader.designs(run_id, spec)
            ranked = len(table.designs)
            passing = sum(1 for d in table.designs if d.passed_filters)
            budget = table.budget
            files = reader.result_files(run_id, spec)
        except ResultsNotFound:
            pass
        specs.append(
            {
                **{k: entry.get(k) for k in ("spec", "status", "shards_total", "shards_committed")},
                **{k: entry.get(k) for k in ("missing_shards", "designs_expected", "designs_produced")},
                "final_designs": entry.get("final_designs"),
                "designs_ranked": ranked,
                "designs_passing": passing,
                "budget": budget,
                "files": files,
                "filtering_task": _task_link(dag_id, run_id, "filtering", index),
            }
        )
    shards = []
    for shard in manifest.get("shards", []):
        name = str(shard.get("shard"))
        stages = {
            stage: {
                **{k: cell.get(k) for k in ("status", "job_name", "seconds", "designs_produced")},
                "task": _task_link(dag_id, run_id, f"shard.{stage}", _index(name)),
            }
            for stage, cell in sorted((shard.get("stages") or {}).items(), key=lambda sc: _stage_order(sc[0]))
        }
        shards.append({"shard": name, "specs": shard.get("specs") or [shard.get("spec")], "stages": stages})
    report_files = [
        "report/index.html",
        "report/top_designs.csv",
        "report/shard_status.csv",
        "report/cost.csv",
    ]
    thresholds = {column: t.label() for column, t in reader.thresholds.items()}
    return {
        "campaign": manifest.get("campaign"),
        "dag_id": dag_id,
        "run_id": run_id,
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "estimate": manifest.get("estimate", {}),
        "actual": manifest.get("actual", {}),
        "summary": run_summary(manifest),
        "rounds": manifest.get("rounds") or {},
        "specs": specs,
        "shards": shards,
        "thresholds": thresholds,
        "report_files": report_files,
        "report_task": _task_link(dag_id, run_id, "report", None),
    }


def _airflow_runs(dag_id: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        total = session.scalar(select(func.count()).select_from(DagRun).where(DagRun.dag_id == dag_id)) or 0
        runs = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        rows = [
            {
                "run_id": run.run_id,
                "state": str(run.state) if run.state else None,
                "run_type": str(run.run_type),
                "start_date": run.start_date.isoformat() if run.start_date else None,
                "end_date": run.end_date.isoformat() if run.end_date else None,
                "dry_run": bool((run.conf or {}).get("dry_run")),
            }
            for run in runs
        ]
    return int(total), rows


def _plan_info(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """What the run's ``plan`` task pushed as ``plan_info`` (specs, estimate; also for a dry run)."""
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from boltzgen_airflow.dag.tasks import PLAN_INFO_KEY, PLAN_TASK_ID

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == PLAN_TASK_ID,
                XComModel.key == PLAN_INFO_KEY,
                XComModel.map_index == -1,
            )
        )
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def create_app() -> "FastAPI":
    """Build the view's FastAPI app (Airflow's API server mounts it under :data:`URL_PREFIX`)."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles

    User = Annotated[Any, Depends(get_user)]

    app = FastAPI(title="BoltzGen campaigns", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    shell = (TEMPLATES_DIR / "view.html").read_text(encoding="utf-8")

    def auth_manager() -> BaseAuthManager:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager()

    def readable(user: Any, dag_id: str) -> bool:
        return bool(
            auth_manager().is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
            )
        )

    def campaign_of(user: Any, dag_id: str) -> Campaign:
        campaign = CAMPAIGNS.all().get(dag_id)
        if campaign is None:
            raise HTTPException(404, f"{dag_id}: no campaign file defines this DAG")
        if not readable(user, dag_id):
            raise HTTPException(403, f"{dag_id}: you may not read this DAG's runs")
        return campaign

    def reader(user: Any, dag_id: str) -> RunReader:
        campaign = campaign_of(user, dag_id)
        return RunReader(CLIENTS.get(campaign), campaign)

    async def page(request: Request) -> Response:
        try:
            await get_user(request, None, None)
        except HTTPException:
            login = auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        root = request.scope.get("root_path", "") or URL_PREFIX
        return HTMLResponse(
            shell.replace("{{ROOT}}", root).replace("{{AIRFLOW}}", _airflow_base()),
            headers={"Cache-Control": "no-store"},
        )

    for route in ("/", "/campaigns/{dag_id}", "/runs/{dag_id}/{run_id}"):
        app.add_api_route(route, page, methods=["GET"], include_in_schema=False)

    @app.get("/api/campaigns")
    def campaigns(user: User) -> dict[str, Any]:
        rows = [
            {
                "dag_id": dag_id,
                "name": c.name,
                "description": c.description,
                "specs": c.design.specs,
                "num_designs": c.design.num_designs,
                "budget": c.design.budget,
                "results": f"s3://{c.aws.bucket}/{c.aws.prefix}/campaigns/{c.name}/runs/",
            }
            for dag_id, c in sorted(CAMPAIGNS.all().items())
            if readable(user, dag_id)
        ]
        return {"campaigns": rows}

    @app.get("/api/dags/{dag_id}/runs")
    def runs(
        *,
        dag_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(20, ge=1, le=RUNS_PAGE_MAX),
        user: User,
    ) -> dict[str, Any]:
        run_reader = reader(user, dag_id)
        total, rows = _airflow_runs(dag_id, offset, limit)
        for row in rows:
            manifest = run_reader.manifest(row["run_id"])
            row.update(run_summary(manifest))
            if manifest is not None:
                passing = 0
                for spec in run_reader.spec_names(manifest):
                    try:
                        passing += sum(
                            1 for d in run_reader.designs(row["run_id"], spec).designs if d.passed_filters
                        )
                    except ResultsNotFound:
                        continue
                row["designs_passing"] = passing
        return {"campaign": run_reader.campaign.name, "total": total, "offset": offset, "runs": rows}

    @app.get("/api/dags/{dag_id}/runs/{run_id}")
    def run(dag_id: str, run_id: str, user: User) -> dict[str, Any]:
        run_reader = reader(user, dag_id)
        manifest = run_reader.manifest(run_id)
        if manifest is None:
            raise HTTPException(404, f"run {run_id}: no results yet (the report task writes them)")
        return _run_detail(run_reader, dag_id, run_id, manifest)

    @app.get("/api/dags/{dag_id}/runs/{run_id}/plan")
    def plan(dag_id: str, run_id: str, user: User) -> dict[str, Any]:
        reader(user, dag_id)  # the same checks as every campaign route
        info = _plan_info(dag_id, run_id)
        if info is None:
            raise HTTPException(404, f"run {run_id}: no plan yet (the plan task has not finished)")
        specs = {
            name: {"shards": len(spec.get("shards", [])), "files": len(spec.get("files", []))}
            for name, spec in (info.get("specs") or {}).items()
        }
        return {
            "run_id": run_id,
            "dry_run": bool(info.get("dry_run")),
            "estimate": info.get("estimate") or {},
            "specs": specs,
            "plan_task": _task_link(dag_id, run_id, "plan", None),
        }

    @app.get("/api/dags/{dag_id}/runs/{run_id}/designs")
    def designs(
        *,
        dag_id: str,
        run_id: str,
        spec: str,
        sort: str = "rank",
        desc: bool = False,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1),
        final: bool = False,
        passing: bool | None = None,
        q: str = "",
        metric: str | None = None,
        low: float | None = Query(None, alias="min"),
        high: float | None = Query(None, alias="max"),
        user: User,
    ) -> dict[str, Any]:
        run_reader = reader(user, dag_id)
        try:
            query = DesignQuery(sort, desc, offset, limit, final, passing, q, metric, low, high)
            table = run_reader.designs(run_id, spec)
        except BadQuery as err:
            raise HTTPException(422, str(err)) from None
        except ResultsNotFound as err:
            raise HTTPException(404, str(err)) from None
        result = page_of(table, query)
        return {
            "spec": spec,
            "total": result.total,
            "matching": result.matching,
            "offset": result.offset,
            "budget": table.budget,
            "columns": table.columns,
            "thresholds": {
                key: run_reader.thresholds[column].label()
                for key, column in table.columns.items()
                if column in run_reader.thresholds
            },
            "rows": [{**asdict(d), "final": d.id in table.final_ids} for d in result.rows],
        }

    @app.get("/api/dags/{dag_id}/runs/{run_id}/distributions")
    def distributions(dag_id: str, run_id: str, spec: str, user: User) -> dict[str, Any]:
        run_reader = reader(user, dag_id)
        try:
            table = run_reader.designs(run_id, spec)
        except ResultsNotFound as err:
            raise HTTPException(404, str(err)) from None
        return {
            "spec": spec,
            "histograms": [_histogram_json(h) for h in histograms(table, run_reader.thresholds)],
        }

    @app.get("/api/dags/{dag_id}/runs/{run_id}/structure")
    def structure(
        *, dag_id: str, run_id: str, spec: str, design: str, user: User, download: bool = False
    ) -> Response:
        run_reader = reader(user, dag_id)
        try:
            name, body = run_reader.structure(run_id, spec, design)
        except ResultsNotFound as err:
            raise HTTPException(404, str(err)) from None
        disposition = "attachment" if download else "inline"
        return Response(
            body,
            media_type=MEDIA_TYPES[".cif"],
            headers={"Content-Disposition": f'{disposition}; filename="{name}"', "Cache-Control": "private"},
        )

    @app.get("/api/dags/{dag_id}/runs/{run_id}/files/{path:path}")
    def file(dag_id: str, run_id: str, path: str, user: User) -> Response:
        run_reader = reader(user, dag_id)
        try:
            body = run_reader.read_file(run_id, path)
        except ResultsNotFound as err:
            raise HTTPException(404, str(err)) from None
        suffix = Path(path).suffix.lower()
        name = path.rsplit("/", 1)[-1]
        headers = {"Cache-Control": "private", "X-Content-Type-Options": "nosniff"}
        if suffix == ".html":
            headers["Content-Security-Policy"] = REPORT_CSP
        else:
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return Response(body, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=headers)

    return app


class LazyApp:
    """
    An ASGI app that builds the view on its first request.

    The plugin is imported by every Airflow component; only the API server serves the view, so
    the others never import FastAPI's security machinery for it.
    """

    def __init__(self, factory: Callable[[], Any] = create_app) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        result: Awaitable[None] = self._app(scope, receive, send)
        return result

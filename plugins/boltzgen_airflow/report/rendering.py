"""The report's files: the self-contained HTML page and its CSV tables."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from boltzgen_airflow.report.charts import PALETTE, plot_cost_comparison, plot_histogram
from boltzgen_airflow.report.model import METRICS, SEQUENCE_PREVIEW, TABLE_METRICS, Report

TEMPLATES_DIR = Path(__file__).parent / "templates"
VIEWER_DIR = Path(__file__).resolve().parents[1] / "ui" / "static"
"""The campaign view's static files: the bundled 3D viewer the report embeds."""


def _short(text: str, limit: int = SEQUENCE_PREVIEW) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt_number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _fmt_money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def _fmt_delta(estimated: float | None, actual: float | None) -> str:
    if estimated is None or actual is None or estimated == 0:
        return "—"
    return f"{(actual - estimated) / estimated * 100:+.0f}%"


def _json_script(value: Any) -> Any:
    """JSON for a ``<script type="application/json">``: ``<`` escaped, so no text ends the element."""
    import json

    from markupsafe import Markup

    return Markup(json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e"))  # noqa: S704 - escaped above


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        json_script=_json_script,
        num=_fmt_number,
        money=_fmt_money,
        short=_short,
        stage_label=lambda s: s.replace("_", " "),
    )
    environment.globals.update(delta=_fmt_delta)
    return environment


@lru_cache(maxsize=1)
def _viewer_scripts() -> str:
    """The bundled 3D viewer and its drawing code, to be inlined (the page loads nothing)."""
    parts = [(VIEWER_DIR / "vendor" / "3Dmol-min.js"), (VIEWER_DIR / "structure.js")]
    # "</script" inside a script would end it early; the bundle holds none, but be sure.
    return "\n".join(p.read_text(encoding="utf-8").replace("</script", "<\\/script") for p in parts)


def render_html(report: Report) -> str:
    """
    Render the report as one self-contained HTML page.

    :param report: what :func:`build_report` computed.
    """
    colours = {s.spec: PALETTE[i % len(PALETTE)] for i, s in enumerate(report.specs)}
    histograms = [(d, plot_histogram(d, colours)) for d in report.distributions]
    has_structures = any(report.structures.values())
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            report=report,
            cost_chart=plot_cost_comparison(report.cost_rows),
            histograms=histograms,
            spec_colours=colours,
            viewer_scripts=_viewer_scripts() if has_structures else "",
            generated_at=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        )
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """
    Write ``index.html`` and the CSVs into ``out_dir`` (created if needed).

    :param report: what :func:`build_report` computed.
    :param out_dir: the folder to write into.
    :return: the files written, ``index.html`` first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(render_html(report), encoding="utf-8")
    metric_columns = [m for m in METRICS if m.key in TABLE_METRICS]
    top = _write_csv(
        out_dir / "top_designs.csv",
        [
            "spec",
            "rank",
            "id",
            "designed_sequence",
            "quality_score",
            "pass_filters",
            *[m.candidates[0] for m in metric_columns],
        ],
        (
            [
                d.spec,
                d.rank,
                d.id,
                d.sequence,
                d.quality_score,
                d.passed_filters,
                *[d.metrics.get(m.key) for m in metric_columns],
            ]
            for rows in report.final_designs.values()
            for d in rows
        ),
    )
    shards = _write_csv(
        out_dir / "shard_status.csv",
        ["shard", "specs", "stage", "status", "job_name", "seconds", "designs_expected", "designs_produced"],
        (
            [
                row.shard,
                ";".join(row.specs),
                c.stage,
                c.status,
                c.job_name,
                c.seconds,
                c.designs_expected,
                c.designs_produced,
            ]
            for row in report.shard_rows
            for c in row.cells
            if c is not None
        ),
    )
    cost = _write_csv(
        out_dir / "cost.csv",
        [
            "stage",
            "estimated_instance_hours",
            "actual_instance_hours",
            "estimated_cost_usd",
            "actual_cost_usd",
            "jobs",
        ],
        (
            [r.stage, r.est_instance_hours, r.act_instance_hours, r.est_cost_usd, r.act_cost_usd, r.jobs]
            for r in report.cost_rows
        ),
    )
    return [index, top, shards, cost]

"""The report's charts: matplotlib figures as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from boltzgen_airflow.report.model import CostRow, Distribution

if TYPE_CHECKING:
    from matplotlib.figure import Figure


_ESTIMATE_COLOUR, _ACTUAL_COLOUR, _THRESHOLD_COLOUR = "#9bb7d4", "#1f4e79", "#c0392b"
PALETTE = ("#1f4e79", "#e07b39", "#3a8d5c", "#8e5ea2", "#c0392b", "#5d6d7e", "#b7950b", "#17a2b8")


def _new_figure(width: float, height: float, **margins: float) -> Figure:
    # A bare Figure on an Agg canvas: no pyplot global state, safe in any worker thread. Fixed
    # margins rather than a layout engine, which would double the drawing time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**{"left": 0.12, "right": 0.97, "bottom": 0.17, "top": 0.95, **margins})
    return figure


def _png_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _style_axes(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#e5e8ec", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(labelsize=8, colors="#444")


def plot_cost_comparison(rows: Sequence[CostRow]) -> str | None:
    """
    Grouped bars of estimated against actual instance hours and cost per stage, as a PNG data URI.

    :param rows: per-stage rows (the total row is left out); None when no stage has figures.
    """
    stages = [r for r in rows if r.stage != "total"]
    if not any(
        v is not None
        for r in stages
        for v in (r.est_instance_hours, r.act_instance_hours, r.est_cost_usd, r.act_cost_usd)
    ):
        return None
    figure = _new_figure(9.6, 3.0, left=0.06, right=0.99, bottom=0.12, top=0.9, wspace=0.18)
    panels = (
        ("Instance hours", "est_instance_hours", "act_instance_hours"),
        ("Cost (USD)", "est_cost_usd", "act_cost_usd"),
    )
    positions = list(range(len(stages)))
    width = 0.38
    for axes, (title, est_attr, act_attr) in zip(figure.subplots(1, 2), panels, strict=True):
        est = [getattr(r, est_attr) or 0.0 for r in stages]
        act = [getattr(r, act_attr) or 0.0 for r in stages]
        axes.bar([p - width / 2 for p in positions], est, width, label="estimated", color=_ESTIMATE_COLOUR)
        axes.bar([p + width / 2 for p in positions], act, width, label="actual", color=_ACTUAL_COLOUR)
        axes.set_xticks(positions, [r.stage.replace("_", " ") for r in stages])
        axes.set_title(title, fontsize=10, color="#222", loc="left")
        _style_axes(axes)
    figure.axes[0].legend(fontsize=8, frameon=False)
    return _png_data_uri(figure)


def plot_histogram(distribution: Distribution, colours: Mapping[str, str]) -> str:
    """
    A histogram of one metric, one colour per spec, with its filter threshold, as a PNG data URI.

    :param distribution: the metric's values.
    :param colours: spec name -> colour, matching the page's spec swatches.
    """
    figure = _new_figure(4.6, 2.7)
    axes = figure.subplots()
    series = [(spec, values) for spec, values in distribution.values.items() if values]
    pooled = [x for _, values in series for x in values]
    low, high = min(pooled), max(pooled)
    if distribution.threshold is not None:
        low, high = min(low, distribution.threshold.value), max(high, distribution.threshold.value)
    if low == high:
        low, high = low - 0.5, high + 0.5
    if all(float(x).is_integer() for x in pooled) and high - low <= 40:
        # Counts (H-bonds, salt bridges) get one bar per value rather than bins that split them.
        bins = [low - 0.5 + i for i in range(int(high - low) + 2)]
    else:
        bins = [low + (high - low) * i / 24 for i in range(25)]
    for spec, values in series:
        colour = colours.get(spec, PALETTE[0])
        axes.hist(values, bins=bins, histtype="stepfilled", alpha=0.3, color=colour)
        axes.hist(values, bins=bins, histtype="step", linewidth=1.2, color=colour)
    if distribution.threshold is not None:
        axes.axvline(distribution.threshold.value, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.4)
        axes.annotate(
            f"filter {distribution.threshold.label()}",
            xy=(distribution.threshold.value, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -10),
            textcoords="offset points",
            fontsize=8,
            color=_THRESHOLD_COLOUR,
        )
    axes.set_xlabel(distribution.column, fontsize=8, color="#444")
    axes.set_ylabel("designs", fontsize=8, color="#444")
    _style_axes(axes)
    return _png_data_uri(figure)

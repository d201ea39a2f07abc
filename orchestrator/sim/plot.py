"""An SVG chart of a benchmark: total allocation over time, per controller.

One panel per scenario: each controller's total allocation, the total
need (what the workloads run in without faults) and the host's budget.
Written by hand so the benchmark needs no plotting library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from xml.sax.saxutils import escape

from orchestrator.sim.bench import ScenarioResult
from orchestrator.sim.model import KB_PER_MB

_WIDTH: Final = 960
_PANEL_H: Final = 260
_MARGIN_L: Final = 70
_MARGIN_R: Final = 150
_MARGIN_T: Final = 30
_MARGIN_B: Final = 30
_COLOURS: Final = {
    "ballast": "#d62728",
    "static": "#7f7f7f",
    "selfballoon": "#1f77b4",
    "qmemman": "#ff7f0e",
    "squeezed": "#9467bd",
    "mom": "#8c564b",
    "senpai": "#e377c2",
    "oracle": "#2ca02c",
}


def _path(xs: Sequence[float], ys: Sequence[float]) -> str:
    return " ".join(
        f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    )


def _panel(result: ScenarioResult, top: float) -> list[str]:
    sc = result.scenario
    plot_w = _WIDTH - _MARGIN_L - _MARGIN_R
    plot_h = _PANEL_H - _MARGIN_T - _MARGIN_B
    budget_mb = sc.budget_kb / KB_PER_MB
    peak = max(
        [budget_mb, result.static_mb]
        + [max(run.series.alloc_mb, default=0.0) for run in result.runs]
        + [max(run.series.need_mb, default=0.0) for run in result.runs]
    )
    y_max = peak * 1.05 or 1.0
    duration = sc.duration_s or 1.0

    def x(t: float) -> float:
        return _MARGIN_L + plot_w * t / duration

    def y(mb: float) -> float:
        return top + _MARGIN_T + plot_h * (1 - mb / y_max)

    out = [
        f'<text x="{_MARGIN_L}" y="{top + 18:.0f}" font-size="14" font-weight="bold">'
        f"{escape(sc.name)}</text>",
        f'<rect x="{_MARGIN_L}" y="{top + _MARGIN_T}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#ccc"/>',
    ]
    for i in range(5):
        mb = y_max * i / 4
        out.append(
            f'<text x="{_MARGIN_L - 6}" y="{y(mb) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{mb:,.0f}</text>'
        )
        hours = duration * i / 4 / 3600
        out.append(
            f'<text x="{x(duration * i / 4):.1f}" y="{top + _PANEL_H - 10:.0f}" font-size="10" '
            f'text-anchor="middle">{hours:g} h</text>'
        )
    out.append(
        f'<line x1="{x(0):.1f}" y1="{y(budget_mb):.1f}" x2="{x(duration):.1f}" '
        f'y2="{y(budget_mb):.1f}" stroke="#000" stroke-dasharray="2,3"/>'
    )
    legend = [("host budget", "#000", "2,3")]
    if result.runs:
        need = result.runs[0].series
        out.append(
            f'<path d="{_path([x(t) for t in need.t_s], [y(v) for v in need.need_mb])}" '
            'fill="none" stroke="#000" stroke-width="1.5" stroke-dasharray="6,3"/>'
        )
        legend.append(("need", "#000", "6,3"))
    for run in result.runs:
        colour = _COLOURS.get(run.controller, "#17becf")
        s = run.series
        out.append(
            f'<path d="{_path([x(t) for t in s.t_s], [y(v) for v in s.alloc_mb])}" '
            f'fill="none" stroke="{colour}" stroke-width="1.2"/>'
        )
        legend.append((run.controller, colour, ""))
    for i, (label, colour, dash) in enumerate(legend):
        ly = top + _MARGIN_T + 14 * i + 6
        lx = _WIDTH - _MARGIN_R + 10
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash_attr}/>'
        )
        out.append(f'<text x="{lx + 26}" y="{ly + 4}" font-size="11">{escape(label)}</text>')
    return out


def render_svg(results: Sequence[ScenarioResult]) -> str:
    """The whole chart as an SVG document."""
    height = _PANEL_H * max(1, len(results))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#fff"/>',
        f'<text x="{_MARGIN_L - 60}" y="14" font-size="10">MB</text>',
    ]
    for i, result in enumerate(results):
        parts.extend(_panel(result, i * _PANEL_H))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"

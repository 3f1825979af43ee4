"""The run history's trend, rendered from report.json alone (``run.trend``, written by :mod:`litegate.history`).

``run.trend.runs`` holds the previous runs of the same config, oldest first; this run is the last point of a
chart and the "now" of the Δ-vs-last-release column. Latency points of runs measured on another machine (another
fingerprint) are left out: their timings do not compare.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from litegate.types import Report, Status

COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac"]
PANEL_W, PANEL_H, PAD = 320, 190, 40


def runs(rep: Report) -> list[Mapping[str, Any]]:
    """The previous runs in the report's trend, oldest first ([] without one)."""
    return list((rep.run.get("trend") or {}).get("runs") or [])


def primary_cell(rep: Report) -> str | None:
    """The cell the trend follows, ``BACKENDxTHREADS``: XNNPACK first, then the most threads."""
    cells = {(b.backend, b.threads) for v in rep.variants for b in v.bench
             if b.status is Status.OK and b.latency is not None and not b.protocol.get("latency_emulated")}
    if not cells:
        return None
    backend, threads = max(cells, key=lambda c: (c[0] == "xnnpack", c[1]))
    return f"{backend}x{threads}"


def current(rep: Report) -> dict[str, Any]:
    """This run as a trend point (the shape of ``run.trend.runs[i]``)."""
    gate = rep.run.get("gate") or {}
    passing = set(gate.get("passing_variants") or ())
    variants: dict[str, Any] = {}
    for v in rep.variants:
        acc = v.primary_accuracy()
        ok = acc is not None and acc.status is Status.OK
        variants[v.name] = {
            "size_bytes": v.size.bytes if v.size else None, "metric": acc.metric if acc else None,
            "accuracy": acc.value if ok and acc else None, "passed": v.name in passing, "status": v.status.value,
            "p50_ms": {f"{b.backend}x{b.threads}": b.latency.p50 for b in v.bench
                       if b.status is Status.OK and b.latency is not None},
            "delegated": {c.delegate: c.delegated_fraction for c in v.compat if c.status is Status.OK}}
    return {"started_at": rep.run.get("started_at"), "git_sha": None, "git_ref": None, "passed": rep.passed,
            "same_machine": True, "variants": variants}


def _pct(new: float | None, old: float | None) -> str | None:
    if new is None or old is None or old == 0:
        return None
    return f"{(new / old - 1) * 100:+.1f}%"


def delta_vs_last(rep: Report, name: str) -> str:
    """The Markdown cell comparing variant ``name`` with the previous run in the history: size and p50 (of
    :func:`primary_cell`) as relative changes, the task metric in its own units."""
    prev_runs = runs(rep)
    if not prev_runs:
        return "—"
    prev = prev_runs[-1]
    old = (prev.get("variants") or {}).get(name)
    now = current(rep)["variants"].get(name)
    if now is None or now["status"] != Status.OK.value:
        return "—"
    if not old or old.get("status") != Status.OK.value:
        return "new"
    parts = []
    size = _pct(now["size_bytes"], old.get("size_bytes"))
    if size is not None:
        parts.append(f"size {size}")
    cell = primary_cell(rep)
    if cell is not None:
        if not prev.get("same_machine", True):
            parts.append("p50: other machine")
        else:
            p50 = _pct(now["p50_ms"].get(cell), (old.get("p50_ms") or {}).get(cell))
            if p50 is not None:
                parts.append(f"p50 {p50}")
    if now["accuracy"] is not None and old.get("accuracy") is not None and now["metric"] == old.get("metric"):
        digits = 4 if now["metric"] == "cosine_to_reference" else 2
        d = round(now["accuracy"] - old["accuracy"], digits) + 0.0
        parts.append(f"{'acc' if now['metric'] == 'accuracy' else now['metric']} {d:+.{digits}f}")
    return ", ".join(parts) or "—"


def previous_label(rep: Report) -> str:
    """How the Δ column names the run it compares with: its git ref / short sha and start time."""
    prev = runs(rep)[-1]
    what = " ".join(x for x in (prev.get("git_tag") or prev.get("git_ref"), (prev.get("git_sha") or "")[:8]) if x)
    return f"{what} {prev.get('started_at', '')}".strip()


def column_title(rep: Report) -> str:
    """The Δ column's header: the run it compares with, and the cell whose p50 it follows."""
    cell = primary_cell(rep)
    where = "; p50 {0}×{2}".format(*cell.rpartition("x")) if cell else ""
    return f"Δ vs last release ({previous_label(rep)}{where})"


def charted_variants(rep: Report) -> list[str]:
    """The variants a trend chart follows: the shipped ones, else those that pass, else every built one."""
    gate = rep.run.get("gate") or {}
    built = [v.name for v in rep.variants if v.status is Status.OK]
    for names in (gate.get("ship"), gate.get("passing_variants")):
        chosen = [n for n in (names or ()) if n in built]
        if chosen:
            return chosen
    return built


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _panel(x0: float, y0: float, title: str, series: Mapping[str, Sequence[float | None]], n: int, fmt: str) -> str:
    vals = [v for s in series.values() for v in s if v is not None]
    out = [f'<text x="{x0 + PANEL_W / 2:.0f}" y="{y0 + 16:.0f}" text-anchor="middle" font-size="12">{_esc(title)}</text>']
    left, right, top, bottom = x0 + PAD + 8, x0 + PANEL_W - 12, y0 + 26, y0 + PANEL_H - 24
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>')
    if not vals:
        out.append(f'<text x="{(left + right) / 2:.0f}" y="{(top + bottom) / 2:.0f}" text-anchor="middle" '
                   f'font-size="11" fill="#888">not measured</text>')
        return "\n".join(out)
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / (n - 1) if n > 1 else 0.5)
        return x, bottom - (v - lo) / (hi - lo) * (bottom - top)

    for k in range(3):
        yv = lo + (hi - lo) * k / 2
        _, y = xy(0, yv)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="9">{format(yv, fmt)}</text>')
    step = max(1, -(-n // 12))
    for i in range(n):
        if i == n - 1 or (i % step == 0 and n - 1 - i >= step):
            x, _ = xy(i, lo)
            anchor = "end" if i == n - 1 and n > 1 else "middle"
            out.append(f'<text x="{x:.1f}" y="{bottom + 12}" text-anchor="{anchor}" font-size="9">'
                       f'{"this run" if i == n - 1 else i - (n - 1)}</text>')
    for si, (name, s) in enumerate(series.items()):
        color = COLORS[si % len(COLORS)]
        pts = [(i, v) for i, v in enumerate(s) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{xy(i, v)[0]:.1f},{xy(i, v)[1]:.1f}" for i, v in pts)
            out.append(f'<polyline class="trend-line" points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for i, v in pts:
            x, y = xy(i, v)
            out.append(f'<circle class="trend-point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                       f'<title>{_esc(name)}: {format(v, fmt)} ({"this run" if i == n - 1 else f"run {i + 1}"})'
                       f'</title></circle>')
    return "\n".join(out)


def trend_svg(rep: Report) -> str:
    """An inline SVG of size, p50, task metric and delegated fraction of the charted variants over the history's
    last runs and this one ("" when the report has no trend)."""
    prev = runs(rep)
    if not prev:
        return ""
    points = [*prev, current(rep)]
    names = charted_variants(rep)
    cell = primary_cell(rep)
    target = next((c.delegate for v in rep.variants for c in v.compat if c.status is Status.OK), None)
    metric = next((a.metric for a in (v.primary_accuracy() for v in rep.variants) if a is not None), "accuracy")

    def series(get: Any) -> dict[str, list[float | None]]:
        return {n: [get(p, (p.get("variants") or {}).get(n) or {}) for p in points] for n in names}

    size = series(lambda p, v: None if v.get("size_bytes") is None else v["size_bytes"] / 1e6)
    p50 = series(lambda p, v: (v.get("p50_ms") or {}).get(cell) if p.get("same_machine", True) else None)
    acc = series(lambda p, v: v.get("accuracy"))
    deleg = series(lambda p, v: None if (v.get("delegated") or {}).get(target) is None
                   else 100 * v["delegated"][target])
    n = len(points)
    legend_y = 2 * PANEL_H + 8
    out = [f'<svg id="chart-trend" class="chart" viewBox="0 0 {2 * PANEL_W} {2 * PANEL_H + 24}" role="img" '
           f'aria-label="trend over the last {n} runs">',
           _panel(0, 0, "size, MB", size, n, ".3g"),
           _panel(PANEL_W, 0, "p50 latency, ms ({0}×{2})".format(*cell.rpartition("x")) if cell else
                  "p50 latency, ms (no cell)", p50, n, ".3g"),
           _panel(0, PANEL_H, metric, acc, n, ".4g"),
           _panel(PANEL_W, PANEL_H, f"delegated ops, % ({target or 'no target'})", deleg, n, ".3g")]
    for si, name in enumerate(names):
        x = 12 + si * 130
        out.append(f'<rect x="{x}" y="{legend_y}" width="10" height="10" fill="{COLORS[si % len(COLORS)]}"/>'
                   f'<text x="{x + 14}" y="{legend_y + 9}" font-size="11">{_esc(name)}</text>')
    out.append("</svg>")
    other = sum(1 for p in prev if not p.get("same_machine", True))
    note = (f"Runs counted back from this one (-1: the previous run). The last {len(prev)} runs of this config in the history ({_esc((rep.run.get('trend') or {}).get('source', ''))})"
            f", oldest first, then this run.")
    if other:
        note += f" {other} of them ran on another machine: their latency is left out."
    return "\n".join(out) + f'\n<p class="note">{note}</p>'

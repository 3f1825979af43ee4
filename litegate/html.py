"""``report.html``: one self-contained page (inline SVG charts, no network) rendered from the report.

Charts: latency vs task metric per variant (bubble area = size, Pareto front marked), latency per
backend × threads, per-layer quantization error, and the delegate compatibility tables.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from litegate.trend import trend_svg
from litegate.types import Report, Status, VariantResult

W, H, PAD = 640, 380, 64
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac"]


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi <= lo else a + (v - lo) / (hi - lo) * (b - a)


def _primary_cell(rep: Report) -> tuple[str, int] | None:
    cells = sorted({(b.backend, b.threads) for v in rep.variants for b in v.bench
                    if b.status is Status.OK and not b.protocol.get("latency_emulated")})
    if not cells:
        return None
    return max(cells, key=lambda c: (c[0] == "xnnpack", c[1]))


def pareto(points: Sequence[tuple[str, float, float, float]], higher_is_better: bool) -> set[str]:
    """Names on the front: no other point is at least as fast, as small and at least as good (and better in one)."""
    front = set()
    for name, lat, q, size in points:
        dominated = False
        for other, lat2, q2, size2 in points:
            if other == name:
                continue
            better_q = q2 >= q if higher_is_better else q2 <= q
            strictly = lat2 < lat or size2 < size or (q2 > q if higher_is_better else q2 < q)
            if lat2 <= lat and size2 <= size and better_q and strictly:
                dominated = True
                break
        if not dominated:
            front.add(name)
    return front


def tradeoff_chart(rep: Report) -> str:
    cell = _primary_cell(rep)
    pts = []
    metric = "accuracy"
    for v in rep.variants:
        acc = v.primary_accuracy()
        c = v.bench_cell(*cell) if cell else None
        if v.status is Status.OK and acc and acc.value is not None and c and c.latency and v.size:
            pts.append((v.name, c.latency.p50, float(acc.value), float(v.size.bytes)))
            metric = acc.metric
    if not pts or cell is None:
        return '<p class="empty" id="chart-tradeoff">No variant has both a latency and a task metric.</p>'
    higher = metric != "perplexity"
    front = pareto(pts, higher)
    lat = [p[1] for p in pts]
    qs = [p[2] for p in pts]
    l_lo, l_hi = min(lat) * 0.9, max(lat) * 1.1
    q_pad = max((max(qs) - min(qs)) * 0.15, 1e-3 if metric == "cosine_to_reference" else 0.5)
    q_lo, q_hi = min(qs) - q_pad, max(qs) + q_pad
    smax = max(p[3] for p in pts)
    out = [f'<svg id="chart-tradeoff" class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="latency vs {metric} vs size">']
    out.append(_axes(f"p50 latency, ms ({cell[0]}×{cell[1]})", metric, l_lo, l_hi, q_lo, q_hi))
    fpts = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    if len(fpts) > 1:
        path = " ".join(f"{_scale(p[1], l_lo, l_hi, PAD, W - PAD):.1f},{_scale(p[2], q_lo, q_hi, H - PAD, PAD):.1f}"
                        for p in fpts)
        out.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="#888" stroke-dasharray="4 3"/>')
    labels: list[tuple[float, float, str]] = []
    for i, (name, x, y, size) in enumerate(pts):
        cx, cy = _scale(x, l_lo, l_hi, PAD, W - PAD), _scale(y, q_lo, q_hi, H - PAD, PAD)
        r = 5 + 14 * (size / smax) ** 0.5
        star = " ★" if name in front else ""
        out.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{COLORS[i % len(COLORS)]}" '
                   f'fill-opacity="0.7"><title>{_esc(name)}: {x:.3f} ms, {metric} {y:.4g}, '
                   f'{size / 1e6:.2f} MB</title></circle>')
        labels.append((cx + r + 3, cy + 4, f"{name}{star}"))
    for lx, ly, text in _spread(labels):
        out.append(f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" font-size="12">{_esc(text)}</text>')
    out.append("</svg>")
    out.append(f'<p class="note">Bubble area ∝ file size. ★ = Pareto front (no other variant is faster, smaller and '
               f'at least as good). {"Higher" if higher else "Lower"} {metric} is better.</p>')
    return "\n".join(out)


LABEL_H = 14.0  # px between label baselines (12 px text)


def _spread(labels: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Labels moved down, in order of height, until none overlaps another (variants with equal metrics, such as
    fp32 and fp16, sit on the same spot)."""
    placed: list[tuple[float, float, str]] = []
    for x, y, text in sorted(labels, key=lambda t: (t[1], t[0])):
        width = 7.0 * len(text)
        while any(abs(y - py) < LABEL_H and x < px + 7.0 * len(pt) and px < x + width for px, py, pt in placed):
            y += LABEL_H
        placed.append((x, y, text))
    return placed


def _axes(xlabel: str, ylabel: str, x0: float, x1: float, y0: float, y1: float) -> str:
    parts = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
             f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle" font-size="12">{_esc(xlabel)}</text>',
             f'<text x="16" y="{H / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 16 {H / 2})">'
             f'{_esc(ylabel)}</text>']
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        x = _scale(xv, x0, x1, PAD, W - PAD)
        y = _scale(yv, y0, y1, H - PAD, PAD)
        parts.append(f'<text x="{x:.1f}" y="{H - PAD + 16}" text-anchor="middle" font-size="10">{xv:.3g}</text>')
        parts.append(f'<text x="{PAD - 6}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{yv:.4g}</text>')
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - PAD}" y2="{y:.1f}" stroke="#eee"/>')
    return "\n".join(parts)


def _bars(chart_id: str, title: str, labels: list[str], series: dict[str, list[float | None]], unit: str) -> str:
    vals = [v for s in series.values() for v in s if v is not None]
    if not vals or not labels:
        return f'<p class="empty" id="{chart_id}">{_esc(title)}: nothing measured.</p>'
    top = max(vals) * 1.15
    group_w = (W - 2 * PAD) / len(labels)
    bar_w = group_w * 0.8 / max(1, len(series))
    out = [f'<svg id="{chart_id}" class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{_esc(title)}">',
           _axes("", unit, 0, 1, 0, top).replace(">1<", "><").replace(">0.75<", "><").replace(">0.5<", "><")
           .replace(">0.25<", "><").replace(">0<", "><")]
    for gi, lab in enumerate(labels):
        gx = PAD + gi * group_w + group_w * 0.1
        lx, ly = gx + group_w * 0.4, H - PAD + 14
        rot = f' transform="rotate(-25 {lx:.1f} {ly})"' if len(labels) > 6 else ""
        anchor = "end" if rot else "middle"
        out.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="{anchor}" font-size="10"{rot}>{_esc(lab[:24])}</text>')
        for si, (sname, svals) in enumerate(series.items()):
            val = svals[gi]
            if val is None:
                continue
            h = _scale(val, 0, top, 0, H - 2 * PAD)
            out.append(f'<rect class="bar" x="{gx + si * bar_w:.1f}" y="{H - PAD - h:.1f}" width="{bar_w * 0.95:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS[si % len(COLORS)]}"><title>{_esc(lab)} {_esc(sname)}: '
                       f'{val:.4g} {unit}</title></rect>')
    for si, sname in enumerate(series):
        out.append(f'<rect x="{W - PAD - 150}" y="{PAD + si * 16 - 10}" width="10" height="10" '
                   f'fill="{COLORS[si % len(COLORS)]}"/><text x="{W - PAD - 135}" y="{PAD + si * 16}" '
                   f'font-size="11">{_esc(sname)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def latency_chart(rep: Report) -> str:
    cells = sorted({(b.backend, b.threads) for v in rep.variants for b in v.bench
                    if b.status is Status.OK and b.latency is not None})
    labels = [v.name for v in rep.variants]
    series: dict[str, list[float | None]] = {}
    for backend, threads in cells:
        key = f"{backend}×{threads}"
        series[key] = []
        for v in rep.variants:
            c = v.bench_cell(backend, threads)
            series[key].append(c.latency.p50 if c and c.latency and c.status is Status.OK else None)
    return _bars("chart-latency", "p50 latency per backend", labels, series, "ms")


def layer_chart(rep: Report) -> str:
    rows = [(v.name, r) for v in rep.variants for r in v.quant.get("layer_stats", [])[:12]]
    if not rows:
        return '<p class="empty" id="chart-layers">No per-layer quantization statistics (set [quantize] debug = true).</p>'
    variant = rows[0][0]
    mine = [r for n, r in rows if n == variant]
    labels = [str(r["tensor_name"]).split("/")[-2] + "/" + str(r["tensor_name"]).split("/")[-1]
              if "/" in str(r["tensor_name"]) else str(r["tensor_name"]) for r in mine]
    return _bars("chart-layers", f"per-layer quantization error ({variant})", labels,
                 {"rmse/scale": [float(r["rmse/scale"]) for r in mine]}, "RMSE / scale")


def _table(v: VariantResult) -> str:
    rows = []
    for c in v.compat:
        fb = ", ".join(f"{op}×{n}" for op, n in sorted(c.fallback_ops.items(), key=lambda kv: -kv[1])[:6]) or "—"
        mac = "—" if c.delegated_mac_fraction is None else f"{c.delegated_mac_fraction * 100:.1f}%"
        if c.status is not Status.OK:
            rows.append(f"<tr><td>{_esc(c.label)}</td><td colspan='4'>{_esc(c.verdict_text)}</td></tr>")
            continue
        rows.append(f"<tr><td>{_esc(c.label)}</td><td>{c.delegated_ops}/{c.total_ops}</td><td>{mac}</td>"
                    f"<td>{len(c.partitions)}</td><td>{_esc(c.model_reason or fb)}</td></tr>")
    return ("<table class='compat'><tr><th>delegate</th><th>ops delegated</th><th>MACs</th><th>partitions</th>"
            "<th>CPU fallback</th></tr>" + "".join(rows) + "</table>")


def _core_ml(rep: Report) -> str:
    """The Core ML ML Program of each variant (mlprogram targets): converted or why not, size, MIL op count."""
    rows = []
    for v in rep.variants:
        for c in v.coreml:
            size = f"{c.package_bytes / 1e6:.2f}" if c.package_bytes else "—"
            ops = str(sum(c.mil_ops.values())) if c.mil_ops else "—"
            pred = "; ".join(dict.fromkeys(c.prediction.values())) or "—"
            rows.append(f"<tr><td>{_esc(v.name)}</td><td>{_esc(c.deployment_target)}</td>"
                        f"<td>{_esc(c.verdict_text[:240])}</td><td>{_esc(c.precision)}</td><td>{ops}</td><td>{size}</td>"
                        f"<td>{_esc(pred)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Core ML (ML Program)</h2><table class='coreml'><tr><th>variant</th><th>target</th><th>Core ML</th>"
            "<th>precision</th><th>MIL ops</th><th>.mlpackage MB</th><th>prediction</th></tr>" + "".join(rows)
            + "</table>")


def _backend_accuracy(rep: Report) -> str:
    """The task metric on backends other than the evaluation one (GPU delegate, emulated HTP, ARM kernels under QEMU,
    phones), one row each."""
    rows = []
    for v in rep.variants:
        for a in v.accuracy[1:]:
            if a.status is Status.OK and a.value is not None:
                agree = a.extra.get("agreement_with_reference", a.extra.get("cosine_min"))
                diff = a.extra.get("max_abs_logit_diff")
                x86 = a.extra.get("max_abs_diff_vs_x86")
                note = ("numerics only, no latency" if a.extra.get("emulated") or "instructions_per_inference" in a.extra
                        else "") + ("" if x86 is None else f"; vs the same variant on x86: max |Δ| {x86:.3g}")
                cells = (f"{a.value:.4g}", "—" if a.delta is None else f"{a.delta:+.3g}",
                         "—" if agree is None else f"{agree:.4g}", "—" if diff is None else f"{diff:.3g}",
                         str(a.n_samples), note)
            else:
                cells = (a.status.value.replace("_", " "), "—", "—", "—", "—", a.reason[:240])
            rows.append(f"<tr><td>{_esc(v.name)}</td><td>{_esc(a.backend)}</td>"
                        + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    return ("<h2>Accuracy on other backends</h2><table class='backend-accuracy'><tr><th>variant</th><th>backend</th>"
            "<th>task metric</th><th>Δ vs ref CPU</th><th>fidelity</th><th>max |Δ output|</th><th>samples</th>"
            "<th>note</th></tr>" + "".join(rows) + "</table>")


def _trend(rep: Report) -> str:
    """The run history's trend chart (``run.trend``), when the report has one."""
    svg = trend_svg(rep)
    return f"<h2>Trend over the last releases</h2>\n{svg}" if svg else ""


def _mark(passed: bool) -> str:
    """A pass/fail mark drawn in CSS (emoji render as empty boxes where no emoji font is installed)."""
    return f"<span class='mark {'pass' if passed else 'fail'}'>{'PASS' if passed else 'FAIL'}</span>"


def _budget_status(rep: Report, v: VariantResult) -> tuple[str, bool | None]:
    """A variant's status as the gate sees it: not built, or built and meeting / failing its budgets."""
    if v.status is not Status.OK:
        return f"not built ({v.status.value})", False
    failed = [x for x in rep.verdicts if x.variant == v.name and not x.passed]
    if failed:
        return f"fails {len(failed)} budget check{'s' if len(failed) > 1 else ''}", False
    return "meets its budgets", True


def to_html(rep: Report, markdown_headline: str) -> str:
    variants_rows = []
    for v in rep.variants:
        acc = v.primary_accuracy()
        size = f"{v.size.bytes / 1e6:.2f}" if v.size else "—"
        acc_s = f"{acc.value:.4g}" if acc and acc.value is not None else (acc.status.value if acc else "—")
        status, ok = _budget_status(rep, v)
        variants_rows.append(f"<tr class='{'pass' if ok else 'fail'}'><td>{_esc(v.name)}</td>"
                             f"<td>{_esc(v.recipe.name)}</td><td>{_mark(bool(ok))} {_esc(status)}</td>"
                             f"<td>{size}</td><td>{acc_s}</td><td>{_esc(v.reason[:200])}</td></tr>")
    compat = "".join(f"<h3>{_esc(v.name)}</h3>{_table(v)}" for v in rep.variants if v.compat)
    verdicts = "".join(f"<tr class='{'pass' if x.passed else 'fail'}'><td>{_mark(x.passed)}</td>"
                       f"<td>{_esc(x.message)}</td></tr>" for x in sorted(rep.verdicts, key=lambda x: x.passed))
    data = json.dumps({"passed": rep.passed, "variants": [v.name for v in rep.variants]})
    title = markdown_headline.lstrip("# ").replace("**", "").replace("✅ ", "").replace("❌ ", "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
tr.fail td {{ background: #fdecea; }} .chart {{ width: 100%; max-width: {W}px; border: 1px solid #eee; }}
.note {{ color: #666; font-size: 12px; }}
.mark {{ display: inline-block; padding: 0 6px; border-radius: 3px; font: bold 11px/18px system-ui, sans-serif;
         color: #fff; }}
.mark.pass {{ background: #2e7d32; }} .mark.fail {{ background: #c62828; }}
</style></head>
<body data-charts="0">
<h1>{_mark(rep.passed)} {_esc(title)}</h1>
<h2>Variants</h2>
<table><tr><th>variant</th><th>recipe</th><th>status</th><th>MB</th><th>task metric</th><th>reason</th></tr>
{"".join(variants_rows)}</table>
{_backend_accuracy(rep)}
{_trend(rep)}
<h2>Latency vs quality vs size</h2>
{tradeoff_chart(rep)}
<h2>Latency per backend</h2>
{latency_chart(rep)}
<h2>Per-layer quantization error</h2>
{layer_chart(rep)}
<h2>Delegate compatibility</h2>
{compat or "<p>No compatibility data.</p>"}
{_core_ml(rep)}
<h2>Gate checks</h2>
<table>{verdicts}</table>
<script id="report-data" type="application/json">{html.escape(data, quote=False)}</script>
<script>
document.body.dataset.charts = String(document.querySelectorAll("svg.chart").length);
document.body.dataset.ready = "yes";
</script>
</body></html>
"""

"""Report files: ``report.json`` (the single source of truth) and ``report.md`` rendered from it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from litegate import trend
from litegate.artifacts import write_file_set
from litegate.errors import ConfigError
from litegate.html import to_html
from litegate.types import Report, Status, VariantResult

MAX_MARKDOWN_CHARS = 60_000


def to_json(rep: Report) -> str:
    return json.dumps(rep.to_dict(), indent=2, sort_keys=False) + "\n"


def load(path: str | Path) -> Report:
    """Read a ``report.json``.

    Raises:
        ConfigError: missing file, invalid JSON or an incompatible schema version.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: report not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a litegate report: {exc}") from None
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{p}: not a litegate report: {exc}") from None


def write(rep: Report, out_dir: Path) -> None:
    """Write report.md, report.html, junit.xml and report.json as one set (the JSON last: it marks completion).

    All four are rendered, then written to a temporary directory in ``out_dir``, then renamed into place
    (:func:`litegate.artifacts.write_file_set`): a failure or an interrupt before the renames leaves the previous
    report's files as they were, never new Markdown next to an old report.json.

    Raises:
        OutputError: the files could not be written.
    """
    files = [("report.md", to_markdown(rep)), ("report.html", to_html_page(rep)), ("junit.xml", to_junit(rep)),
             ("report.json", to_json(rep))]
    write_file_set(out_dir, files)


def to_html_page(rep: Report) -> str:
    """The self-contained HTML page, headed by the same verdict line as report.md."""
    return to_html(rep, headline(rep))


def to_junit(rep: Report) -> str:
    """JUnit XML: one test case per gate check, so CI systems show failures natively."""
    cases = []
    for v in rep.verdicts:
        where = f" [{v.backend}x{v.threads}]" if v.backend else ""
        body = "" if v.passed else f"<failure message={quoteattr(v.message)}>{escape(v.message)}</failure>"
        cases.append(f'  <testcase classname={quoteattr("litegate." + v.variant)} name={quoteattr(v.check + where)}>'
                     f"{body}</testcase>")
    failures = sum(1 for v in rep.verdicts if not v.passed)
    name = quoteattr(f"litegate gate: {rep.run.get('name', '')}")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites tests="{len(cases)}" failures="{failures}">\n'
            f'<testsuite name={name} tests="{len(cases)}" failures="{failures}" errors="0" skipped="0">\n'
            + "\n".join(cases) + "\n</testsuite>\n</testsuites>\n")


def _ms(x: float | None) -> str:
    return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _cell_text(v: VariantResult, backend: str, threads: int, vs_base: Mapping[str, Any] | None = None) -> str:
    cell = v.bench_cell(backend, threads)
    if cell is None:
        return "—"
    if cell.status is Status.OK and cell.instructions is not None:
        return f"— (emulated: {cell.instructions / 1e6:.2f} M instructions/inference)"
    if cell.status is Status.OK and cell.latency is not None:
        emulated = " (emulated)" if cell.protocol.get("latency_emulated") else ""
        return f"{_ms(cell.latency.p50)} / {_ms(cell.latency.p90)}{emulated}{_delta_text(vs_base)}"
    return "not run" if cell.status is Status.NOT_RUN else cell.status.value


def _delta_text(row: Mapping[str, Any] | None) -> str:
    """`` · Δ +1.2% [-0.3, +2.7] paired`` from a baseline comparison row (bold when it regressed); "" without one."""
    if not row or row.get("change") is None or not row.get("ci"):
        return ""
    lo, hi = row["ci"]
    text = (f"Δ {row['change'] * 100:+.1f}% [{lo * 100:+.1f}, {hi * 100:+.1f}] "
            f"{'paired' if row.get('paired') else 'unpaired'}")
    return f" · **{text}, regressed**" if row.get("verdict") == "regressed" else f" · {text}"


def _acc_text(v: VariantResult) -> tuple[str, str, str]:
    """(task metric, delta to the reference, fidelity to the reference) as table cells."""
    acc = v.primary_accuracy()
    if acc is None:
        return "—", "—", "—"
    if acc.status is not Status.OK or acc.value is None:
        return ("not run" if acc.status is Status.NOT_RUN else acc.status.value), "—", "—"
    digits = 4 if acc.metric == "cosine_to_reference" else 2
    d = None if acc.delta is None else round(acc.delta, digits) + 0.0  # no "-0.00"
    delta = "—" if d is None else (f"{d:+.4f}" if acc.metric == "cosine_to_reference" else f"{d:+.2f}")
    e = acc.extra
    if "agreement_with_reference" in e:
        fid = f"{e['agreement_with_reference']:.1f}% agree"
    elif "top1_agreement" in e:
        fid = f"{e['top1_agreement']:.1f}% top-1 agree" + (
            f" (decode {e['decode_top1_agreement']:.1f}%)" if "decode_top1_agreement" in e else "")
    elif "cosine_min" in e:
        fid = f"cos min {e['cosine_min']:.4f}"
    else:
        fid = "—"
    value = f"{acc.value:.4f}" if acc.metric == "cosine_to_reference" else f"{acc.value:.2f}"
    return value, delta, fid


def _efficiency(rep: Report) -> list[str]:
    """GFLOP/s per measured cell against the sgemm peak measured in the same run."""
    peak = (rep.run.get("machine_peak") or {}).get("gflops") or {}
    rows = []
    for v in rep.variants:
        for b in v.bench:
            eff = b.protocol.get("efficiency") if b.protocol else None
            if eff:
                pct = f"{eff['pct_of_sgemm_peak']:.0f}%" if "pct_of_sgemm_peak" in eff else "—"
                isa = f"{eff['pct_of_isa_peak']:.0f}%" if "pct_of_isa_peak" in eff else "—"
                mem = b.protocol.get("rss_increase_mb")
                rows.append(f"| {v.name} | {b.backend}×{b.threads} | {eff['gflops']:.1f} | {pct} | {isa} | "
                            f"{'—' if mem is None else f'{mem:.0f}'} |")
    if not rows:
        return []
    mp = rep.run.get("machine_peak") or {}
    head = ", ".join(f"{t} thread(s): {g:.0f}" for t, g in sorted(peak.items())) or "not measured"
    theory = ", ".join(f"{t}: {g:.0f}" for t, g in sorted((mp.get("theoretical_gflops") or {}).items())) or "unknown"
    return ["", "<details><summary>Efficiency (effective fp32 GFLOP/s = 2 × MACs / p50)</summary>", "",
            f"Peaks this run, GFLOP/s — sgemm probe (the better of numpy's BLAS and an XNNPACK GEMM): {head}; "
            f"ISA FMA theory at the nominal {mp.get('cpu_mhz')} MHz: "
            f"{theory}. Quantized variants do integer MACs: their figure is fp32-equivalent throughput.", "",
            "| variant | cell | GFLOP/s | of sgemm | of ISA peak | RSS increase MB |", "|---|---|---|---|---|---|",
            *rows, "", "</details>", ""]


def _profile_details(rep: Report) -> list[str]:
    """Where the time goes in the slowest variant, by op type and by op (LiteRT's profiler)."""
    prof = rep.run.get("op_profile") or {}
    if not prof.get("by_type"):
        return [f"- Per-op profile not run: {prof['not_run']}", ""] if prof.get("not_run") else []
    rows = [f"| {r['op']} | {r['count']} | {r['ms_per_run']:.4g} | {r['pct']:.1f}% |" for r in prof["by_type"][:12]]
    top = ", ".join(f"{o['op']} #{o['index']} {o['pct']:.1f}%" for o in prof.get("top_ops", [])[:5])
    return ["", f"<details><summary>Where the time goes: `{prof['variant']}` ({prof['why']}; {prof['backend']}×"
            f"{prof['threads']}, {prof['runs']} profiled runs, {prof['op_ms_per_run']:.4g} ms of ops per run)</summary>",
            "", "| op type | ops | ms per run | share |", "|---|---|---|---|", *rows, "",
            f"Slowest single ops: {top}. Method: {prof.get('method')}.", "", "</details>", ""]


def _quant_details(rep: Report) -> list[str]:
    """Recipe fallbacks, the auto recipe's search, and the most sensitive layers per quantized variant."""
    lines: list[str] = []
    for v in rep.variants:
        q = v.quant
        det = q.get("determinism")
        if det and not det.get("identical_bytes"):
            lines.append(f"- ⚠️ `{v.name}`: converting twice gave different bytes (TensorFlow is not deterministic "
                         f"for this model); outputs differ by at most {det.get('max_abs_output_diff', float('nan')):.3g}")
        for note in q.get("fallback", []):
            lines.append(f"- `{v.name}`: {note}")
        pr = q.get("pruning")
        if pr:
            tfl = pr.get("tflite", {})
            rname = pr.get("recipe")
            rname = rname.get("name", "") if isinstance(rname, dict) else str(rname or "")
            lines.append(f"- `{v.name}` (pruned, {rname}): "
                         f"{pr.get('pruned_sparsity', 0) * 100:.1f}% zeros in the pruned layers, "
                         f"{pr.get('all_weights_sparsity', 0) * 100:.1f}% of all weights; recovery "
                         f"{pr.get('mode')} for {pr.get('steps')} steps (loss {pr.get('loss_first', float('nan')):.4g} → "
                         f"{pr.get('loss_last', float('nan')):.4g})"
                         + (f"; .tflite {tfl.get('bytes', 0) / 1e6:.2f} MB raw, {tfl.get('gzip_bytes', 0) / 1e6:.2f} MB gzip"
                            if tfl else ""))
        qat = q.get("qat")
        if qat:
            lines.append(f"- `{v.name}`: {_qat_line(qat)}")
        rounding = q.get("weight_rounding")
        if rounding:
            lines.append(f"- `{v.name}`: {_rounding_line(rounding)}")
        operands = q.get("matmul_operands")
        if operands and (operands.get("batch_matmuls") or operands.get("skipped")):
            lines.append(f"- `{v.name}`: {_operands_line(operands)}")
        a = q.get("auto")
        if a:
            islands = a.get("islands", "float")
            groups = a.get(f"{islands}_groups", [])
            verdict = "met" if a.get("met") else f"NOT met: {a.get('reason', '')}"
            cost = ""
            if a.get("full_int8_bytes") and a.get("bytes"):
                cost = f"; {a['bytes'] / 1e6:.2f} MB vs {a['full_int8_bytes'] / 1e6:.2f} MB full int8"
            guard = a.get("guard") or {}
            shipped = {"dynamic-range": "the dynamic-range int8 model, ", "fp32": "fp32, "}.get(guard.get("chosen", ""), "")
            precision = "float" if islands == "float" else "16-bit activations (the rest int8)"
            kept = (f"{len(groups)} of {a.get('ranked_groups')} op groups ({len(a.get(f'{islands}_nodes', []))} of "
                    f"{a.get('total_nodes')} ops) kept in {precision}") if not shipped else (
                    f"the search ended at {guard.get('searched', {}).get('float_groups')} of {a.get('ranked_groups')} "
                    "op groups in float")
            lines.append(f"- `{v.name}` (auto): {shipped}{a.get('metric')} {a.get('score', float('nan')):.4g} vs target "
                         f"{a.get('target', float('nan')):.4g} ({verdict}); {kept}"
                         + (f": {', '.join(f'`{g}`' for g in groups[:10])}" + (" …" if len(groups) > 10 else "")
                            if groups else "") + cost +
                         f"; {len(a.get('trials', []))} candidates tried, selected on "
                         f"`{Path(str(a.get('selected_on'))).name}`")
            if guard:
                lines.append("  - " + _guard_line(guard))
            ranked = a.get("group_impact", [])
            if ranked:
                how = ("with each alone at 16 bits (the rest int8), least first" if islands == "int16"
                       else "of quantizing each alone")
                lines.append(f"  - groups ranked by the output error {how} (NMSE to float on "
                             f"{a.get('ranked_on_samples')} inputs): "
                             + ", ".join(f"`{r['group']}` " + ("cannot be quantized" if r.get("impact") is None else f"{r['impact']:.2g}")
                                         for r in ranked[:6]))
    stats = [(v.name, v.quant["layer_stats"]) for v in rep.variants if v.quant.get("layer_stats")]
    if stats:
        lines += ["", "<details><summary>Most sensitive layers (QuantizationDebugger: RMSE / scale, in quantization steps; "
                  "~0.29 is ideal rounding noise)</summary>", "", "| variant | op | tensor | rmse/scale |", "|---|---|---|---|"]
        for name, rows in stats:
            for r in rows[:5]:
                lines.append(f"| {name} | {r['op_name']} | `{r['tensor_name'][:70]}` | {r['rmse/scale']:.2f} |")
        lines += ["", "Full tables: `<variant>.layers.csv` next to the report.", "", "</details>", ""]
    return lines


def _rounding_line(wr: Mapping[str, Any]) -> str:
    """How a recipe's int8 weights were rounded (``weight_rounding``): GPTQ's reach and what it bought, or why not."""
    if wr.get("method") != "gptq":
        return f"int8 weights rounded to nearest: {wr.get('why', '')}"
    err = wr.get("output_error") or {}
    off = f" ({len(wr['off_grid'])} off it: rounded again by the converter)" if wr.get("off_grid") else ""
    return (f"int8 weights rounded by GPTQ on {wr.get('rows')} calibration rows, {wr.get('matched')} of "
            f"{wr.get('fully_connected_ops')} FULLY_CONNECTED ops, {wr.get('on_grid')} on the converter's grid after "
            f"conversion{off}; their mean relative output error on those rows {err.get('nearest_mean', float('nan')):.3g} "
            f"(rounded to nearest) → {err.get('gptq_mean', float('nan')):.3g}")


def _operands_line(mo: Mapping[str, Any]) -> str:
    """``symmetric_matmul_operands``: how many int8 BATCH_MATMULs now read a zero-point-0 right-hand operand."""
    skipped = mo.get("skipped") or []
    if not mo.get("batch_matmuls"):
        return f"int8 BATCH_MATMUL operands not rewritten: {skipped[0].get('why', '')}"
    why = f"; {len(skipped)} left alone ({skipped[0].get('why', '')})" if skipped else ""
    return (f"{mo.get('rewritten', 0) + mo.get('symmetric', 0)} of {mo.get('batch_matmuls')} int8 BATCH_MATMULs read a "
            f"zero-point-0 right-hand operand, which XNNPACK runs ({mo.get('rewritten', 0)} given one here, its int8 "
            f"step at most {mo.get('max_scale_growth', 1.0):.3g}× wider; {mo.get('symmetric', 0)} calibrated so){why}")


def _qat_line(qat: Mapping[str, Any]) -> str:
    """A recipe's quantization-aware distillation: what it trained on, and the simulated int8 model's fidelity."""
    def cos(key: str) -> str:
        return " / ".join(f"{f.get('cosine_mean', float('nan')):.4f}" for f in qat.get(key, {}).values())

    return (f"quantization-aware distillation, {qat.get('steps')} steps on {qat.get('samples')} rows (loss "
            f"{qat.get('loss_first', float('nan')):.3g} → {qat.get('loss_last', float('nan')):.3g}); simulated int8 "
            f"cosine to fp32 {cos('simulated_before')} → {cos('simulated_after')}, the fine-tuned float weights "
            f"{cos('float_after')} (on its first {qat.get('stats_rows')} rows)")


def _guard_line(guard: Mapping[str, Any]) -> str:
    """``auto``'s check against fp32: the search's model kept, or what replaced it and why."""
    where = f"{guard.get('backend')}×{','.join(str(t) for t in guard.get('threads', []))}"

    def against(c: Mapping[str, Any]) -> str:
        ratios = ", ".join(f"{r:.2f}× at {t} thread(s)" for t, r in c.get("latency_ratio", {}).items())
        return f"{ratios} of fp32's time, {c.get('bytes', 0) / 1e6:.2f} of {c.get('fp32_bytes', 0) / 1e6:.2f} MB"

    searched = guard.get("searched", {})
    if guard.get("chosen") == "search":
        return f"against fp32 on {where} (paired, in the build child): {against(searched)}; kept"
    text = f"the search's model was passed over: {searched.get('why')}; shipped instead: "
    fallback = guard.get("fallback", {})
    if guard.get("chosen") == "dynamic-range":
        return text + f"the dynamic-range int8 model ({against(fallback)})"
    return text + f"fp32 itself (the dynamic-range int8 model was passed over too: {fallback.get('why')})"


def _compat_details(rep: Report, delegates: list[str]) -> list[str]:
    """Per delegate: delegated fraction by ops and MACs per variant, and the top CPU-fallback ops with reasons."""
    if not delegates:
        return []
    lines = ["", "<details><summary>Delegate and NPU compatibility (rules read from the flatbuffer; compilers' "
             "own verdicts)</summary>", ""]
    for d in delegates:
        first = next((c for v in rep.variants for c in v.compat if c.delegate == d), None)
        lines.append(f"**{first.label if first else d}**" + (f": {first.title}" if first and first.title else ""))
        lines.append("")
        for v in rep.variants:
            c = v.compat_for(d)
            if c is None:
                continue
            if c.status is not Status.OK:
                lines.append(f"- `{v.name}`: {c.verdict_text}")
                continue
            macs = "—" if c.delegated_mac_fraction is None else f"{c.delegated_mac_fraction * 100:.1f}%"
            head = (f"- `{v.name}`: {c.delegated_ops}/{c.total_ops} ops ({c.delegated_fraction * 100:.0f}%), "
                    f"{macs} of MACs, {len(c.partitions)} partition(s)")
            if c.extra.get("seconds") is not None:
                size = c.extra.get("compiled_bytes")
                head += f", compiled in {c.extra['seconds']:.2f} s" + (f" to {size / 1e6:.2f} MB" if size else "")
            if c.model_reason:
                head += f" — refused: {c.model_reason}"
            lines.append(head)
            reasons: dict[str, str] = {}
            for o in c.ops:
                if not o.delegated and o.op not in reasons:
                    reasons[o.op] = o.reason
            top = sorted(c.fallback_ops.items(), key=lambda kv: -kv[1])[:5]
            for op, n in top:
                lines.append(f"  - {op} ×{n}: {reasons.get(op, '')[:160]}")
        lines.append("")
    lines.append("</details>")
    lines.append("")
    return lines


def headline(rep: Report) -> str:
    part = rep.run.get("partial")
    if part:  # run --cells: no verdict of its own
        items = ",".join(str(i) for i in part.get("items", []))
        return (f"## ⏸️ litegate: PARTIAL — items {items} of plan `{str(part.get('plan', {}).get('hash'))[:12]}`, "
                "not gated: litegate merge gates the whole")
    gate: dict[str, Any] = dict(rep.run.get("gate", {}))
    judged = gate.get("judged_variants")
    # the checks that decided: those of the variants the gate judges (a report without the field: all of them)
    failed = [v for v in rep.verdicts if not v.passed and (judged is None or v.variant in judged)]
    if rep.passed:
        rec = gate.get("recommended")
        extra = f"; recommended variant: **{rec}**" if rec else ""
        if gate.get("ship_targets"):
            shipped = ", ".join(f"**{x}** ({t})" for t, xs in gate["ship_targets"].items() for x in xs)
            n = sum(len(xs) for xs in gate["ship_targets"].values())
            return f"## ✅ litegate: PASS — shipped {shipped} {'meets its' if n == 1 else 'meet their'} budgets"
        if gate.get("ship"):
            shipped = ", ".join(f"**{x}**" for x in gate["ship"])
            verb = "meets its" if len(gate["ship"]) == 1 else "meet their"
            return f"## ✅ litegate: PASS — shipped {shipped} {verb} budgets"
        n = len(gate.get("passing_variants", []))
        return f"## ✅ litegate: PASS — {n} of {len(rep.variants)} variants meet their budgets{extra}"
    first = failed[0].message if failed else "no variant meets its budgets"
    more = f" (+{len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
    return f"## ❌ litegate: FAIL — {first}{more}"


def to_markdown(rep: Report) -> str:
    """Render the PR comment. Always under :data:`MAX_MARKDOWN_CHARS`."""
    delegates = [c.delegate for c in next((v.compat for v in rep.variants if v.compat), ())]
    lines = [headline(rep), ""]
    lines.extend(_failing_first(rep))
    lines.extend(_model_line(rep))
    lines.extend(_summary_table(rep, delegates))
    lines.extend(_per_target(rep))
    lines.extend(_cell_notes(rep))
    lines.extend(_sharded_notes(rep))
    lines.extend(_backend_accuracy_table(rep))
    lines.extend(_core_ml_table(rep))
    lines.extend(_efficiency(rep))
    lines.extend(_profile_details(rep))
    lines.extend(_quant_details(rep))
    lines.extend(_compat_details(rep, delegates))
    lines.extend(_gate_details(rep))
    lines.extend(_how_measured(rep))
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_MARKDOWN_CHARS:
        cut = text[: MAX_MARKDOWN_CHARS - 200]
        text = cut[: cut.rfind("\n")] + "\n\n… (truncated; see report.json for every detail)\n"
    return text


def _model_line(rep: Report) -> list[str]:
    m = rep.model
    src = m.get("source", {})
    return [f"Model: `{src.get('kind')}` {Path(str(src.get('path', ''))).name} · task {src.get('task')} · "
            f"seq_len {m.get('seq_len')} · sha256 `{str(m.get('sha256', ''))[:12]}`", ""]


def _summary_table(rep: Report, delegates: list[str]) -> list[str]:
    """One row per variant: size, latency per cell, task metric and its delta, fidelity, delegated ops."""
    cells = sorted({(b.backend, b.threads) for v in rep.variants for b in v.bench})
    metric = next((a.metric for a in (v.primary_accuracy() for v in rep.variants) if a is not None), "accuracy")
    label = {"accuracy": "accuracy %", "cosine_to_reference": "cosine to ref", "perplexity": "perplexity"}.get(metric, metric)
    counted = {(b.backend, b.threads) for v in rep.variants for b in v.bench if b.instructions is not None}
    head = (["variant", "recipe", "size MB", "gzip MB"]
            + [f"{b}×{t} {'instructions, no latency' if (b, t) in counted else 'p50/p90 ms'}" for b, t in cells]
            + [label, "Δ vs ref", "fidelity"])
    if delegates:
        labels = [next((c.label for v in rep.variants for c in v.compat if c.delegate == d), d) for d in delegates]
        head.append("delegated ops % (" + " / ".join(labels) + ")")
    if rep.run.get("baseline"):
        head[4:4 + len(cells)] = [f"{h} · Δ vs baseline [95% CI]" for h in head[4:4 + len(cells)]]
    vs_base = {(r["variant"], r["what"]): r for r in (rep.run.get("baseline") or {}).get("rows", [])}
    vs_last = bool(trend.runs(rep))  # the run history's previous run of this config (run.trend)
    if vs_last:
        head.append(trend.column_title(rep))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in rep.variants:
        if v.status is not Status.OK:
            row = [f"**{v.name}**", v.recipe.name, f"failed: {v.reason[:120]}", "—"] + ["—"] * len(cells) + ["—", "—", "—"]
            row += ["—"] if delegates else []
        else:
            size = f"{v.size.bytes / 1e6:.2f}" if v.size else "—"
            gz = f"{v.size.gzip_bytes / 1e6:.2f}" if v.size else "—"
            acc, delta, fid = _acc_text(v)
            row = [f"**{v.name}**", v.recipe.name, size, gz] + [_cell_text(v, b, t, vs_base.get((v.name, f"p50 {b}x{t}")))
                                                                 for b, t in cells] + [acc, delta, fid]
            if delegates:
                fr = [v.compat_for(d) for d in delegates]
                row.append(" / ".join("—" if c is None else c.status.value.replace("_", " ") if c.status is not Status.OK
                                      else f"{c.delegated_fraction * 100:.0f}" for c in fr))
        if vs_last:
            row.append(trend.delta_vs_last(rep, v.name))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _per_target(rep: Report) -> list[str]:
    """The variant to ship per target (the gate's recommendation), when more than the CPU was judged."""
    rows = rep.run.get("gate", {}).get("recommended_per_target") or []
    if len(rows) < 2:
        return []
    lines = ["| target | ship | why |", "|---|---|---|"]
    lines += [f"| {r['target']} | {'**' + r['variant'] + '**' if r.get('variant') else '—'} | {r['why'][:200]} |"
              for r in rows]
    return lines + [""]


def _sharded_notes(rep: Report) -> list[str]:
    """A merged sharded run: its plan and partials, and which cells are not comparable (other machines)."""
    sh = rep.run.get("sharded")
    if not sh:
        return []
    lines = [f"- Sharded run: {sh.get('items')} items of plan `{str(sh.get('plan'))[:12]}` from "
             f"{len(sh.get('partials', []))} partial reports"]
    machines = sh.get("machines", [])
    if not sh.get("comparable", True):
        lines.append(f"- ⚠️ Cells measured on {len(machines)} different machines are **not comparable** with each "
                     "other:")
        for m in machines:
            mach = m.get("machine", {})
            lines.append(f"  - machine `{m.get('fingerprint')}` ({mach.get('cpu')}, {mach.get('cores_available')} "
                         f"cores): {', '.join(m.get('labels', []))}")
    lines.extend(f"- {note}" for note in sh.get("notes", []) if not note.startswith("latency cells were measured"))
    return lines + [""]


def _cell_notes(rep: Report) -> list[str]:
    """Backends not run (with the reason), failed cells, and graph warnings (dynamic shapes, Flex ops)."""
    lines = []
    not_run = sorted({(b.backend, b.reason) for v in rep.variants for b in v.bench if b.status is Status.NOT_RUN})
    for backend, reason in not_run:
        lines.append(f"- `{backend}`: not run: {reason}")
    failures = [(v.name, b) for v in rep.variants for b in v.bench if b.status in (Status.FAILED, Status.TIMEOUT)]
    for name, b in failures:
        lines.append(f"- `{name}` on {b.backend}×{b.threads}: {b.status.value}: {b.reason}")
    if not_run or failures:
        lines.append("")
    for v in rep.variants:
        if v.graph.get("dynamic_inputs"):
            refusing = [c.delegate for c in v.compat if c.model_reason]
            lines.append(f"- ⚠️ `{v.name}` has dynamic input shapes ({', '.join(v.graph['dynamic_inputs'])}): "
                         f"{', '.join(refusing) or 'static-shape delegates'} will refuse it")
        if v.graph.get("needs_flex_delegate"):
            lines.append(f"- ⚠️ `{v.name}` contains Select TF ops ({', '.join(v.graph['flex_ops'])}): the app must link "
                         "the Flex delegate, and GPU/Hexagon/Core ML cannot run them")
    return lines


def _backend_accuracy_table(rep: Report) -> list[str]:
    """The task metric on backends other than the evaluation one (LiteRT's GPU delegate, a Snapdragon's emulated
    HTP, ARM kernels under QEMU), one row each, with agreement and the largest output difference against the reference on the CPU."""
    rows = [(v.name, a) for v in rep.variants for a in v.accuracy[1:]]
    if not rows:
        return []
    lines = ["", "| variant | backend | task metric | Δ vs ref CPU | fidelity | max \\|Δ output\\| | samples | note |",
             "|---|---|---|---|---|---|---|---|"]
    for name, a in rows:
        if a.status is Status.OK and a.value is not None:
            d = "—" if a.delta is None else f"{a.delta:+.3g}"
            agree = (a.extra["agreement_with_reference"] if "agreement_with_reference" in a.extra
                     else a.extra.get("cosine_min"))
            diff = a.extra.get("max_abs_logit_diff")
            if "instructions_per_inference" in a.extra:
                x86 = a.extra.get("max_abs_diff_vs_x86")
                note = ("ARM kernels, aarch64 LiteRT under QEMU: numerics only, no latency; vs the same variant on x86: "
                        + ("—" if x86 is None else "identical" if x86 == 0 else f"max \\|Δ\\| {x86:.3g}"))
            elif a.extra.get("emulated"):
                note = "QNN's x86 HTP emulator: numerics only, no latency"
            else:
                note = "fully delegated" if a.extra.get("fully_accelerated") else "partly on CPU"
            lines.append(f"| {name} | {a.backend} | {a.value:.4g} | {d} | {'—' if agree is None else f'{agree:.4g}'} "
                         f"| {'—' if diff is None else f'{diff:.3g}'} | {a.n_samples} | {note} |")
        else:
            lines.append(f"| {name} | {a.backend} | {a.status.value.replace('_', ' ')} | — | — | — | — | "
                         f"{a.reason[:200]} |")
    lines.append("")
    return lines


def _mil_op_counts(ops: Mapping[str, int]) -> str:
    """A program's MIL ops by type, most frequent first, constants left out (``add 29, mul 26, ...``)."""
    shown = sorted(((op, k) for op, k in ops.items() if op != "const"), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{op} {k}" for op, k in shown)


def _core_ml_table(rep: Report) -> list[str]:
    """Each variant as a Core ML ML Program (mlprogram targets): converted or why not, MIL ops, package size."""
    rows = [(v.name, c) for v in rep.variants for c in v.coreml]
    if not rows:
        return []
    lines = ["", "Core ML ML Programs (coremltools, converted from the TF graph; `<variant>.<target>.mlpackage`):", "",
             "| variant | target | Core ML | precision | MIL ops (constants left out) | .mlpackage MB | convert s |",
             "|---|---|---|---|---|---|---|"]
    for name, c in rows:
        if c.status is Status.OK:
            size = f"{(c.package_bytes or 0) / 1e6:.2f}"
            secs = "—" if c.seconds is None else f"{c.seconds:.1f}"
            lines.append(f"| {name} | {c.deployment_target} | converted | {c.precision} | {_mil_op_counts(c.mil_ops)} "
                         f"({sum(c.mil_ops.values())} ops with constants) | {size} | {secs} |")
        else:
            lines.append(f"| {name} | {c.deployment_target} | {c.verdict_text[:240]} | {c.precision or '—'} | — | — | — |")
    cells: dict[str, list[str]] = {}
    for _, c in rows:
        for cell, text in c.prediction.items():
            if cell not in cells.setdefault(text, []):
                cells[text].append(cell)
    for text, names in cells.items():
        lines.append(f"- Core ML prediction cells ({', '.join(names)}): {text}")
    lines.append("")
    return lines


MAX_FAILING_SHOWN = 20


def _failing_first(rep: Report) -> list[str]:
    """A failed gate's failing checks of the judged variants, each with its measured value, limit and units, right
    under the verdict (the folded list at the end keeps every check)."""
    if rep.passed:
        return []
    judged = rep.run.get("gate", {}).get("judged_variants")
    failed = [x for x in rep.verdicts if not x.passed and (judged is None or x.variant in judged)]
    if not failed:
        return []
    lines = [f"**Failing checks ({len(failed)}):**", ""]
    lines += [f"- ❌ {x.message}" for x in failed[:MAX_FAILING_SHOWN]]
    if len(failed) > MAX_FAILING_SHOWN:
        lines.append(f"- … {len(failed) - MAX_FAILING_SHOWN} more in *Gate checks* below")
    return lines + [""]


def _gate_details(rep: Report) -> list[str]:
    failed = [x for x in rep.verdicts if not x.passed]
    lines = [f"<details><summary>Gate checks: {len(rep.verdicts) - len(failed)} passed, {len(failed)} failed "
             f"(require: {rep.run.get('gate', {}).get('require', 'all')})</summary>", "",
             "| | check | variant | value | limit |", "|---|---|---|---|---|"]
    for x in sorted(rep.verdicts, key=lambda x: x.passed):
        where = f" ({x.backend}×{x.threads})" if x.backend else ""
        value = "—" if x.value is None else f"{x.value:g}"
        limit = "—" if x.limit is None else f"{x.limit:g}"
        lines.append(f"| {'✅' if x.passed else '❌'} | {x.check}{where} | {x.variant} | {value} | {limit} |")
    return lines + ["", "</details>", ""]


def _how_measured(rep: Report) -> list[str]:
    run = rep.run
    mach = run.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in run.get("tool_versions", {}).items())
    proto = run.get("bench_protocol", {})
    ev = run.get("eval", {})
    return [
        "<details><summary>How this was measured</summary>", "",
        f"- Machine: {mach.get('cpu')} ({mach.get('arch')}, {mach.get('cores_available')} cores, "
        f"ISA {'+'.join(mach.get('isa', [])) or 'n/a'}), {mach.get('os')}, Python {mach.get('python')}",
        f"- Versions: {versions}",
        f"- Latency: {proto.get('warmup_runs')} warm-up runs, then at least {proto.get('min_runs')} runs and "
        f"{proto.get('min_seconds')} s; inputs: {proto.get('inputs')}; {proto.get('isolation')}. "
        "p50/p90 of per-inference wall time.",
        f"- Accuracy: `{ev.get('data')}` on {ev.get('backend')}×{ev.get('threads')}; "
        f"Δ is percentage points against the reference variant.",
        *_instructions_note(rep),
        f"- Run: {run.get('started_at')}, {run.get('wall_s')} s wall, {run.get('cache_hits')} variants from cache.",
        "", "</details>"]


def _instructions_note(rep: Report) -> list[str]:
    """How emulated-CPU cells were counted, when the run has any (their wall time is never shown)."""
    cell = next((b for v in rep.variants for b in v.bench if b.instructions is not None), None)
    if cell is None:
        return []
    p = cell.protocol
    return [f"- Instructions: `{cell.backend}` runs aarch64 LiteRT {p.get('litert')} ({p.get('kernels')} kernels, "
            f"1 thread) under QEMU on a pinned {p.get('cpu')}; litegate's TCG plugin counts the guest instructions of "
            f"each inference ({p.get('n_inputs')} inputs, median). Emulated time is not a latency and is not shown."]

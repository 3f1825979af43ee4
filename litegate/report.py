"""Report files: ``report.json`` (the single source of truth) and ``report.md`` rendered from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from litegate.artifacts import atomic_write_text
from litegate.errors import ConfigError
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
    """Write report.json and report.md atomically (markdown first: the JSON marks completion)."""
    atomic_write_text(out_dir / "report.md", to_markdown(rep))
    atomic_write_text(out_dir / "report.json", to_json(rep))


def _ms(x: float | None) -> str:
    return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _cell_text(v: VariantResult, backend: str, threads: int) -> str:
    cell = v.bench_cell(backend, threads)
    if cell is None:
        return "—"
    if cell.status is Status.OK and cell.latency is not None:
        return f"{_ms(cell.latency.p50)} / {_ms(cell.latency.p90)}"
    return "not run" if cell.status is Status.NOT_RUN else cell.status.value


def _acc_text(v: VariantResult) -> tuple[str, str]:
    acc = v.primary_accuracy()
    if acc is None:
        return "—", "—"
    if acc.status is not Status.OK or acc.value is None:
        return ("not run" if acc.status is Status.NOT_RUN else acc.status.value), "—"
    delta = "—" if acc.delta is None else f"{acc.delta:+.2f}"
    return f"{acc.value:.2f}", delta


def headline(rep: Report) -> str:
    gate: dict[str, Any] = dict(rep.run.get("gate", {}))
    failed = [v for v in rep.verdicts if not v.passed]
    if rep.passed:
        rec = gate.get("recommended")
        extra = f"; recommended variant: **{rec}**" if rec else ""
        n = len(gate.get("passing_variants", []))
        return f"## ✅ litegate: PASS — {n} of {len(rep.variants)} variants meet their budgets{extra}"
    first = failed[0].message if failed else "no variant meets its budgets"
    more = f" (+{len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
    return f"## ❌ litegate: FAIL — {first}{more}"


def to_markdown(rep: Report) -> str:
    """Render the PR comment. Always under :data:`MAX_MARKDOWN_CHARS`."""
    cells = sorted({(b.backend, b.threads) for v in rep.variants for b in v.bench})
    lines = [headline(rep), ""]
    m = rep.model
    src = m.get("source", {})
    lines.append(f"Model: `{src.get('kind')}` {Path(str(src.get('path', ''))).name} · task {src.get('task')} · "
                 f"seq_len {m.get('seq_len')} · sha256 `{str(m.get('sha256', ''))[:12]}`")
    lines.append("")
    head = ["variant", "recipe", "size MB", "gzip MB"] + [f"{b}×{t} p50/p90 ms" for b, t in cells] + ["accuracy %", "Δ vs ref"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for v in rep.variants:
        if v.status is not Status.OK:
            row = [f"**{v.name}**", v.recipe.name, f"failed: {v.reason[:120]}", "—"] + ["—"] * len(cells) + ["—", "—"]
        else:
            size = f"{v.size.bytes / 1e6:.2f}" if v.size else "—"
            gz = f"{v.size.gzip_bytes / 1e6:.2f}" if v.size else "—"
            acc, delta = _acc_text(v)
            row = [f"**{v.name}**", v.recipe.name, size, gz] + [_cell_text(v, b, t) for b, t in cells] + [acc, delta]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    not_run = sorted({(b.backend, b.reason) for v in rep.variants for b in v.bench if b.status is Status.NOT_RUN})
    for backend, reason in not_run:
        lines.append(f"- `{backend}`: not run: {reason}")
    failures = [(v.name, b) for v in rep.variants for b in v.bench if b.status in (Status.FAILED, Status.TIMEOUT)]
    for name, b in failures:
        lines.append(f"- `{name}` on {b.backend}×{b.threads}: {b.status.value}: {b.reason}")
    if not_run or failures:
        lines.append("")
    failed = [x for x in rep.verdicts if not x.passed]
    lines.append(f"<details><summary>Gate checks: {len(rep.verdicts) - len(failed)} passed, {len(failed)} failed "
                 f"(require: {rep.run.get('gate', {}).get('require', 'all')})</summary>")
    lines.append("")
    lines.append("| | check | variant | value | limit |")
    lines.append("|---|---|---|---|---|")
    for x in sorted(rep.verdicts, key=lambda x: x.passed):
        where = f" ({x.backend}×{x.threads})" if x.backend else ""
        value = "—" if x.value is None else f"{x.value:g}"
        limit = "—" if x.limit is None else f"{x.limit:g}"
        lines.append(f"| {'✅' if x.passed else '❌'} | {x.check}{where} | {x.variant} | {value} | {limit} |")
    lines.append("")
    lines.append("</details>")
    lines.append("")
    run = rep.run
    mach = run.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in run.get("tool_versions", {}).items())
    proto = run.get("bench_protocol", {})
    ev = run.get("eval", {})
    lines.append("<details><summary>How this was measured</summary>")
    lines.append("")
    lines.append(f"- Machine: {mach.get('cpu')} ({mach.get('arch')}, {mach.get('cores_available')} cores, "
                 f"ISA {'+'.join(mach.get('isa', [])) or 'n/a'}), {mach.get('os')}, Python {mach.get('python')}")
    lines.append(f"- Versions: {versions}")
    lines.append(f"- Latency: {proto.get('warmup_runs')} warm-up runs, then at least {proto.get('min_runs')} runs and "
                 f"{proto.get('min_seconds')} s; inputs: {proto.get('inputs')}; {proto.get('isolation')}. "
                 "p50/p90 of per-inference wall time.")
    lines.append(f"- Accuracy: `{ev.get('data')}` on {ev.get('backend')}×{ev.get('threads')}; "
                 f"Δ is percentage points against the reference variant.")
    lines.append(f"- Run: {run.get('started_at')}, {run.get('wall_s')} s wall, {run.get('cache_hits')} variants from cache.")
    lines.append("")
    lines.append("</details>")
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_MARKDOWN_CHARS:
        cut = text[: MAX_MARKDOWN_CHARS - 200]
        text = cut[: cut.rfind("\n")] + "\n\n… (truncated; see report.json for every detail)\n"
    return text

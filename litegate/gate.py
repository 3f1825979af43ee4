"""The release gate: budgets per variant turned into verdicts, and the pass/fail decision.

Each budget key becomes one :class:`Verdict` per measurement it applies to. A cell that was
``not run`` (a backend this machine cannot execute) is not judged; a cell that ``failed`` or
timed out fails every latency budget that would have applied to it, because an unmeasured
number cannot meet a budget. An emulated-CPU cell (``arm64-emu``) has no latency: ``max_instructions_m`` judges
its instructions per inference instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from litegate.backends.spec import is_arm_backend, is_local_cpu_backend
from litegate.benchmarks.accuracy import htp_row_name
from litegate.compat import coreml, qnn
from litegate.config import COVERAGE_KEYS, Budget, ReleaseConfig
from litegate.types import AccuracyResult, BenchResult, SourceKind, Status, VariantResult, Verdict


def _limit(check: str, variant: str, value: float, limit: float, unit: str, *, upper: bool = True,
           backend: str | None = None, threads: int | None = None) -> Verdict:
    value = value + 0.0  # no "-0"
    passed = value <= limit if upper else value >= limit
    op = ("<=" if passed else ">") if upper else (">=" if passed else "<")
    where = f" on {backend}x{threads}" if backend else ""
    return Verdict(check=check, variant=variant, passed=passed, value=round(value, 4), limit=limit,
                   backend=backend, threads=threads,
                   message=f"{variant}{where}: {check} {value:.4g}{unit} {op} {limit:g}{unit}")


def variant_verdicts(v: VariantResult, budget: Budget) -> list[Verdict]:
    """Every check of ``budget`` applied to the measurements of ``v``."""
    if v.status is not Status.OK:
        return [Verdict(check="built", variant=v.name, passed=False, message=f"{v.name}: not built: {v.reason}")]
    out: list[Verdict] = []
    if v.size is not None:
        if budget.max_size_mb is not None:
            out.append(_limit("size", v.name, v.size.bytes / 1e6, budget.max_size_mb, " MB"))
        if budget.max_gzip_mb is not None:
            out.append(_limit("gzip size", v.name, v.size.gzip_bytes / 1e6, budget.max_gzip_mb, " MB"))
    for cell in v.bench:
        if cell.status is Status.NOT_RUN:
            continue
        if is_arm_backend(cell.backend):
            out.extend(_instruction_verdicts(v.name, cell, budget))
            continue
        if cell.status is Status.OK and cell.protocol.get("latency_emulated"):
            # e.g. the GPU delegate on Mesa's software Vulkan: coverage and numerics are real,
            # its timings are CPU emulation and say nothing about a phone's GPU
            continue
        wanted = [(k, lim) for k, lim in (("latency p50", budget.max_latency_p50_ms), ("latency p90", budget.max_latency_p90_ms),
                                          ("peak memory", budget.max_peak_rss_mb)) if lim is not None]
        if cell.status is not Status.OK:
            out.extend(Verdict(check=k, variant=v.name, passed=False, backend=cell.backend, threads=cell.threads, limit=lim,
                               message=f"{v.name} on {cell.backend}x{cell.threads}: {k} not measured: {cell.reason}")
                       for k, lim in wanted)
            continue
        assert cell.latency is not None
        for k, lim in wanted:
            value = {"latency p50": cell.latency.p50, "latency p90": cell.latency.p90,
                     "peak memory": cell.peak_rss_mb or 0.0}[k]
            unit = " MB" if k == "peak memory" else " ms"
            out.append(_limit(k, v.name, value, lim, unit, backend=cell.backend, threads=cell.threads))
    out.extend(_cold_start_verdicts(v, budget))
    out.extend(_coverage_verdicts(v, budget))
    acc = v.primary_accuracy()
    quality = (budget.max_accuracy_drop, budget.min_accuracy, budget.min_cosine, budget.max_perplexity_ratio,
               budget.min_agreement)
    out.extend(_evidence_verdicts(v, judged_quality=any(q is not None for q in quality)))
    if acc is not None and any(q is not None for q in quality):
        if acc.status is not Status.OK or acc.value is None:
            out.append(Verdict(check=acc.metric, variant=v.name, passed=acc.status is Status.NOT_RUN,
                               message=f"{v.name}: {acc.metric} {acc.status.value}: {acc.reason}"))
            return out
        out.extend(quality_verdicts(acc, v.name, budget))
    return out


def _evidence_verdicts(v: VariantResult, *, judged_quality: bool) -> list[Verdict]:
    """A variant cannot pass on nothing: when every benchmark cell it tried failed or timed out, or its evaluation
    failed, that is a failed check whatever budgets are set (a budget that was judged already says so)."""
    out: list[Verdict] = []
    tried = [c for c in v.bench if c.status is not Status.NOT_RUN]
    if tried and not any(c.status is Status.OK for c in tried):
        out.append(Verdict(check="benchmark evidence", variant=v.name, passed=False,
                           message=f"{v.name}: no benchmark cell measured anything ({len(tried)} failed or timed "
                                   f"out; first: {tried[0].backend}x{tried[0].threads}: {tried[0].reason})"))
    acc = v.primary_accuracy()
    if not judged_quality and acc is not None and acc.status in (Status.FAILED, Status.TIMEOUT):
        out.append(Verdict(check="evaluation evidence", variant=v.name, passed=False,
                           message=f"{v.name}: the evaluation {acc.status.value}: {acc.reason}"))
    return out


def _cold_start_verdicts(v: VariantResult, budget: Budget) -> list[Verdict]:
    """``max_cold_start_ms``: model load plus the first inference, on every cell that measured both (an emulated
    timing is not a cold start); no such cell at all fails the budget, never passes it silently."""
    if budget.max_cold_start_ms is None:
        return []
    cells = [c for c in v.bench if c.status is Status.OK and c.init_ms is not None and c.first_ms is not None
             and not c.protocol.get("latency_emulated")]
    if not cells:
        return [Verdict(check="cold start", variant=v.name, passed=False, limit=budget.max_cold_start_ms,
                        message=f"{v.name}: cold start not measured (no cell measured both load and first inference)")]
    return [_limit("cold start", v.name, (c.init_ms or 0.0) + (c.first_ms or 0.0), budget.max_cold_start_ms, " ms",
                   backend=c.backend, threads=c.threads) for c in cells]


def _coverage_verdicts(v: VariantResult, budget: Budget) -> list[Verdict]:
    """``min_delegated_ops_pct`` / ``min_delegated_macs_pct`` per compatibility target: the share of the variant's
    ops (MACs) the target takes. A target that gave no verdict (not run, failed) fails the budget."""
    out: list[Verdict] = []
    for key, what in (("min_delegated_ops_pct", "ops"), ("min_delegated_macs_pct", "MACs")):
        for target, pct in (getattr(budget, key) or {}).items():
            c = v.compat_for(target)
            check = f"{target} delegated {what}"
            if c is None or c.status is not Status.OK:
                why = "not checked" if c is None else f"{c.status.value.replace('_', ' ')}: {c.reason}"
                out.append(Verdict(check=check, variant=v.name, passed=False, limit=pct,
                                   message=f"{v.name}: {check} not judged ({why})"))
                continue
            frac = c.delegated_fraction if what == "ops" else c.delegated_mac_fraction
            if frac is None:
                out.append(Verdict(check=check, variant=v.name, passed=False, limit=pct,
                                   message=f"{v.name}: {check} not judged (the model has no MACs)"))
                continue
            out.append(_limit(check, v.name, 100 * frac, pct, "%", upper=False))
    return out


def quality_verdicts(acc: AccuracyResult, variant: str, budget: Budget) -> list[Verdict]:
    """The quality budgets (accuracy drop and floor, cosine, perplexity ratio, agreement) judged on one ok
    accuracy row: the evaluation backend's, or another backend's (e.g. a Snapdragon's emulated HTP)."""
    out: list[Verdict] = []
    if acc.value is None:
        return out
    if acc.metric == "accuracy":
        if budget.max_accuracy_drop is not None and acc.delta is not None:
            out.append(_limit("accuracy drop", variant, 0.0 - acc.delta, budget.max_accuracy_drop, " pts"))
        if budget.min_accuracy is not None:
            out.append(_limit("accuracy", variant, acc.value, budget.min_accuracy, "%", upper=False))
    if acc.metric == "cosine_to_reference" and budget.min_cosine is not None:
        out.append(_limit("cosine to reference", variant, acc.value, budget.min_cosine, "", upper=False))
    if acc.metric == "perplexity" and budget.max_perplexity_ratio is not None and acc.reference:
        out.append(_limit("perplexity ratio", variant, acc.value / acc.reference, budget.max_perplexity_ratio, "×"))
    if budget.min_agreement is not None:
        agree = next((acc.extra[k] for k in ("agreement_with_reference", "top1_agreement", "nn_agreement")
                      if k in acc.extra), None)
        if agree is not None and "decode_top1_agreement" in acc.extra:  # a generator: the worse of prefill and decode
            agree = min(agree, acc.extra["decode_top1_agreement"])
        if agree is not None:
            out.append(_limit("agreement with reference", variant, agree, budget.min_agreement, "%", upper=False))
    return out


def _instruction_verdicts(variant: str, cell: BenchResult, budget: Budget) -> list[Verdict]:
    """``max_instructions_m`` on an emulated-CPU cell: its instructions per inference, in millions (a cell that
    failed fails the budget: nothing was counted)."""
    if budget.max_instructions_m is None:
        return []
    if cell.status is not Status.OK or cell.instructions is None:
        return [Verdict(check="instructions", variant=variant, passed=False, backend=cell.backend,
                        threads=cell.threads, limit=budget.max_instructions_m,
                        message=f"{variant} on {cell.backend}x{cell.threads}: instructions not counted: {cell.reason}")]
    return [_limit("instructions", variant, cell.instructions / 1e6, budget.max_instructions_m, " M/inference",
                   backend=cell.backend, threads=cell.threads)]


def evaluate(cfg: ReleaseConfig, variants: Sequence[VariantResult]) -> tuple[list[Verdict], dict[str, Any]]:
    """All verdicts, and the gate decision with a recommended variant: every shipped variant (``[gate] ship``) meets
    its budgets; without ``ship``, ``require = all | any`` of the candidates (:func:`judged_variants`)."""
    verdicts: list[Verdict] = []
    passing: list[VariantResult] = []
    for v in variants:
        vs = variant_verdicts(v, shipped_budget(cfg, v.name))
        verdicts.extend(vs)
        if all(x.passed for x in vs):
            passing.append(v)
    judged = judged_variants(cfg, variants)
    if cfg.ship or cfg.require == "all":
        passed = all(v in passing for v in judged)
    else:
        passed = any(v in passing for v in judged)
    info = {
        "require": cfg.require,
        "ship": list(cfg.ship),
        "ship_targets": {t: list(vs) for t, vs in cfg.ship_targets.items()},
        "judged_variants": [v.name for v in judged],
        "passed": passed,
        "passing_variants": [v.name for v in passing],
        "failing_variants": [v.name for v in variants if v not in passing],
        "recommended": recommend(passing, cfg),
        "recommended_per_target": recommend_per_target(passing, variants, cfg),
    }
    return verdicts, info


def shipped_budget(cfg: ReleaseConfig, variant: str) -> Budget:
    """The variant's budgets; with ``ship`` per target, a target's coverage budgets judge only the variants shipped to
    that target (the CPU variant need not be taken whole by the GPU)."""
    budget = cfg.budget_for(variant)
    targets = {t for t, vs in cfg.ship_targets.items() if variant in vs}
    if not targets:
        return budget
    narrowed: dict[str, Any] = {key: {t: pct for t, pct in pcts.items() if t in targets}
                                for key in COVERAGE_KEYS if (pcts := getattr(budget, key))}
    return dataclasses.replace(budget, **narrowed)


def judged_variants(cfg: ReleaseConfig, variants: Sequence[VariantResult]) -> list[VariantResult]:
    """The variants the gate decides on: those ``[gate] ship`` names; without it, every candidate, the reference
    (the yardstick the others are measured against) excluded unless it is the only variant."""
    if cfg.ship:
        return [v for v in variants if v.name in cfg.ship]
    return [v for v in variants if v.name != cfg.reference] or list(variants)


def cpu_backend(cfg: ReleaseConfig) -> str:
    """The backend whose latency ranks variants for this machine's CPU: the first local CPU backend of ``[bench]``
    (not a GPU, a phone or an emulator), else ``xnnpack``."""
    local = [b for b in cfg.bench.backends if is_local_cpu_backend(b)]
    return local[0] if local else "xnnpack"


def recommend_per_target(passing: Sequence[VariantResult], variants: Sequence[VariantResult],
                         cfg: ReleaseConfig) -> list[dict[str, Any]]:
    """Per target, the variant to ship there: on the CPU the fastest that meets its budgets (:func:`recommend`); on
    each checked delegate or NPU the smallest that meets its budgets and that the target takes whole (latency here says
    nothing about a phone's GPU or NPU). Where none is taken whole, the closest one and what stays on the CPU."""
    cpu = recommend(passing, cfg)
    backend = cpu_backend(cfg)
    rows: list[dict[str, Any]] = [{"target": f"CPU ({backend}×{max(cfg.bench.threads)})", "variant": cpu,
                                   "why": "fastest measured median latency among the variants that meet their budgets"
                                   if cpu else "no variant meets its budgets"}]
    for d in dict.fromkeys(coreml.canonical(t) if coreml.is_mlprogram_target(t) else t for t in cfg.delegates):
        if coreml.is_mlprogram_target(d):
            rows.append(_core_ml_row(passing, variants, d, cfg))
            continue
        checked = [(v, v.compat_for(d)) for v in variants if v.compat_for(d) is not None]
        label = next((c.label for _, c in checked if c is not None), d)
        if checked and all(c is not None and c.status is not Status.OK for _, c in checked):
            first = checked[0][1]
            assert first is not None
            rows.append({"target": label, "variant": None, "why": first.verdict_text})
            continue
        whole = [v for v in passing if (c := v.compat_for(d)) is not None and c.status is Status.OK and c.fully_delegated]
        refused = {v.name: why for v in whole if (why := _emulation_refusal(v, d, cfg))}
        whole = [v for v in whole if v.name not in refused]
        if refused and not whole:
            rows.append({"target": label, "variant": None,
                         "why": "every variant the target takes whole fails on its emulated HTP: "
                                + "; ".join(f"{n}: {w}" for n, w in refused.items())})
            continue
        if whole:
            best = min(whole, key=lambda v: (v.size.bytes if v.size else float("inf"), v.name))
            why = "the smallest variant that meets its budgets and that the target takes whole"
            if refused:
                why += " (passed over: " + "; ".join(f"{n}: {w}" for n, w in refused.items()) + ")"
            rows.append({"target": label, "variant": best.name, "why": why})
            continue
        partial = [(v, c) for v, c in checked if c is not None and c.status is Status.OK]
        if not partial:
            rows.append({"target": label, "variant": None, "why": "not checked"})
            continue
        v, c = max(partial, key=lambda vc: (vc[0] in passing, vc[1].delegated_fraction))
        stays = ", ".join(f"{op}×{n}" for op, n in list(c.fallback_ops.items())[:4])
        why = (f"no variant that meets its budgets runs whole here; closest: {v.name} "
               f"({100 * c.delegated_fraction:.0f}% of ops; stays on the CPU: {stays or c.model_reason})")
        source = cfg.model.source
        if ({"STRIDED_SLICE", "GATHER"} & set(c.fallback_ops) and not source.options.get("gpu_friendly")
                and source.kind in SourceKind.checkpoints()):
            why += ("; litegate owns this graph: model.gpu_friendly = true rewrites its slices and gathers "
                    "(1-D, no shrink masks), which the GPU delegate and the HTP take")
        rows.append({"target": label, "variant": None, "why": why})
    return rows


def _core_ml_row(passing: Sequence[VariantResult], variants: Sequence[VariantResult], target: str,
                 cfg: ReleaseConfig) -> dict[str, Any]:
    """An ``mlprogram`` target: the smallest ``.mlpackage`` among the variants that meet their budgets (the size budget
    applied to the package) and converted; Core ML accuracy and latency are not measured here."""
    label = coreml.title(target)
    records = [(v, c) for v in variants if (c := v.coreml_for(target)) is not None]
    if not records:
        return {"target": label, "variant": None, "why": "not converted"}
    unmeasured = f"accuracy on Core ML not measured here ({coreml.prediction_reason()})"
    fits: list[tuple[VariantResult, int]] = []
    over: list[str] = []
    for v, c in records:
        if v not in passing or c.status is not Status.OK or c.package_bytes is None:
            continue
        limit = cfg.budget_for(v.name).max_size_mb
        if limit is not None and c.package_bytes / 1e6 > limit:
            over.append(f"{v.name} {c.package_bytes / 1e6:.2f} MB > {limit:g} MB")
        else:
            fits.append((v, c.package_bytes))
    if not fits:
        why = "; ".join(dict.fromkeys(f"{v.name}: {c.verdict_text}" for v, c in records if c.status is not Status.OK))
        return {"target": label, "variant": None,
                "why": "no variant that meets its budgets converted" + (f" within its size budget ({'; '.join(over)})"
                                                                        if over else "") + (f" ({why})" if why else "")}
    best, size = min(fits, key=lambda vs: (vs[1], vs[0].name))
    return {"target": label, "variant": best.name,
            "why": f"the smallest .mlpackage ({size / 1e6:.2f} MB) among the variants that meet their budgets and "
                   f"converted; {unmeasured}"}


def _emulation_refusal(v: VariantResult, target: str, cfg: ReleaseConfig) -> str | None:
    """Why ``v`` should not ship to a ``qnn:SOC`` target after its run on that SoC's emulated HTP (None: no reason,
    or not emulated): the emulator failed on it, or its accuracy there breaks the variant's accuracy budget."""
    if not qnn.is_qnn_target(target):
        return None
    row = next((a for a in v.accuracy if a.backend == htp_row_name(qnn.parse_target(target))), None)
    if row is None or row.status is Status.NOT_RUN:
        return None
    if row.status is not Status.OK:
        return row.reason
    failed = [x for x in quality_verdicts(row, v.name, cfg.budget_for(v.name)) if not x.passed]
    return f"on the emulated HTP: {failed[0].message}" if failed else None


def recommend(passing: Sequence[VariantResult], cfg: ReleaseConfig) -> str | None:
    """Among variants that meet their budgets: the fastest measured p50 at the most threads, then the smallest."""
    backend = cpu_backend(cfg)
    threads = max(cfg.bench.threads) if cfg.bench.threads else 1

    def key(v: VariantResult) -> tuple[float, float]:
        cell = v.bench_cell(backend, threads)
        p50 = cell.latency.p50 if cell and cell.latency else float("inf")
        return (p50, float(v.size.bytes if v.size else float("inf")))

    ranked = sorted(passing, key=key)
    return ranked[0].name if ranked else None

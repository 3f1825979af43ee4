"""Comparing a run against a baseline report, noise-aware.

Latency, paired (the default whenever the baseline's model file is at hand): the pipeline re-times the baseline's
model beside the candidate's in one child, in alternating blocks (:mod:`litegate.benchmarks.paired`), and a cell is
judged on the median over rounds of the paired block-median ratio new/base, with a bootstrap interval over rounds.
It regresses only when the whole interval lies above ``1 + threshold``.

Latency, unpaired (no baseline model file): the ratio of the two runs' median latencies with a bootstrap interval
from both runs' samples. One run's samples cannot see how a shared machine drifts between runs (identical models
measured minutes apart differed by up to +12%), so the unpaired interval must clear ``1 + threshold +
between_run_noise``, and it is compared only when both runs' machine fingerprints match. Instructions per inference on an emulated CPU
(``arm64-emu``) are counts, not timings: compared exactly, they regress when they grow by more than
``instructions_tolerance`` (0.05%; two runs agree to within a few instructions). Size and task metric changes are
exact and reported as is; size fails only beyond ``max_size_increase`` and accuracy beyond
``max_accuracy_regression``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from litegate.types import BenchResult, PairedCell, Report, Status, Verdict


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    threshold: float = 0.05  # relative latency increase the interval must exceed
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    max_size_increase: float = 0.02  # relative
    max_accuracy_regression: float = 1.0  # points
    instructions_tolerance: float = 0.0005  # relative: emulated counts repeat to within a few instructions
    between_run_noise: float = 0.10  # relative: added to the threshold when two runs' figures are compared unpaired
    paired_rounds: int = 15  # rounds of the paired re-measurement of the baseline's model (0: compare unpaired)


def bootstrap_ratio(base: Sequence[float], new: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(median(new)/median(base), low, high) with a percentile bootstrap interval."""
    b = np.asarray(base, np.float64)
    n = np.asarray(new, np.float64)
    if len(b) == 0 or len(n) == 0:
        raise ValueError("bootstrap needs samples on both sides")
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, len(b), size=(resamples, len(b)))
    ni = rng.integers(0, len(n), size=(resamples, len(n)))
    ratios = np.median(n[ni], axis=1) / np.median(b[bi], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.median(n) / np.median(b)), float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))


def paired_ratio(base_blocks: Sequence[float], new_blocks: Sequence[float], *, confidence: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median over rounds of new/base block medians, low, high) with a percentile bootstrap over the rounds."""
    b = np.asarray(base_blocks, np.float64)
    n = np.asarray(new_blocks, np.float64)
    if len(b) == 0 or len(b) != len(n) or np.any(b <= 0):
        raise ValueError(f"paired ratio needs equal, positive rounds on both sides (got {len(b)} and {len(n)})")
    r = n / b
    rng = np.random.default_rng(seed)
    boot = np.median(r[rng.integers(0, len(r), size=(resamples, len(r)))], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.median(r)), float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def compare_instructions(variant: str, base: BenchResult, new: BenchResult,
                         tolerance: float) -> tuple[dict[str, Any], Verdict]:
    """Instructions per inference on an emulated CPU, new against base: an exact count, so an exact comparison
    (no noise model); it regresses when it grows by more than ``tolerance`` (relative)."""
    assert base.instructions is not None and new.instructions is not None
    rel = new.instructions / base.instructions - 1.0
    regressed, improved = rel > tolerance, rel < -tolerance
    where = f"{new.backend}x{new.threads}"
    row = {"variant": variant, "what": f"instructions {where}", "base": base.instructions, "new": new.instructions,
           "change": rel, "verdict": "regressed" if regressed else "improved" if improved else "unchanged"}
    verdict = Verdict(check="instructions vs baseline", variant=variant, passed=not regressed,
                      value=round(rel * 100, 4), limit=tolerance * 100, backend=new.backend, threads=new.threads,
                      message=f"{variant} on {where}: instructions per inference {rel * 100:+.3f}% vs baseline "
                              f"({new.instructions:,} vs {base.instructions:,}; "
                              f"{'>' if regressed else '<='} +{tolerance * 100:g}%)")
    return row, verdict


FINGERPRINT = ("arch", "cpu", "cores_available", "isa")  # what must match for two runs' latencies to compare


def machine_difference(base: dict[str, Any], new: dict[str, Any]) -> str:
    """How the baseline's machine differs from this one ("" when their fingerprints match, or either is unknown)."""
    if not base or not new:
        return ""
    diff = [f"{k}: {base.get(k)!r} vs {new.get(k)!r}" for k in FINGERPRINT if base.get(k) != new.get(k)]
    return "; ".join(diff)


def _latency(variant: str, cell: BenchResult, bc: BenchResult | None, cfg: CompareConfig, pc: PairedCell | None,
             other: str) -> tuple[dict[str, Any], Verdict] | None:
    """One latency cell against the baseline: paired when its pair was timed, else unpaired (same machine only,
    with the between-run noise added to the threshold); None when there is nothing to compare."""
    where = f"{cell.backend}x{cell.threads}"
    if pc is not None and not pc.reason:
        ratio, lo, hi = paired_ratio(pc.base_blocks, pc.new_blocks, confidence=cfg.confidence,
                                     resamples=cfg.resamples, seed=cfg.seed)
        margin, how = cfg.threshold, (f"paired: the baseline's model re-timed beside this one, "
                                      f"{len(pc.base_blocks)} rounds")
        base_ms: float | None = float(np.median(pc.base_blocks))
        new_ms: float | None = float(np.median(pc.new_blocks))
    else:
        if (other or cell.status is not Status.OK or bc is None or bc.status is not Status.OK or not cell.samples_ms
                or not bc.samples_ms or cell.protocol.get("latency_emulated")):
            return None
        ratio, lo, hi = bootstrap_ratio(bc.samples_ms, cell.samples_ms, confidence=cfg.confidence,
                                        resamples=cfg.resamples, seed=cfg.seed)
        margin = cfg.threshold + cfg.between_run_noise
        how = (f"unpaired: two runs' figures, so +{cfg.between_run_noise * 100:g}% between-run noise is added"
               + (f"; {pc.reason}" if pc is not None else "; the baseline's model file was not found"))
        base_ms, new_ms = (bc.latency.p50 if bc.latency else None), (cell.latency.p50 if cell.latency else None)
    regressed = lo > 1.0 + margin
    improved = hi < 1.0 - margin
    # an interval wider than twice the margin cannot resolve a regression of the margin's size, and a median beyond
    # the margin that the interval does not confirm is no evidence of "no change": say so, not "unchanged"
    beyond = abs(ratio - 1.0) > margin
    inconclusive = not regressed and not improved and (hi - lo > 2 * margin or beyond)
    if inconclusive:
        how += (f"; inconclusive: the interval is {(hi - lo) * 100:.0f} points wide, too noisy here to resolve "
                f"+{margin * 100:g}%" + (" though the median is beyond it" if beyond else ""))
    row = {"variant": variant, "what": f"p50 {where}", "base": base_ms, "new": new_ms, "change": ratio - 1.0,
           "ci": [lo - 1.0, hi - 1.0], "paired": pc is not None and not pc.reason,
           "verdict": "regressed" if regressed else "improved" if improved else
                      "inconclusive" if inconclusive else "unchanged"}
    verdict = Verdict(
        check="latency vs baseline", variant=variant, passed=not regressed, value=round((ratio - 1) * 100, 2),
        limit=round(margin * 100, 4), backend=cell.backend, threads=cell.threads,
        message=(f"{variant} on {where}: median latency {(ratio - 1) * 100:+.1f}% vs baseline ({cfg.confidence * 100:g}% "
                 f"CI {(lo - 1) * 100:+.1f}% .. {(hi - 1) * 100:+.1f}%; regression only if the whole interval is above "
                 f"+{margin * 100:g}%; {how})"))
    return row, verdict


def compare(base: Report, new: Report, cfg: CompareConfig | None = None,
            paired: Mapping[tuple[str, str, int], PairedCell] | None = None
            ) -> tuple[list[Verdict], list[dict[str, Any]]]:
    """Verdicts for ``new`` against ``base``, and a row per compared quantity for the report.

    ``paired``: (variant, backend, threads) -> the baseline's model re-timed beside the variant's; such a cell is
    judged on the paired ratio whatever machine the baseline ran on.
    """
    cfg = cfg or CompareConfig()
    paired = paired or {}
    verdicts: list[Verdict] = []
    rows: list[dict[str, Any]] = []
    other = machine_difference(base.run.get("machine", {}), new.run.get("machine", {}))
    if other:
        verdicts.append(Verdict(check="latency vs baseline", variant="*", passed=True,
                                message=f"the baseline's latency figures are not compared: it was measured on another "
                                        f"machine ({other}); cells whose baseline model was re-timed here in pairs, "
                                        f"size, accuracy and instruction counts are"))
    for v in new.variants:
        b = base.variant(v.name)
        if b is None or v.status is not Status.OK or b.status is not Status.OK:
            continue
        if v.size and b.size:
            rel = v.size.bytes / b.size.bytes - 1.0
            ok = rel <= cfg.max_size_increase
            rows.append({"variant": v.name, "what": "size", "base": b.size.bytes, "new": v.size.bytes, "change": rel})
            verdicts.append(Verdict(check="size vs baseline", variant=v.name, passed=ok, value=round(rel * 100, 3),
                                    limit=cfg.max_size_increase * 100,
                                    message=f"{v.name}: size {rel * 100:+.2f}% vs baseline "
                                            f"({'<=' if ok else '>'} {cfg.max_size_increase * 100:g}%)"))
        for cell in v.bench:
            bc = b.bench_cell(cell.backend, cell.threads)
            if cell.instructions is not None and bc is not None and bc.instructions is not None:
                row, verdict = compare_instructions(v.name, bc, cell, cfg.instructions_tolerance)
                rows.append(row)
                verdicts.append(verdict)
                continue
            judged = _latency(v.name, cell, bc, cfg, paired.get((v.name, cell.backend, cell.threads)), other)
            if judged is not None:
                rows.append(judged[0])
                verdicts.append(judged[1])
        na, ba = v.primary_accuracy(), b.primary_accuracy()
        if na and ba and na.value is not None and ba.value is not None and na.metric == ba.metric:
            diff = na.value - ba.value
            rows.append({"variant": v.name, "what": na.metric, "base": ba.value, "new": na.value, "change": diff})
            if na.metric == "accuracy":
                ok = -diff <= cfg.max_accuracy_regression
                verdicts.append(Verdict(check="accuracy vs baseline", variant=v.name, passed=ok, value=round(diff, 4),
                                        limit=-cfg.max_accuracy_regression,
                                        message=f"{v.name}: accuracy {diff:+.2f} pts vs baseline"))
    return verdicts, rows

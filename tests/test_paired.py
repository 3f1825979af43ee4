"""Paired baseline re-measurement: the baseline's model re-timed beside the candidate's in one child (issue 17).

The statistic is judged on synthetic block medians (exact), and the child is run for real on a small converted
model: an identical copy reads as unchanged, a candidate made 40% slower (it busy-waits 40% of each inference) reads
as a regression, and a baseline built at another sequence length is timed on the same texts at its own length.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from litegate.artifacts import save_npz, sha256_file
from litegate.baseline import CompareConfig, compare, paired_ratio
from litegate.benchmarks.paired import PairedProtocol, find_baseline_model, remeasure
from litegate.types import (
    Artifact,
    BenchResult,
    LatencyStats,
    PairedCell,
    Recipe,
    Report,
    SizeInfo,
    Status,
    VariantResult,
)


def _cell(samples: list[float]) -> BenchResult:
    s = sorted(samples)
    return BenchResult(artifact_sha256="a" * 64, variant="fp32", backend="xnnpack", threads=1, status=Status.OK,
                       latency=LatencyStats(p50=s[len(s) // 2], p90=s[-1], p99=s[-1], mean=float(np.mean(s)), std=0.0,
                                            min=s[0], max=s[-1], n=len(s)),
                       samples_ms=tuple(samples))


def _report(samples: list[float], cpu: str = "c") -> Report:
    art = Artifact(path="/x/fp32.tflite", sha256="a" * 64, size_bytes=1000, parent_sha256=None, produced_by="t",
                   step_config={}, tool_versions={})
    v = VariantResult(name="fp32", recipe=Recipe("fp32", "float", {}), status=Status.OK, artifact=art,
                      size=SizeInfo(1000, 500), bench=(_cell(samples),))
    run = {"name": "t", "started_at": "2026-12-05T00:00:00+00:00", "wall_s": 1.0, "litegate": "0.1.0",
           "tool_versions": {}, "machine": {"arch": "x86_64", "cpu": cpu, "cores_available": 2},
           "gate": {"require": "all", "passed": True}}
    return Report(run=run, model={"source": {}, "sha256": "b" * 64, "seq_len": 8}, variants=(v,), verdicts=(),
                  passed=True)


def test_paired_ratio_sees_a_10pct_slowdown_through_drift_that_hides_it_unpaired():
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 1.3, 15)  # the machine slows down 30% over the run: both models of a round alike
    base = 2.0 * drift * rng.normal(1, 0.01, 15)
    same = 2.0 * drift * rng.normal(1, 0.01, 15)
    slower = 2.2 * drift * rng.normal(1, 0.01, 15)
    r, lo, hi = paired_ratio(base, same)
    assert lo < 1.0 < hi and abs(r - 1) < 0.02
    r, lo, hi = paired_ratio(base, slower)
    assert lo > 1.05 and r == pytest.approx(1.10, abs=0.02)
    with pytest.raises(ValueError, match="equal, positive rounds"):
        paired_ratio([1.0, 2.0], [1.0])


def test_compare_judges_the_pair_when_there_is_one_and_adds_between_run_noise_when_not():
    base = _report([1.0] * 30)
    new = _report([1.12] * 30)  # +12% between two runs: within what identical models showed on a shared machine
    cfg = CompareConfig()
    verdicts, rows = compare(base, new, cfg)
    (lat,) = [v for v in verdicts if v.check == "latency vs baseline"]
    assert lat.passed and lat.limit == pytest.approx(15.0) and "between-run noise" in lat.message
    assert "the baseline's model file was not found" in lat.message
    pc = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b/fp32.tflite",
                    base_blocks=(1.0,) * 15, new_blocks=(1.12,) * 15)
    verdicts, rows = compare(base, new, cfg, {("fp32", "xnnpack", 1): pc})
    (lat,) = [v for v in verdicts if v.check == "latency vs baseline"]
    assert not lat.passed and lat.limit == pytest.approx(5.0) and "paired" in lat.message and "15 rounds" in lat.message
    (row,) = [r for r in rows if r["what"] == "p50 xnnpackx1"]
    assert row["paired"] and row["verdict"] == "regressed"
    # a pair that could not be timed falls back to the unpaired comparison and says why
    failed = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b", reason="paired re-measurement "
                        "failed: boom")
    verdicts, _ = compare(base, new, cfg, {("fp32", "xnnpack", 1): failed})
    (lat,) = [v for v in verdicts if v.check == "latency vs baseline"]
    assert lat.passed and "boom" in lat.message
    # a baseline from another machine: its figures are not compared, but a pair timed here is
    other = _report([1.0] * 30, cpu="Apple M3")
    verdicts, _ = compare(other, new, cfg, {("fp32", "xnnpack", 1): pc})
    lat = [v for v in verdicts if v.check == "latency vs baseline"]
    assert [v.passed for v in lat] == [True, False] and "another machine" in lat[0].message


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("paired") / "fp32.tflite"
    r = run_cli("convert", str(tiny_checkpoint), "--seq-len", "16", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.serial
@pytest.mark.slow
def test_paired_child_reads_a_copy_as_unchanged_and_a_slower_candidate_as_slower(tmp_path, small_model):
    copy = tmp_path / "baseline" / "fp32.tflite"
    copy.parent.mkdir()
    shutil.copy(small_model, copy)
    (copy.parent / "report.json").write_text("{}")
    assert find_baseline_model(copy.parent / "report.json", "/elsewhere/fp32.tflite", sha256_file(small_model)) == copy
    assert find_baseline_model(copy.parent / "report.json", "/elsewhere/fp32.tflite", "0" * 64) is None
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 90, size=(8, 24)).astype(np.int32)  # 24 tokens: the 16-token model is fed its own length
    npz = tmp_path / "inputs.npz"
    save_npz(npz, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    kw = {"variant": "fp32", "base_path": copy, "new_path": str(small_model), "backend": "xnnpack", "threads": 1,
          "inputs_npz": npz, "signature": None, "protocol": PairedProtocol(rounds=9, block=20), "timeout_s": 300}
    same = remeasure(**kw)
    assert not same.reason and len(same.base_blocks) == len(same.new_blocks) == 9
    r, lo, hi = paired_ratio(same.base_blocks, same.new_blocks)
    assert 0.85 < r < 1.15, (r, lo, hi)
    slow = remeasure(**kw, slowdown=0.4)
    r, lo, hi = paired_ratio(slow.base_blocks, slow.new_blocks)
    assert lo > 1.05 and 1.2 < r < 1.6, (r, lo, hi)
    broken = remeasure(**{**kw, "base_path": tmp_path / "missing.tflite"})
    assert broken.reason.startswith("paired re-measurement failed") and not broken.base_blocks


def test_main_table_shows_each_cells_delta_vs_baseline_with_its_interval():
    import dataclasses

    from litegate.report import to_markdown

    base, new = _report([1.0] * 30), _report([1.12] * 30)
    pc = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b/fp32.tflite",
                    base_blocks=(1.0,) * 15, new_blocks=(1.12,) * 15)
    verdicts, rows = compare(base, new, CompareConfig(), {("fp32", "xnnpack", 1): pc})
    rep = dataclasses.replace(new, run={**new.run, "baseline": {"path": "b/report.json", "rows": rows}})
    table = [ln for ln in to_markdown(rep).splitlines() if ln.startswith("| ")]
    assert "xnnpack×1 p50/p90 ms · Δ vs baseline [95% CI]" in table[0]
    assert "**Δ +12.0% [+12.0, +12.0] paired, regressed**" in table[1]
    assert "Δ vs baseline" not in to_markdown(new)  # no baseline: no column suffix, no delta


def test_a_pair_too_noisy_to_resolve_the_threshold_is_called_inconclusive_not_unchanged():
    base, new = _report([1.0] * 30), _report([1.0] * 30)
    pc = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b/fp32.tflite",
                    base_blocks=(1.0,) * 15, new_blocks=(0.6, 1.5, 0.7, 1.4, 1.0, 0.5, 1.6, 1.0, 0.8, 1.3, 0.9, 1.2,
                                                         1.1, 0.6, 1.5))
    verdicts, rows = compare(base, new, CompareConfig(), {("fp32", "xnnpack", 1): pc})
    (lat,) = [v for v in verdicts if v.check == "latency vs baseline"]
    (row,) = [r for r in rows if r["what"] == "p50 xnnpackx1"]
    assert lat.passed and "inconclusive" in lat.message and row["verdict"] == "inconclusive"


def test_a_median_beyond_the_threshold_that_the_interval_does_not_confirm_is_inconclusive_not_unchanged():
    base, new = _report([1.0] * 30), _report([1.0] * 30)
    ratios = tuple(float(x) for x in np.linspace(1.0, 1.12, 15))  # median +6%: the interval reaches below +5%
    pc = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b/fp32.tflite",
                    base_blocks=(1.0,) * 15, new_blocks=ratios)
    verdicts, rows = compare(base, new, CompareConfig(), {("fp32", "xnnpack", 1): pc})
    (lat,) = [v for v in verdicts if v.check == "latency vs baseline"]
    (row,) = [r for r in rows if r["what"] == "p50 xnnpackx1"]
    assert row["ci"][0] < 0.05 < row["change"] and row["ci"][1] - row["ci"][0] < 0.10
    assert lat.passed and row["verdict"] == "inconclusive" and "median is beyond it" in lat.message
    steady = PairedCell(variant="fp32", backend="xnnpack", threads=1, base_path="/b/fp32.tflite",
                        base_blocks=(1.0,) * 15, new_blocks=tuple(float(x) for x in np.linspace(0.99, 1.03, 15)))
    _, rows = compare(base, new, CompareConfig(), {("fp32", "xnnpack", 1): steady})
    assert [r["verdict"] for r in rows if r["what"] == "p50 xnnpackx1"] == ["unchanged"]

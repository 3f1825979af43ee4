"""The ``arm64-emu`` backend: aarch64 LiteRT under QEMU user mode, counting instructions per inference.

The emulation tests need ``make arm-sim`` (root: an arm64 Debian root, QEMU, the TCG plugin; ``make test`` tries it
first); without it they skip and say why. They run a tiny BERT made in the test on a few samples (each emulated
inference costs a fraction of a second). The syntax, not-run, gate, baseline and report tests run everywhere, on
records.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint, run_cli, write_config

from litegate.backends import arm
from litegate.backends.registry import KNOWN, backend_syntax_error, why_not_runnable
from litegate.baseline import CompareConfig, compare, compare_instructions
from litegate.config import Budget
from litegate.gate import variant_verdicts
from litegate.report import to_markdown
from litegate.types import (
    AccuracyResult,
    Artifact,
    BenchResult,
    Recipe,
    Report,
    SizeInfo,
    Status,
    VariantResult,
)

SHA = "a" * 64
REPEAT_TOL = 1e-4  # counts repeat within 0.01% (the acceptance bound); they wobble by a few hundred instructions


@pytest.fixture(scope="module")
def arm_ready() -> None:
    """Skip (saying why) when the arm64 root is not set up; requested first, before any model is built."""
    reason = why_not_runnable(arm.NAME)
    if reason:
        pytest.skip(f"arm64-emu cannot run here: {reason}")


@pytest.fixture(scope="module")
def tiny_bert(arm_ready: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small BERT classifier (hidden 128, 2 layers: a few million instructions per inference, so the few hundred
    instructions the counts wobble by are below 0.01%) converted to fp32 .tflite, and an .npz of 3 tokenized
    evaluation sentences."""
    from litegate.api import convert_model
    from litegate.artifacts import save_npz
    from litegate.tasks import TextEncoder
    from litegate.types import ModelSource

    folder = tmp_path_factory.mktemp("arm-bert")
    ckpt = make_checkpoint(folder / "ck", hidden=128, intermediate=256)
    model = folder / "fp32.tflite"
    convert_model(ModelSource(kind="hf-bert", path=str(ckpt), task="text-classification", seq_len=48), model)
    texts = [line.split("\t")[0] for line in (DEMO / "eval.tsv").read_text().splitlines()[1:4]]
    inputs = folder / "inputs.npz"
    save_npz(inputs, TextEncoder(ckpt / "tokenizer.json", 48).encode(texts))
    return model, inputs


@pytest.fixture(scope="module")
def fp32_runs(tiny_bert: tuple[Path, Path]) -> tuple[arm.ArmRun, arm.ArmRun]:
    """The tiny BERT on ARM's XNNPACK kernels, twice, each in its own emulator process."""
    model, inputs = tiny_bert
    return (arm.run_arm(model, inputs, timeout_s=300), arm.run_arm(model, inputs, timeout_s=300))


# --- on the emulator --------------------------------------------------------------------------------


@pytest.mark.slow
def test_arm_outputs_match_x86_and_counts_repeat_within_and_across_processes(tiny_bert, fp32_runs):
    from litegate.backends.runtime import Runner

    model, inputs = tiny_bert
    first, second = fp32_runs
    with np.load(inputs) as data:
        x86 = Runner(model, backend="xnnpack").run_batch({k: data[k] for k in data.files})
    assert first.n_inputs == 3 and first.kernels == "xnnpack" and first.cpu == "cortex-a76"
    np.testing.assert_allclose(first.outputs["logits"], x86["logits"], rtol=1e-5, atol=1e-5)
    counts = first.instructions
    assert min(counts) > 3_000_000  # an encoder's worth of instructions, not a marker-to-marker stub
    assert (max(counts) - min(counts)) / min(counts) < REPEAT_TOL, counts
    assert abs(second.per_inference / first.per_inference - 1.0) < REPEAT_TOL, (first.instructions, second.instructions)
    np.testing.assert_array_equal(first.outputs["logits"], second.outputs["logits"])


@pytest.mark.slow
def test_arm_builtin_kernels_count_other_code_and_compute_the_same(tiny_bert, fp32_runs):
    model, inputs = tiny_bert
    builtin = arm.run_arm(model, inputs, f"{arm.NAME}?kernels=builtin", timeout_s=300)
    xnnpack = fp32_runs[0]
    assert builtin.kernels == "builtin"
    assert builtin.per_inference != xnnpack.per_inference
    np.testing.assert_allclose(builtin.outputs["logits"], xnnpack.outputs["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_arm_matrix_cell_has_instructions_and_no_latency(tiny_bert):
    from litegate.benchmarks.matrix import run_cell

    model, inputs = tiny_bert
    cell = run_cell(path=model, sha256=SHA, variant="fp32", backend=arm.NAME, threads=1, inputs_npz=inputs,
                    protocol={"warmup_runs": 1, "min_runs": 3, "min_seconds": 0.0}, timeout_s=300)
    assert cell.status is Status.OK, cell.reason
    assert cell.latency is None and cell.samples_ms == () and cell.init_ms is None and cell.first_ms is None
    assert cell.instructions is not None and cell.instructions > 100_000
    p = cell.protocol
    assert p["latency_emulated"] is True and p["kernels"] == "xnnpack" and p["n_inputs"] == 3
    assert len(p["instructions_per_invoke"]) == 3 and "warmup_runs" not in p
    assert "no latency" in cell.reason


@pytest.mark.slow
def test_run_with_arm64_emu_reports_arm_accuracy_rows_and_gates_instructions(arm_ready, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck")
    cfg = write_config(tmp_path / "run", model=ckpt, variants=("fp32", "int8"), seq_len=24,
                       extra='[check]\ndelegates = []\nemulate_samples = 6\n',
                       budgets="[budgets]\nmax_instructions_m = 1000.0\n[budgets.int8]\nmax_instructions_m = 0.001\n")
    text = cfg.read_text().replace("[bench]\n", f'[bench]\nbackends = ["xnnpack", "{arm.NAME}"]\n')
    cfg.write_text(text)
    proc = run_cli("run", str(cfg), timeout=1200)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the int8 budget of 1000 instructions fails
    out = tmp_path / "run" / "out"
    rep = json.loads((out / "report.json").read_text())
    for v in rep["variants"]:
        cell = next(b for b in v["bench"] if b["backend"] == arm.NAME)
        assert cell["status"] == "ok" and cell["latency"] is None and cell["instructions"] > 100_000
        assert [b["threads"] for b in v["bench"] if b["backend"] == arm.NAME] == [1]
        row = next(a for a in v["accuracy"] if a["backend"] == arm.NAME)
        assert row["status"] == "ok" and row["n_samples"] == 6
        assert "max_abs_diff_vs_x86" in row["extra"] and "agreement_with_reference" in row["extra"]
    fp32 = next(v for v in rep["variants"] if v["name"] == "fp32")
    assert next(a for a in fp32["accuracy"] if a["backend"] == arm.NAME)["extra"]["max_abs_diff_vs_x86"] < 1e-4
    failed = [x for x in rep["verdicts"] if not x["passed"]]
    assert [(x["check"], x["variant"], x["backend"]) for x in failed] == [("instructions", "int8", arm.NAME)]
    md = (out / "report.md").read_text()
    assert f"{arm.NAME}×1 instructions, no latency" in md and "M instructions/inference)" in md
    assert "ARM kernels, aarch64 LiteRT under QEMU" in md


# --- everywhere: syntax, not run, gate, baseline, report -------------------------------------------


def test_arm_backend_syntax():
    assert arm.NAME in KNOWN
    assert backend_syntax_error("arm64-emu") is None
    assert backend_syntax_error("arm64-emu?kernels=builtin") is None
    assert arm.parse_backend("arm64-emu") == "xnnpack" and arm.parse_backend("arm64-emu?kernels=builtin") == "builtin"
    assert "kernels must be one of xnnpack, builtin" in (backend_syntax_error("arm64-emu?kernels=gpu") or "")
    assert "unknown option 'threads'" in (backend_syntax_error("arm64-emu?threads=2") or "")
    assert "unknown backend" in (backend_syntax_error("arm64-emulated") or "")


def test_arm_not_set_up_is_not_run_with_the_fix(monkeypatch, tmp_path):
    from litegate import doctor
    from litegate.benchmarks.matrix import run_cell

    monkeypatch.setenv(arm.ROOT_ENV, str(tmp_path / "nothing"))
    reason = why_not_runnable(arm.NAME)
    assert reason is not None and "make arm-sim" in reason and str(tmp_path / "nothing") in reason
    cell = run_cell(path=tmp_path / "m.tflite", sha256=SHA, variant="fp32", backend=arm.NAME, threads=1,
                    inputs_npz="unused.npz", protocol={}, timeout_s=10)
    assert cell.status is Status.NOT_RUN and cell.reason == reason
    (row,) = [r for r in doctor.check() if r["name"] == f"backend {arm.NAME}"]
    assert row["ok"] is False and "make arm-sim" in row["fix"] and row["detail"] == reason


def test_arm_half_set_up_names_what_is_missing(monkeypatch, tmp_path):
    (tmp_path / "ready").write_text(f"qemu=/bin/sh\npython=/usr/bin/python3.11\nsite=/opt/litegate/site\n"
                                    f"plugin={tmp_path}/insn_count.so\ncpu=cortex-a76\nlitert=2.3.0\n")
    monkeypatch.setenv(arm.ROOT_ENV, str(tmp_path))
    reason = why_not_runnable(arm.NAME) or ""
    assert "instruction-count plugin" in reason and "make arm-sim" in reason


def _cell(instructions: int | None, status: str = "ok", reason: str = "") -> BenchResult:
    return BenchResult(artifact_sha256=SHA, variant="int8", backend=arm.NAME, threads=1, status=status,
                       reason=reason or ("" if status == "ok" else "the arm64 guest failed"), instructions=instructions,
                       protocol={"latency_emulated": True, "kernels": "xnnpack", "cpu": "cortex-a76", "n_inputs": 8,
                                 "litert": "2.3.0"})


def _variant(cell: BenchResult, *, arm_row: bool = True) -> VariantResult:
    art = Artifact(path="/x/int8.tflite", sha256=SHA, size_bytes=1000, parent_sha256=None, produced_by="convert",
                   step_config={}, tool_versions={})
    rows = (AccuracyResult(task="text-classification", metric="accuracy", value=80.0, backend="xnnpack",
                           n_samples=100, reference=80.0, delta=0.0),)
    if arm_row:
        rows += (AccuracyResult(task="text-classification", metric="accuracy", value=79.5, backend=arm.NAME,
                                n_samples=8, reference=80.0, delta=-0.5,
                                extra={"agreement_with_reference": 98.0, "max_abs_diff_vs_x86": 0.0378,
                                       "instructions_per_inference": 8414307.0}),)
    return VariantResult(name="int8", recipe=Recipe("int8", "full-integer", {}), status=Status.OK, artifact=art,
                         size=SizeInfo(1000, 500), bench=(cell,), accuracy=rows)


def _report(*variants: VariantResult) -> Report:
    run = {"name": "t", "started_at": "2026-12-05T00:00:00+00:00", "wall_s": 1.0, "litegate": "0.1.0",
           "tool_versions": {}, "machine": {}, "gate": {"require": "all", "passed": True}}
    return Report(run=run, model={"source": {}, "sha256": "b" * 64, "seq_len": 8}, variants=variants, verdicts=(),
                  passed=True)


def test_ok_bench_result_has_latency_or_instructions_and_round_trips():
    cell = _cell(8_414_307)
    assert BenchResult.from_dict(json.loads(json.dumps(cell.to_dict()))) == cell
    with pytest.raises(ValueError, match="needs latency"):
        _cell(None)
    with pytest.raises(ValueError, match="must be > 0"):
        _cell(0)


def test_instructions_budget_fails_a_variant_above_it_and_latency_budgets_skip_the_cell():
    budget = Budget(max_instructions_m=8.0, max_latency_p50_ms=1.0)
    (v,) = variant_verdicts(_variant(_cell(8_414_307)), budget)
    assert (v.check, v.passed, v.value, v.limit, v.backend) == ("instructions", False, 8.4143, 8.0, arm.NAME)
    assert "8.414 M/inference > 8 M/inference" in v.message
    (v,) = variant_verdicts(_variant(_cell(8_414_307)), Budget(max_instructions_m=9.0))
    assert v.passed
    # the budget says why the count is missing; the evidence check says the variant measured nothing at all
    v, evidence = variant_verdicts(_variant(_cell(None, status="failed")), budget)
    assert not v.passed and "instructions not counted: the arm64 guest failed" in v.message
    assert (evidence.check, evidence.passed) == ("benchmark evidence", False)
    assert "no benchmark cell measured anything (1 failed" in evidence.message
    assert variant_verdicts(_variant(_cell(8_414_307)), Budget(max_latency_p50_ms=1.0)) == []


def test_baseline_compares_instructions_exactly_with_a_small_tolerance():
    base = _cell(10_393_674)
    row, same = compare_instructions("fp32", base, _cell(10_393_705), 0.0005)  # +31: two processes
    assert same.passed and row["verdict"] == "unchanged"
    _, up = compare_instructions("fp32", base, _cell(10_403_674), 0.0005)  # +0.096%: a real change
    assert not up.passed and up.check == "instructions vs baseline" and "+0.096%" in up.message
    _, down = compare_instructions("fp32", base, _cell(9_393_674), 0.0005)
    assert down.passed
    verdicts, rows = compare(_report(_variant(base)), _report(_variant(_cell(10_500_000))), CompareConfig())
    assert [(v.check, v.passed) for v in verdicts if v.backend == arm.NAME] == [("instructions vs baseline", False)]
    assert any(r["what"] == f"instructions {arm.NAME}x1" and r["verdict"] == "regressed" for r in rows)


def test_report_shows_instructions_never_a_time_for_the_emulated_cell():
    from litegate.html import latency_chart, to_html

    rep = _report(_variant(_cell(8_414_307)))
    assert arm.NAME not in latency_chart(rep)
    assert "numerics only, no latency; vs the same variant on x86: max |Δ| 0.0378" in to_html(rep, "t")
    md = to_markdown(rep)
    assert f"{arm.NAME}×1 instructions, no latency" in md
    assert "— (emulated: 8.41 M instructions/inference)" in md
    assert f"{arm.NAME}×1 p50" not in md
    assert "vs the same variant on x86: max \\|Δ\\| 0.0378" in md
    assert "Emulated time is not a latency" in md


def test_arm_cell_matches_the_report_schema():
    from conftest import ROOT

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "litegate" / "report.schema.json").read_text())
    cell_schema = schema["properties"]["variants"]["items"]["properties"]["bench"]["items"]
    jsonschema.validate(json.loads(json.dumps(_cell(8_414_307).to_dict())), cell_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**_cell(8_414_307).to_dict(), "instructions": 0}, cell_schema)


def test_config_reads_the_instructions_budget_and_tolerance(tmp_path):
    from litegate.config import load as load_config
    from litegate.errors import ConfigError

    ckpt = make_checkpoint(tmp_path / "ck")
    cfg = write_config(tmp_path / "a", model=ckpt, budgets="[budgets]\nmax_instructions_m = 12.5\n",
                       extra="[gate]\ninstructions_tolerance = 0.001\n")
    loaded = load_config(cfg)
    assert loaded.budget.max_instructions_m == 12.5 and loaded.compare.instructions_tolerance == 0.001
    bad = write_config(tmp_path / "b", model=ckpt, extra="[gate]\ninstructions_tolerance = 5.0\n")
    with pytest.raises(ConfigError, match="instructions_tolerance"):
        load_config(bad)

"""The real ``litegate`` CLI in a subprocess, on the embedded default and on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO, ROOT, SHARED_DATA, run_cli, write_config

from litegate.report import load as load_report

pytestmark = pytest.mark.slow


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_run_on_embedded_default_reports_every_variant_measured(demo_runs):
    out, first, rep, _ = demo_runs
    assert first.returncode == 0, first.stderr
    assert "litegate: PASS" in first.stdout
    names = [v["name"] for v in rep["variants"]]
    assert names == ["fp32", "dynamic-int8", "fp16", "int8"]
    for v in rep["variants"]:
        assert v["status"] == "ok"
        assert (out / f"{v['name']}.tflite").stat().st_size == v["size"]["bytes"] > 100_000
        cells = {(b["backend"], b["threads"]): b for b in v["bench"]}
        assert set(cells) == {("xnnpack", 1), ("xnnpack", 2)}
        for b in cells.values():
            assert b["status"] == "ok" and b["latency"]["n"] >= 100 and 0 < b["latency"]["p50"] <= b["latency"]["p90"]
            assert len(b["samples_ms"]) == b["latency"]["n"]
        acc = v["accuracy"][0]
        assert acc["status"] == "ok" and acc["n_samples"] == 220
    fp32 = rep["variants"][0]["accuracy"][0]
    assert fp32["value"] > 70.0
    # smaller variants really are smaller
    sizes = {v["name"]: v["size"]["bytes"] for v in rep["variants"]}
    assert sizes["dynamic-int8"] < 0.4 * sizes["fp32"] and sizes["fp16"] < 0.6 * sizes["fp32"]
    md = (out / "report.md").read_text()
    assert md.startswith("## ✅ litegate: PASS")
    for name in names:
        assert f"| **{name}** |" in md
    # dynamic-int8's weights are rounded by GPTQ on the calibration text, every one onto the converter's grid
    wr = next(v for v in rep["variants"] if v["name"] == "dynamic-int8")["quant"]["weight_rounding"]
    assert wr["method"] == "gptq" and wr["fully_connected_ops"] == wr["matched"] == wr["on_grid"] > 0, wr
    assert wr["output_error"]["gptq_mean"] < wr["output_error"]["nearest_mean"]
    assert f"- `dynamic-int8`: int8 weights rounded by GPTQ on {wr['rows']} calibration rows" in md
    # int8's attention matmuls were given zero-point-0 right-hand operands, so XNNPACK runs them
    mo = next(v for v in rep["variants"] if v["name"] == "int8")["quant"]["matmul_operands"]
    assert mo["batch_matmuls"] == mo["rewritten"] + mo["symmetric"] > 0 and not mo["skipped"], mo
    assert f"- `int8`: {mo['batch_matmuls']} of {mo['batch_matmuls']} int8 BATCH_MATMULs read a zero-point-0" in md
    assert rep["schema_version"] == "1.0" and rep["run"]["machine"]["cores_available"] >= 1
    load_report(out / "report.json")  # parses back into the typed report
    for name in ("report.html", "junit.xml", "tokenizer.json", "model.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["signatures"]["serving_default"] == {"inputs": ["attention_mask", "input_ids"], "outputs": ["logits"]}
    assert meta["labels"] == {"0": "negative", "1": "positive"}
    compat = {c["delegate"]: c for c in rep["variants"][0]["compat"]}
    assert set(compat) == {"gpu", "hexagon", "coreml", "xnnpack"}
    assert compat["hexagon"]["delegated_fraction"] == 0.0  # float model: Hexagon runs 8-bit only
    # Where the time goes: the slowest variant at 1 thread, profiled op by op.
    prof = rep["run"]["op_profile"]
    slowest = max(rep["variants"], key=lambda v: next(b["latency"]["p50"] for b in v["bench"] if b["threads"] == 1))
    assert prof["variant"] == slowest["name"] and prof["threads"] == 1 and prof["runs"] == 20
    assert 99.0 <= sum(r["pct"] for r in prof["by_type"]) <= 101.0 and prof["by_type"][0]["ms_per_run"] > 0
    assert [o["ms_per_run"] for o in prof["top_ops"]] == sorted((o["ms_per_run"] for o in prof["top_ops"]), reverse=True)
    # report.md on disk is the second (cached) run's: its profile names that run's slowest variant
    latest = json.loads((out / "report.json").read_text())["run"]["op_profile"]
    assert f"Where the time goes: `{latest['variant']}`" in md
    peak = rep["run"]["machine_peak"]
    assert set(peak["probes"]) == {"numpy", "xnnpack"} and peak["gflops"]["1"] > 0


def test_second_run_reuses_cached_conversions(demo_runs):
    out, _, rep1, second = demo_runs
    assert second.returncode == 0, second.stderr
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["run"]["cache_hits"] == 4 and rep1["run"]["cache_hits"] == 0
    assert [v["artifact"]["sha256"] for v in rep2["variants"]] == [v["artifact"]["sha256"] for v in rep1["variants"]]
    assert "(cached)" in second.stderr and "child process" not in second.stderr


def test_jobs_2_builds_and_evaluates_in_parallel_children_with_the_same_figures(demo_runs):
    """The first run had --jobs 2: two build children, per-stage times, and the same accuracy as the second (one
    evaluation child at a time, on the cached models)."""
    out, first, rep1, _ = demo_runs
    rep2 = json.loads((out / "report.json").read_text())
    assert first.stderr.count("in a child process") == 2  # two build children, one line each
    # the first child to finish frees its slot for its variants' evaluation while the other child still converts
    assert first.stderr.index("eval: ") < first.stderr.index("convert: done in"), first.stderr
    assert rep1["run"]["jobs"] == 2 and rep2["run"]["jobs"] == 1
    names = [v["name"] for v in rep1["variants"]]
    stages = rep1["run"]["stages"]
    for name in names:
        assert stages[f"convert:{name}"] > 0 and stages[f"eval:{name}"] > 0
    for key in ("inputs", "convert", "convert:load", "inspect", "bench", "eval", "profile"):
        assert stages[key] > 0, key
    assert max(stages[f"convert:{n}"] for n in names) < stages["convert"]  # a child's clock inside the stage's
    assert sum(stages[k] for k in ("inputs", "convert", "inspect", "bench", "eval", "profile")) <= rep1["run"]["wall_s"]
    assert "convert:load" not in rep2["run"]["stages"]  # all cached
    acc = {v["name"]: v["accuracy"][0]["value"] for v in rep1["variants"]}
    assert acc == {v["name"]: v["accuracy"][0]["value"] for v in rep2["variants"]}


def test_report_command_renders_every_format_from_json(demo_runs):
    """`litegate report` re-renders any file the run wrote, byte for byte, from report.json alone."""
    out = demo_runs[0]
    for fmt, name in (("md", "report.md"), ("html", "report.html"), ("junit", "junit.xml")):
        r = run_cli("report", str(out / "report.json"), "--format", fmt)
        assert r.returncode == 0 and r.stdout == (out / name).read_text(), fmt


@pytest.mark.skipif(not (SHARED_DATA / "sst2" / "dev.tsv").is_file(), reason="../shared/data/sst2 not present")
def test_run_with_data_override_reports_sst2_dev_for_every_variant(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path, model=tiny_checkpoint, variants=("fp32", "dynamic-int8"))
    cfg.write_text(cfg.read_text().replace("max_eval_samples = 40\n", ""))
    r = run_cli("run", str(cfg), "--data", str(SHARED_DATA / "sst2" / "dev.tsv"), "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["run"]["eval"]["data"] == str((SHARED_DATA / "sst2" / "dev.tsv").resolve())
    assert [v["accuracy"][0]["n_samples"] for v in rep["variants"]] == [872, 872]


def test_gate_failure_exits_1_with_report(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path, model=tiny_checkpoint, budgets="[budgets]\nmax_size_mb = 0.001\n")
    r = run_cli("run", str(cfg), "-q")
    assert r.returncode == 1, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["passed"] is False
    assert (tmp_path / "out" / "report.md").read_text().startswith("## ❌ litegate: FAIL — fp32: size")


def _assert_clean_failure(r, out: Path, code: int, pattern: str):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("litegate:")]
    assert len(lines) == 1 and pattern in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not {"report.json", "report.md"} & _files(out)
    assert not [n for n in _files(out) if n.endswith(".tmp")]


def test_typoed_key_exits_2_with_one_line_and_no_report(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path, model=tiny_checkpoint)
    cfg.write_text(cfg.read_text().replace("[bench]", "[bench]\nthreds = [1]"))
    _assert_clean_failure(run_cli("run", str(cfg)), tmp_path / "out", 2, "unknown key 'bench.threds'")


def test_missing_model_path_exits_2_with_one_line_and_no_report(tmp_path):
    cfg = write_config(tmp_path, model=tmp_path / "no-such-model")
    _assert_clean_failure(run_cli("run", str(cfg)), tmp_path / "out", 2, "no-such-model")


def test_empty_eval_file_exits_4_with_one_line_and_no_report(tmp_path, tiny_checkpoint):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    cfg = write_config(tmp_path, model=tiny_checkpoint, eval_path=empty)
    _assert_clean_failure(run_cli("run", str(cfg)), tmp_path / "out", 4, "evaluation data has no rows")


def test_cli_version_doctor_and_help_examples():
    assert run_cli("--version").stdout.strip() == "litegate, version 0.1.0"
    doc = run_cli("doctor", "--json")
    rows = {r["name"]: r for r in json.loads(doc.stdout)}
    assert rows["backend xnnpack"]["ok"] and not rows["backend hexagon"]["ok"] and rows["backend hexagon"]["fix"]
    for cmd in ("run", "convert", "quantize", "bench", "report", "doctor"):
        h = run_cli(cmd, "--help")
        assert h.returncode == 0 and "Example:" in h.stdout, cmd


def test_bench_command_measures_a_published_variant(demo_runs):
    out = demo_runs[0]
    r = run_cli("bench", str(out / "int8.tflite"), "--text", str(DEMO / "eval.tsv"), "--threads", "1",
                "--backend", "xnnpack,hexagon", "--min-runs", "10", "--min-seconds", "0", "--json")
    assert r.returncode == 0, r.stderr
    cells = json.loads(r.stdout)
    assert cells[0]["status"] == "ok" and cells[0]["latency"]["n"] >= 10
    assert cells[1]["status"] == "not_run" and "Hexagon" in cells[1]["reason"]
    bad = run_cli("bench", str(out / "int8.tflite"), "--text", str(DEMO / "eval.tsv"), "--backend", "tpu")
    assert bad.returncode == 2 and "unknown backend 'tpu'" in bad.stderr


def test_readme_and_ci_contract():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_ci_logs_get_a_heartbeat_naming_the_stage_while_it_works_silently(tmp_path, monkeypatch):
    """Without a terminal, a stage that says nothing for HEARTBEAT_S seconds (here 0.5 s; 30 s in use) gets a line
    naming what is still running, so a CI log never goes silent for minutes."""
    from click.testing import CliRunner

    from litegate import cli as cli_module

    monkeypatch.setattr(cli_module, "HEARTBEAT_S", 0.5)
    cfg = write_config(tmp_path, model=DEMO / "model", seq_len=16)
    res = CliRunner().invoke(cli_module.cli, ["run", str(cfg)])
    assert res.exit_code in (0, 1), res.output
    beats = [line for line in res.stderr.splitlines() if "(still working:" in line]
    assert any("convert: building fp32 in a child process (still working:" in line for line in beats), res.stderr


def test_ci_logs_end_with_the_results_table_the_verdict_and_report_md(tmp_path):
    """Without a terminal (CI), `run` prints the main results table, then the verdict, then where report.md is."""
    cfg = write_config(tmp_path, model=DEMO / "model", seq_len=16, variants=("fp32", "dynamic-int8"))
    r = run_cli("run", str(cfg))
    assert r.returncode in (0, 1), r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| variant | recipe |") and any(x.startswith("| **dynamic-int8** |") for x in lines)
    assert lines[-2].startswith(("✅ litegate: PASS", "❌ litegate: FAIL"))
    assert lines[-1] == f"report: {tmp_path / 'out' / 'report.md'} (also report.html, report.json, junit.xml)"

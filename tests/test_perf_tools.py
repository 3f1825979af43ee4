"""The performance tooling: ``tools/export_onnx.py``, the op profiler and ``make perf``'s selection logic.

Fast: the pure functions on synthetic numbers, the profiler on a small model built with LiteRT's
schema object API (no TensorFlow), and the ONNX export of the tiny BERT checked against the numpy
oracle (skipped when onnxruntime is not installed). ``slow``: the export's own TensorFlow reference.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import DEMO, ROOT, make_checkpoint

from litegate.benchmarks.profile import (
    DEFAULT_EVENT,
    DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT,
    OPERATOR_INVOKE_EVENT,
    aggregate,
    by_type,
    op_profile,
    run_profile,
)
from tools import export_onnx, onnx_graph, perf

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime / onnx not installed (pip install -e '.[peers]')")


# --- best-variant selection and the target comparison (pure) --------------------------------------

def test_select_best_variant_is_fastest_within_the_cosine_budget():
    ms = {"tflite fp32": 14.0, "tflite dynamic-int8": 5.0, "tflite int8": 3.0, "tflite fp16": 13.9}
    cos = {"tflite fp32": 1.0, "tflite dynamic-int8": 0.9988, "tflite int8": 0.10, "tflite fp16": 1.0}
    assert perf.select_best_variant(ms, cos) == "tflite dynamic-int8"  # int8 is faster but outside the budget
    assert perf.select_best_variant(ms, cos, min_cosine=0.9999) == "tflite fp16"
    assert perf.select_best_variant(ms, cos, min_cosine=1.01) is None


def test_select_best_variant_skips_variants_without_numbers_and_breaks_ties_by_order():
    ms: dict[str, Any] = {"a": "not run: crashed", "b": 7.0, "c": 7.0, "d": 1.0, "e": float("nan")}
    cos: dict[str, Any] = {"a": 1.0, "b": 0.995, "c": 0.999, "e": 1.0}  # d has no cosine: not eligible
    assert perf.select_best_variant(ms, cos) == "b"
    assert perf.select_best_variant({}, {}) is None
    assert perf.select_best_variant({"x": 1.0}, {"x": 0.99}) == "x"  # the budget is inclusive


def test_compare_to_target_reports_the_miss_or_the_margin():
    missed = perf.compare_to_target(12.0, 10.0)
    assert missed["ratio"] == 1.2 and missed["met"] is False and missed["missed_by_pct"] == pytest.approx(20.0)
    assert "missed" in missed["verdict"]
    met = perf.compare_to_target(5.0, 10.0)
    assert met["met"] is True and met["margin_pct"] == pytest.approx(50.0) and "missed_by_pct" not in met
    assert perf.compare_to_target(10.0, 10.0)["met"] is True


def test_best_vs_onnxruntime_picks_per_thread_count_and_reports_both_cosines():
    peer = "onnxruntime optimized int8 per-channel"
    p50 = {"tflite fp32 x1": 14.0, "tflite dynamic-int8 x1": 5.0, "tflite fp16 x1": 13.0,
           "tflite fp32 x2": 8.0, "tflite dynamic-int8 x2": "not run: timeout", "tflite fp16 x2": 9.0,
           f"{peer} x1": 8.0, f"{peer} x2": 6.0}
    mean = {"tflite fp32": 1.0, "tflite dynamic-int8": 0.998, "tflite fp16": 1.0, peer: 0.9917}
    low = {"tflite fp32": 1.0, "tflite dynamic-int8": 0.997, "tflite fp16": 1.0, peer: 0.98}
    out = perf.best_vs_onnxruntime(p50, mean, low, [1, 2], p10={"tflite dynamic-int8 x1": 4.0, f"{peer} x1": 8.0})
    assert out["x1"]["variant"] == "tflite dynamic-int8" and out["x1"]["ratio"] == pytest.approx(0.625)
    assert out["x1"]["ratio_p10"] == pytest.approx(0.5) and "ratio_p10" not in out["x2"]
    assert out["x1"]["met"] is True
    assert out["x1"]["cosine"] == {"litegate": {"mean": 0.998, "min": 0.997}, "onnxruntime": {"mean": 0.9917, "min": 0.98}}
    assert out["x2"]["variant"] == "tflite fp32" and out["x2"]["met"] is False
    assert out["x2"]["missed_by_pct"] == pytest.approx(33.3, abs=0.1)
    no_peer = perf.best_vs_onnxruntime({"tflite fp32 x1": 14.0}, {"tflite fp32": 1.0}, {}, [1])
    assert no_peer["x1"]["variant"] == "tflite fp32" and "not_run" in no_peer["x1"]


# --- the op profiler --------------------------------------------------------------------------------

def test_aggregate_sums_per_op_skips_delegate_node_and_names_delegate_ops():
    events = [("Invoke", DEFAULT_EVENT, 0, 10.0), ("CAST", OPERATOR_INVOKE_EVENT, 0, 0.5),
              ("TfLiteXNNPackDelegate", OPERATOR_INVOKE_EVENT, 1, 9.0),
              ("Fully Connected (NC, F32) GEMM", DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, 0, 6.0),
              ("Softmax (NC, F32)", DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, 1, 2.0),
              ("CAST", OPERATOR_INVOKE_EVENT, 0, 0.5), ("Fully Connected (NC, F32) GEMM",
                                                        DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, 0, 6.0),
              ("Softmax (NC, F32)", DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, 1, 1.0)]
    ops = aggregate(events, runs=2)
    assert [(n, i) for n, i, _, _ in ops] == [("CAST", 0), ("Delegate/Fully Connected (NC, F32) GEMM", 0),
                                              ("Delegate/Softmax (NC, F32)", 1)]
    assert [ms for _, _, ms, _ in ops] == [1.0, 12.0, 3.0]
    assert sum(p for *_, p in ops) == pytest.approx(100.0)
    assert by_type(ops)[0][:3] == ("Delegate/Fully Connected (NC, F32) GEMM", 1, 12.0)
    with pytest.raises(ValueError):
        aggregate(events, runs=0)


def _fc_model(rows: int = 128, dims: Sequence[int] = (256, 1024, 256), seed: int = 0) -> tuple[bytes, list[np.ndarray]]:
    """x[rows, d0] -> FC+ReLU ... -> FC, float32, built with the schema object API; returns (bytes, weights/biases)."""
    rng = np.random.default_rng(seed)
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    sg = schema.SubGraphT()
    sg.tensors, sg.operators = [], []

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, schema.TensorType.FLOAT32, 0
        if data is not None:
            buf = schema.BufferT()
            buf.data = list(np.ascontiguousarray(data, np.float32).tobytes())
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    params: list[np.ndarray] = []
    cur = tensor("x", [rows, dims[0]])
    for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(np.float32)
        b = (rng.standard_normal(d_out) * 0.1).astype(np.float32)
        params += [w, b]
        wi, bi = tensor(f"w{k}", [d_out, d_in], w), tensor(f"b{k}", [d_out], b)
        out = tensor(f"h{k}", [rows, d_out])
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [cur, wi, bi], [out]
        op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = schema.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = (schema.ActivationFunctionType.RELU if k < len(dims) - 2
                                                     else schema.ActivationFunctionType.NONE)
        sg.operators.append(op)
        cur = out
    sg.inputs, sg.outputs = [0], [cur]
    model.subgraphs = [sg]
    oc = schema.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    oc.version = 1
    model.operatorCodes = [oc]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), params


def _reference(x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    for k in range(0, len(params), 2):
        x = x @ params[k].T + params[k + 1]
        if k < len(params) - 2:
            x = np.maximum(x, 0)
    return x


@pytest.mark.serial
@pytest.mark.parametrize("backend", ["xnnpack", "cpu"])
def test_op_profile_ops_sum_to_the_invoke_time_and_outputs_are_right(tmp_path, backend):
    rows = 512  # ~2.4 ms of GEMM per run on XNNPACK: a scheduler hiccup between operators stays a small share
    data, params = _fc_model(rows=rows)
    path = tmp_path / "mlp.tflite"
    path.write_bytes(data)
    x = np.random.default_rng(1).standard_normal((3, rows, 256)).astype(np.float32)
    prof = op_profile(path, threads=1, backend=backend, runs=8, warmup=2, inputs={"x": x})
    ops = prof["ops"]
    names = [name for name, *_ in ops]
    if backend == "xnnpack":  # every operator of the delegated graph is seen: two GEMMs, each after its reshape
        assert sorted(names) == sorted(["Delegate/Fully Connected (NC, F32) GEMM"] * 2 + ["Delegate/Static Reshape (NC)"] * 2)
    else:  # every TFLite node is seen
        assert names == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert sum(p for *_, p in ops) == pytest.approx(100.0)
    assert prof["op_ms_per_run"] == pytest.approx(sum(ms for _, _, ms, _ in ops) / 8)
    # operator spans nest inside the runtime's own Invoke span, so they never exceed it; the lower bound only
    # catches a profiler that loses most of the work (here they are 96-99% of it; a loaded 2-core CI saw 74%)
    assert 0.5 * prof["invoke_ms_per_run"] <= prof["op_ms_per_run"] <= prof["invoke_ms_per_run"] * 1.02 + 0.01
    assert prof["invoke_ms_per_run"] <= prof["wall_ms_per_run"] * 1.05 + 0.05
    last = x[(8 - 1) % 3]  # runs cycle through the three inputs
    np.testing.assert_allclose(next(iter(prof["outputs"].values())), _reference(last, params), rtol=1e-3, atol=1e-3)


def test_run_profile_runs_isolated_and_returns_lists(tmp_path):
    data, _ = _fc_model(rows=16, dims=(32, 64, 8))
    path = tmp_path / "small.tflite"
    path.write_bytes(data)
    res = run_profile(path, threads=2, runs=3, warmup=1)
    assert res["threads"] == 2 and res["runs"] == 3 and len(res["ops"]) >= 2
    assert all(isinstance(o, list) and len(o) == 4 for o in res["ops"])
    json.dumps(res)


def test_op_profile_refuses_backends_other_than_the_cpu_accelerator(tmp_path):
    from litegate.errors import DelegateError

    path = tmp_path / "m.tflite"
    path.write_bytes(_fc_model(rows=2, dims=(4, 4))[0])
    with pytest.raises(DelegateError, match="xnnpack"):
        op_profile(path, backend="gpu")


def test_fp32_efficiency_counts_macs_from_the_flatbuffer(tmp_path):
    path = tmp_path / "mlp.tflite"
    path.write_bytes(_fc_model(rows=128, dims=(256, 1024, 256))[0])
    macs = 2 * 128 * 256 * 1024
    peak = {"gflops": {"1": 100.0, "2": 200.0}, "method": "probe", "theoretical_gflops": {}}
    out = perf.fp32_efficiency(path, {"tflite fp32 x1": 1.0, "tflite fp32 x2": "not run: x"}, peak, [1, 2])
    assert out["macs_per_inference"] == macs
    assert out["x1"]["gflops"] == pytest.approx(2 * macs / 1e9 / 1e-3, rel=1e-3)
    assert out["x1"]["pct_of_sgemm_peak"] == pytest.approx(out["x1"]["gflops"], rel=1e-3)  # peak is 100
    assert out["x1"]["met"] is (out["x1"]["pct_of_sgemm_peak"] >= 75.0)
    if not out["x1"]["met"]:
        assert out["x1"]["missed_by_points"] == pytest.approx(75.0 - out["x1"]["pct_of_sgemm_peak"], abs=0.11)
    assert "gflops" not in out["x2"]
    assert out["x1"]["judged_on"] == "pct_of_sgemm_peak"  # no probe cell in the matrix: the run's best probe run
    summary = perf.summarize_targets("m", {"x1": {"not_run": "no peer"}}, out, [1])
    assert summary[0] == "m, 1 thread(s): best variant vs ONNX Runtime not run: no peer"
    assert "% of the sgemm peak (" in summary[1] and "(target 75.0% of the first: " in summary[1]


def test_fp32_efficiency_is_judged_on_the_probe_timed_beside_the_model(tmp_path):
    """With the probe GEMM as a cell of the same interleaved matrix, the share is median against median."""
    from litegate.benchmarks.peak import probe_gflop

    path = tmp_path / "mlp.tflite"
    path.write_bytes(_fc_model(rows=128, dims=(256, 1024, 256))[0])
    gflop = 2 * 2 * 128 * 256 * 1024 / 1e9
    peak = {"gflops": {"1": 110.0}, "method": "probe", "theoretical_gflops": {}}
    # the model at 80 GFLOP/s, the probe beside it at 100 GFLOP/s; the run's best probe run says 110
    p50 = {"tflite fp32 x1": gflop / 80 * 1e3, f"{perf.PROBE_CELL} x1": probe_gflop() / 100 * 1e3}
    row = perf.fp32_efficiency(path, p50, peak, [1])["x1"]
    assert row["interleaved_probe_gflops"] == pytest.approx(100.0)
    assert row["pct_of_interleaved_probe"] == pytest.approx(80.0) and row["pct_of_sgemm_peak"] == pytest.approx(72.7)
    assert row["judged_on"] == "pct_of_interleaved_probe" and row["met"] is True
    p50[f"{perf.PROBE_CELL} x1"] = probe_gflop() / 120 * 1e3  # the same model beside a faster probe: 66.7%
    row = perf.fp32_efficiency(path, p50, peak, [1])["x1"]
    assert row["met"] is False and row["missed_by_points"] == pytest.approx(8.3)
    line = perf.summarize_targets("m", {}, {"x1": row, "target_pct_of_sgemm_peak": 75.0}, [1])[1]
    assert "66.7% of the XNNPACK GEMM probe timed beside it (120.0 GFLOP/s) and 72.7% of the sgemm peak" in line
    assert line.endswith("(target 75.0% of the first: missed by 8.3 points)")


def test_fp32_efficiency_is_judged_on_the_best_run_when_the_probe_beside_it_was_degraded(tmp_path):
    """A probe far below its own best run in the same matrix means the machine lost capacity (a core taken by
    another tenant): model and probe slowed alike, so their ratio would flatter; the best run judges instead."""
    from litegate.benchmarks.peak import probe_gflop

    path = tmp_path / "mlp.tflite"
    path.write_bytes(_fc_model(rows=128, dims=(256, 1024, 256))[0])
    gflop = 2 * 2 * 128 * 256 * 1024 / 1e9
    p50 = {"tflite fp32 x2": gflop / 90 * 1e3, f"{perf.PROBE_CELL} x2": probe_gflop() / 100 * 1e3}
    healthy = perf.fp32_efficiency(path, p50, {"gflops": {"2": 110.0}}, [2])["x2"]
    assert healthy["judged_on"] == "pct_of_interleaved_probe" and healthy["met"] is True  # 90% of 100
    assert healthy["interleaved_probe_share_of_best"] == pytest.approx(100 / 110, abs=1e-3)
    degraded = perf.fp32_efficiency(path, p50, {"gflops": {"2": 200.0}}, [2])["x2"]  # the probe at 50% of its best
    assert degraded["judged_on"] == "pct_of_sgemm_peak" and degraded["met"] is False
    assert degraded["missed_by_points"] == pytest.approx(30.0) and "50% of its best run" in degraded["why_judged_on_best_run"]


def test_fp32_efficiency_of_one_signature_counts_its_subgraph_only(tmp_path):
    """A GPT-2 file holds prefill and decode: the prefill figure must not count decode's MACs."""
    import tensorflow as tf

    w = tf.constant(np.ones((64, 64), np.float32))

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([32, 64], tf.float32)])
        def big(self, x):
            return {"y": tf.matmul(x, w)}

        @tf.function(input_signature=[tf.TensorSpec([1, 64], tf.float32)])
        def small(self, x):
            return {"y": tf.matmul(x, w)}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"big": m.big, "small": m.small})
    path = tmp_path / "two.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=["big", "small"]).convert())
    assert perf.model_macs(path, "big") == 32 * 64 * 64
    assert perf.model_macs(path, "small") == 64 * 64
    assert perf.model_macs(path) == 33 * 64 * 64


def test_peak_probe_xnnpack_gemm_is_measured_and_its_model_cached(tmp_path):
    from litegate.benchmarks.peak import PROBE_SHAPE, measure_peak, probe_gflop

    peak = measure_peak([1], n=256, cache_dir=tmp_path)
    m, k, n = PROBE_SHAPE
    probe = tmp_path / "probe" / f"fc-{m}x{k}x{n}.tflite"
    assert probe.is_file()
    xnn, blas = peak["probes"]["xnnpack"]["1"], peak["probes"]["numpy"]["1"]
    assert xnn > 1.0 and blas > 1.0 and peak["gflops"]["1"] == max(xnn, blas)
    # the same probe is a cell of the interleaved peer matrix, timed in the blocks of the models it is the peak of
    import tensorflow as tf

    holder = tf.Module()
    holder.w = tf.Variable(np.ones((8, 16), np.float32))
    fn = tf.function(lambda x: {"y": tf.matmul(x, holder.w)}, input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
    model = tmp_path / "small.tflite"
    model.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder).convert())
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((3, 1, 8)).astype(np.float32))
    out = perf.peer_matrix_job({"tflite": {"fp32": str(model)}, "onnx": {}, "threads": [1], "inputs_npz": str(inputs),
                                "runs": 4, "block": 2, "warmup": 1, "probe": str(probe)})["samples_ms"]
    assert set(out) == {"tflite fp32 x1", f"{perf.PROBE_CELL} x1"} and all(len(v) == 4 for v in out.values())
    assert 1.0 < probe_gflop() / (float(np.median(out[f"{perf.PROBE_CELL} x1"])) / 1e3) < 10 * xnn


# --- tools/export_onnx.py ---------------------------------------------------------------------------

def test_export_mask_penalty_is_litegates():
    tree = ast.parse((ROOT / "litegate" / "converter" / "bert.py").read_text())
    values = [n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "MASK_PENALTY" for t in n.targets)
              and isinstance(n.value, ast.Constant)]
    assert values == [onnx_graph.MASK_PENALTY]  # both export scripts build with it


def test_time_interleaved_gives_every_cell_its_runs_after_warmup():
    calls: dict[str, int] = {"a": 0, "b": 0}

    def counter(name: str) -> Any:
        def run(_feed: Any) -> None:
            calls[name] += 1
        return run

    samples = onnx_graph.time_interleaved({"a": (counter("a"), [1, 2]), "b": (counter("b"), [3])}, runs=25,
                                          block=10, warmup=2)
    assert {k: len(v) for k, v in samples.items()} == {"a": 30, "b": 30}
    assert calls == {"a": 36, "b": 36}
    assert all(x >= 0 for v in samples.values() for x in v)


def test_export_json_says_not_run_without_onnxruntime(monkeypatch, capsys, tmp_path):
    # neither peer package importable (as in a venv without the `peers` extra): import -> ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert export_onnx.main(["--model", str(tmp_path), "--out", str(tmp_path), "--inputs", "x.npz", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(line) == ["onnxruntime"]
    assert re.fullmatch(r"not run: (onnx|onnxruntime) is not installed \(pip install -e '\.\[peers\]'\)",
                        line["onnxruntime"]), line


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny BERT checkpoint, 6 encoded sentences at seq 16, and the numpy oracle's embeddings."""
    import numpy_bert
    from safetensors.numpy import load_file

    from litegate.artifacts import save_npz
    from litegate.tasks import TextEncoder, read_texts

    root = tmp_path_factory.mktemp("onnx-export")
    ckpt = make_checkpoint(root / "ckpt", layers=2, hidden=32, heads=2, intermediate=64, max_pos=64)
    enc = TextEncoder(ckpt / "tokenizer.json", 16).encode(read_texts(DEMO / "eval.tsv", limit=6))
    save_npz(root / "inputs.npz", enc)
    cfg = json.loads((ckpt / "config.json").read_text())
    ref = numpy_bert.forward(load_file(str(ckpt / "model.safetensors")), cfg, enc["input_ids"], enc["attention_mask"],
                             head="mean")
    np.savez(root / "reference.npz", embeddings=ref.astype(np.float32))
    return {"root": root, "ckpt": ckpt, "inputs": root / "inputs.npz", "reference": root / "reference.npz"}


def _run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.export_onnx", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@needs_ort
def test_export_onnx_prints_one_json_line_with_every_variant_and_cosine(tiny_export):
    out = tiny_export["root"] / "out"
    r = _run_export("--model", str(tiny_export["ckpt"]), "--out", str(out), "--inputs", str(tiny_export["inputs"]),
                    "--reference", str(tiny_export["reference"]), "--json", "--runs", "4", "--block", "2",
                    "--warmup", "1", "--threads", "1,2")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1  # progress goes to stderr; stdout is the one JSON line
    result = json.loads(lines[-1])
    for variant in onnx_graph.VARIANTS:
        for t in (1, 2):
            assert isinstance(result[f"{variant} x{t}"], float) and result[f"{variant} x{t}"] > 0
        assert -1.0 <= result[f"cosine min {variant}"] <= result[f"cosine {variant}"] <= 1.0 + 1e-9
    assert result["cosine onnxruntime fp32"] > 0.99999
    assert result["cosine onnxruntime optimized fp32"] > 0.99999
    assert result["max abs onnxruntime fp32 vs tf"] < 1e-4  # against the independent numpy oracle
    details = json.loads((out / "export.json").read_text())
    fused = details["optimizer"]["fused"][details["optimizer"]["model_type"]]
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization") == 4
    assert all((out / f).is_file() for f in onnx_graph.FILES.values())
    assert len(details["variants"]["onnxruntime fp32"]["samples_ms"]["1"]) >= 4


@needs_ort
def test_export_onnx_table_and_fidelity_failure(tiny_export):
    out = tiny_export["root"] / "table"
    r = _run_export("--model", str(tiny_export["ckpt"]), "--out", str(out), "--inputs", str(tiny_export["inputs"]),
                    "--reference", str(tiny_export["reference"]), "--runs", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnxruntime optimized int8 per-channel" in r.stdout and "cosine mean" in r.stdout
    bad = tiny_export["root"] / "bad.npz"
    with np.load(tiny_export["reference"]) as data:
        np.savez(bad, embeddings=data["embeddings"] + 1e-3)
    r = _run_export("--model", str(tiny_export["ckpt"]), "--out", str(out), "--inputs", str(tiny_export["inputs"]),
                    "--reference", str(bad), "--runs", "0", "--json")
    assert r.returncode != 0 and "does not match the TensorFlow model" in r.stderr


@needs_ort
@pytest.mark.slow
def test_export_onnx_matches_litegates_tensorflow_model(tiny_export):
    """Without --reference the script runs litegate's TF BERT in a child and checks 1e-4 max abs itself."""
    r = _run_export("--model", str(tiny_export["ckpt"]), "--out", str(tiny_export["root"] / "tf"), "--inputs",
                    str(tiny_export["inputs"]), "--json", "--runs", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["max abs onnxruntime fp32 vs tf"] < 1e-4
    assert result["cosine onnxruntime optimized int8 per-channel"] > 0.9

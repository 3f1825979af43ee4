"""LiteRT's real GPU delegate (ML Drift over WebGPU/Vulkan) as the ``gpu`` backend, and its log parser.

The delegate tests need a Vulkan device; on a machine without a GPU, ``make gpu-sim`` installs Mesa's
lavapipe (``make test`` tries it first). Without one they skip and say why. Each model goes through
the delegate once (one child process per model, module-scoped): the first run on lavapipe compiles
shaders on the CPU. The parser tests read logs recorded from this delegate (``tests/data/gpu_logs``)
and need no Vulkan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint

from litegate.backends import gpu
from litegate.backends.gpu import Fallback, VulkanDevice, parse_delegate_log, usable_device

LOGS = Path(__file__).parent / "data" / "gpu_logs"
FP16_TOL = 2e-2  # fp16 arithmetic (10-bit mantissa) over a few layers of O(1) values


@pytest.fixture(scope="module")
def gpu_ready() -> None:
    """Skip (saying why) when the delegate has no Vulkan device; requested first, before any model is built."""
    reason = gpu.why_not_runnable()
    if reason:
        pytest.skip(f"the LiteRT GPU delegate cannot run here: {reason}")


# --- the parser, on recorded logs (no Vulkan needed) ---------------------------------------------


def test_parse_bert_log_reports_fallbacks_and_split():
    log = parse_delegate_log((LOGS / "bert_lavapipe.log").read_text())
    assert log.fallbacks == (Fallback("GATHER", "Only support 1D indices"),
                             Fallback("STRIDED_SLICE", "Slice does not support shrink_axis_mask parameter."))
    assert (log.ops_on_gpu, log.ops_on_cpu) == (88, 10)
    assert log.unsupported_ops == {"GATHER", "STRIDED_SLICE"}
    assert log.adapter is not None and log.adapter.startswith("llvmpipe")
    assert log.software_adapter
    assert log.errors == ()  # the unsupported-op header is coverage, not an error


def test_parse_fully_delegated_log_has_no_fallbacks_and_no_split():
    log = parse_delegate_log((LOGS / "mlp_lavapipe.log").read_text())
    assert log.fallbacks == () and log.ops_on_gpu is None and log.ops_on_cpu is None
    assert log.software_adapter


def test_parse_gather_log_reports_2d_indices_fallback():
    log = parse_delegate_log((LOGS / "gather_lavapipe.log").read_text())
    assert log.fallbacks == (Fallback("GATHER", "Only support 1D indices"),)
    assert (log.ops_on_gpu, log.ops_on_cpu) == (1, 1)


def test_parse_fp16_bert_log_lists_dequantize_without_a_reason():
    log = parse_delegate_log((LOGS / "bert_fp16_lavapipe.log").read_text())
    assert log.fallbacks[0] == Fallback("DEQUANTIZE", "")
    assert log.unsupported_ops == {"DEQUANTIZE", "GATHER", "STRIDED_SLICE"}
    assert (log.ops_on_gpu, log.ops_on_cpu) == (93, 48)
    assert log.shader_errors == ()


def test_parse_int8_bert_log_surfaces_the_wgsl_validation_errors():
    """Recorded: ai-edge-litert 2.3 generates a WGSL kernel for the int8 BERT that does not compile."""
    log = parse_delegate_log((LOGS / "bert_int8_lavapipe.log").read_text())
    assert (log.ops_on_gpu, log.ops_on_cpu) == (88, 11)
    assert log.shader_errors[0] == ("Validation error: Error while parsing WGSL: :42:22 error: cannot assign "
                                    "'vec4<f16>' to 'vec4<i32>'")
    assert all(e.startswith("Validation error:") for e in log.shader_errors)


def test_gpu_cell_with_shader_errors_fails_with_the_first_one(monkeypatch, tmp_path):
    from litegate.benchmarks.matrix import run_cell
    from litegate.types import Status

    text = (LOGS / "bert_int8_lavapipe.log").read_text()
    log = parse_delegate_log(text)
    fake = gpu.GpuRun(fully_accelerated=False, log=log, ops_total=99, init_ms=1.0, first_ms=2.0, samples_ms=(1.0, 1.1),
                      peak_rss_mb=1.0, n_inputs=2, outputs={}, cpu_max_abs_diff={}, adapter=log.adapter or "",
                      emulated=True, log_text=text)
    monkeypatch.setattr(gpu, "probe_vulkan", lambda timeout_s=60.0: ((VulkanDevice("gpu0", "discrete", "1.3"),), None))
    monkeypatch.setattr(gpu, "run_gpu", lambda *a, **k: fake)
    cell = run_cell(path=tmp_path / "m.tflite", sha256="0" * 64, variant="int8", backend="gpu", threads=1,
                    inputs_npz="unused.npz", protocol={}, timeout_s=10)
    assert cell.status is Status.FAILED
    assert "failed WebGPU validation" in cell.reason and "cannot assign 'vec4<f16>' to 'vec4<i32>'" in cell.reason
    assert cell.protocol["ops_on_gpu"] == 88 and cell.protocol["delegate_errors"]


def test_parse_keeps_empty_reasons_and_repeated_ops_with_other_reasons():
    text = ("E tflite  : Following operations are not supported by GPU delegate:\n"
            "E tflite  : DEQUANTIZE:\n"
            "E tflite  : ADD: Can't parse inputs with const tensors.\n"
            "E tflite  : ADD: Tensor dimensions must be less than 5.\n"
            "E tflite  : CUSTOM FlexErf: Operation is not supported.\n"
            "E tflite  : 102 operations will run on the GPU, and the remaining 1594 operations will run on the CPU.\n")
    log = parse_delegate_log(text)
    assert log.fallbacks == (Fallback("DEQUANTIZE", ""), Fallback("ADD", "Can't parse inputs with const tensors."),
                             Fallback("ADD", "Tensor dimensions must be less than 5."),
                             Fallback("CUSTOM FlexErf", "Operation is not supported."))
    assert (log.ops_on_gpu, log.ops_on_cpu) == (102, 1594)


def test_parse_reads_the_older_and_the_nothing_delegated_wordings():
    old = parse_delegate_log("ERROR: Next operations are not supported by GPU delegate:\n"
                             "MAXIMUM: Operation is not supported.\nMEAN: Operation is not supported.\n"
                             "First 0 operations will run on the GPU, and the remaining 81 on the CPU.\n")
    assert old.unsupported_ops == {"MAXIMUM", "MEAN"} and (old.ops_on_gpu, old.ops_on_cpu) == (0, 81)
    none = parse_delegate_log("ERROR: Following operations are not supported by GPU delegate:\n"
                              "CONV_2D: OP is supported, but tensor type/shape isn't compatible.\n"
                              "No operations will run on the GPU, and all 65 operations will run on the CPU.\n")
    assert (none.ops_on_gpu, none.ops_on_cpu) == (0, 65)
    assert none.fallbacks == (Fallback("CONV_2D", "OP is supported, but tensor type/shape isn't compatible."),)


def test_parse_keeps_other_error_lines_and_ignores_unrelated_text():
    log = parse_delegate_log("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                             "ERROR: Failed to compile model\nplain text: not an op\n")
    assert log.fallbacks == () and log.errors == ("ERROR: Failed to compile model",)


def test_mesa_22_lavapipe_is_refused_with_its_version_and_the_fix():
    old = VulkanDevice(name="llvmpipe (LLVM 15.0.6, 256 bits)", device_type="cpu", api_version="1.3",
                       driver_name="llvmpipe", driver_info="Mesa 22.3.6 (LLVM 15.0.6)")
    device, reason = usable_device([old])
    assert device is None
    assert reason is not None and reason.startswith("Mesa 22.3 lavapipe is too old") and "make gpu-sim" in reason
    new = VulkanDevice(name="llvmpipe (LLVM 15.0.6, 256 bits)", device_type="cpu", api_version="1.4",
                       driver_name="llvmpipe", driver_info="Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)")
    assert usable_device([old, new]) == (new, None)
    hw = VulkanDevice(name="NVIDIA H200", device_type="discrete", api_version="1.3", driver_name="NVIDIA")
    assert usable_device([new, hw])[0] == hw  # a hardware GPU before the software one
    assert "no Vulkan device" in (usable_device([])[1] or "")


def test_no_vulkan_driver_is_a_reason_naming_make_gpu_sim(monkeypatch):
    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json")  # the loader then finds no driver
    monkeypatch.setenv("VK_DRIVER_FILES", "/nonexistent/icd.json")
    devices, reason = gpu.probe_vulkan.__wrapped__()  # uncached: a child with this environment
    if reason is None:
        reason = usable_device(devices)[1]
    assert reason is not None and "make gpu-sim" in reason and "Vulkan" in reason


# --- the real delegate -----------------------------------------------------------------------------


def _convert_keras(model, out: Path) -> Path:
    import tensorflow as tf

    out.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return out


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16,), batch_size=1, name="features"),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    return _convert_keras(model, tmp_path_factory.mktemp("gpu") / "mlp.tflite")


@pytest.fixture(scope="module")
def gather_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding lookup: GATHER with [1, T] indices, then a Dense layer the GPU can take."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    ids = keras.layers.Input((6,), batch_size=1, dtype="int32", name="ids")
    x = keras.layers.Embedding(50, 8)(ids)
    out = keras.layers.Dense(4)(x)
    return _convert_keras(keras.Model(ids, out), tmp_path_factory.mktemp("gpu") / "gather.tflite")


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    from litegate.api import convert_model
    from litegate.tasks import TextEncoder
    from litegate.types import ModelSource

    folder = tmp_path_factory.mktemp("gpu-bert")
    ckpt = make_checkpoint(folder / "ck")
    out = folder / "bert.tflite"
    convert_model(ModelSource(kind="hf-bert", path=str(ckpt), task="text-classification", seq_len=24), out)
    texts = [line.split("\t")[0] for line in (DEMO / "eval.tsv").read_text().splitlines()[1:5]]
    return out, TextEncoder(ckpt / "tokenizer.json", 24).encode(texts)


def _mlp_inputs() -> dict[str, np.ndarray]:
    return {"features": np.random.default_rng(1).standard_normal((4, 1, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def mlp_run(gpu_ready: None, mlp_model: Path) -> gpu.GpuRun:
    return gpu.run_gpu(mlp_model, inputs=_mlp_inputs(), compare_cpu=True, timeout_s=300)


@pytest.fixture(scope="module")
def gather_run(gpu_ready: None, gather_model: Path) -> gpu.GpuRun:
    ids = np.random.default_rng(2).integers(0, 50, (3, 1, 6)).astype(np.int32)
    return gpu.run_gpu(gather_model, inputs={"ids": ids}, compare_cpu=True, timeout_s=300)


@pytest.fixture(scope="module")
def bert_run(gpu_ready: None, bert_model: tuple[Path, dict[str, np.ndarray]]) -> gpu.GpuRun:
    path, inputs = bert_model
    return gpu.run_gpu(path, inputs=inputs, compare_cpu=True, timeout_s=300)


@pytest.mark.slow
def test_gpu_dense_mlp_is_fully_accelerated_and_matches_cpu_within_fp16(gpu_ready, mlp_model, mlp_run):
    from litegate.backends.runtime import Runner

    assert mlp_run.fully_accelerated
    assert mlp_run.log.fallbacks == () and mlp_run.log.errors == ()
    assert (mlp_run.ops_on_gpu, mlp_run.ops_on_cpu) == (mlp_run.ops_total, 0) and mlp_run.ops_total == 2
    cpu = Runner(mlp_model, backend="cpu").run_batch(_mlp_inputs())
    (name,) = cpu
    diff = float(np.max(np.abs(mlp_run.outputs[name] - cpu[name])))
    assert diff == pytest.approx(mlp_run.cpu_max_abs_diff[name], abs=1e-6)
    np.testing.assert_allclose(mlp_run.outputs[name], cpu[name], rtol=FP16_TOL, atol=FP16_TOL)
    assert diff > 0.0, "bit-identical to the CPU: the GPU (fp16) path did not compute this"


@pytest.mark.slow
def test_gpu_2d_gather_falls_back_with_the_delegates_reason(gather_run):
    assert not gather_run.fully_accelerated
    assert gather_run.log.fallbacks == (Fallback("GATHER", "Only support 1D indices"),)
    assert (gather_run.ops_on_gpu, gather_run.ops_on_cpu) == (gather_run.ops_total - 1, 1)
    assert max(gather_run.cpu_max_abs_diff.values()) < FP16_TOL


@pytest.mark.slow
def test_gpu_bert_runs_partially_delegated_and_reports_fallbacks(gpu_ready, bert_run, bert_model):
    assert not bert_run.fully_accelerated
    assert {f.op for f in bert_run.log.fallbacks} == {"GATHER", "STRIDED_SLICE"}
    reasons = dict((f.op, f.reason) for f in bert_run.log.fallbacks)
    assert reasons["GATHER"] == "Only support 1D indices"
    assert "shrink_axis_mask" in reasons["STRIDED_SLICE"]
    gpu_ops, cpu_ops = bert_run.log.ops_on_gpu, bert_run.log.ops_on_cpu
    assert gpu_ops is not None and cpu_ops is not None and gpu_ops > cpu_ops > 0
    assert gpu_ops + cpu_ops == bert_run.ops_total
    logits = bert_run.outputs["logits"]
    assert logits.shape == (len(bert_model[1]["input_ids"]), 2)
    assert bert_run.cpu_max_abs_diff["logits"] < 5e-2  # two fp16 encoder layers
    assert bert_run.emulated == bert_run.log.software_adapter


@pytest.mark.slow
def test_gpu_matrix_cell_records_coverage_and_marks_emulated_latency(gpu_ready, mlp_model, tmp_path):
    from litegate.artifacts import save_npz
    from litegate.benchmarks.matrix import run_cell
    from litegate.types import Status

    npz = tmp_path / "inputs.npz"
    save_npz(npz, _mlp_inputs())
    cell = run_cell(path=mlp_model, sha256="0" * 64, variant="fp32", backend="gpu", threads=1, inputs_npz=npz,
                    protocol={"warmup_runs": 1, "min_runs": 3, "min_seconds": 0.0, "max_runs": 3}, timeout_s=300)
    assert cell.status is Status.OK, cell.reason
    assert cell.latency is not None and cell.latency.n == 3
    p = cell.protocol
    assert p["fully_accelerated"] is True and p["ops_on_gpu"] == 2 and p["ops_on_cpu"] == 0 and p["gpu_fallback"] == []
    assert p["n_inputs"] == 4
    if p["latency_emulated"]:
        assert "emulated" in cell.reason and "not GPU latency" in cell.reason


def test_gpu_cell_without_vulkan_is_not_run_with_the_reason(monkeypatch, tmp_path):
    from litegate.benchmarks.matrix import run_cell
    from litegate.types import Status

    reason = "no Vulkan driver (vkCreateInstance: VK_ERROR_INCOMPATIBLE_DRIVER): run `make gpu-sim` as root"
    monkeypatch.setattr(gpu, "probe_vulkan", lambda timeout_s=60.0: ((), reason))
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 8)
    cell = run_cell(path=model, sha256="0" * 64, variant="fp32", backend="gpu", threads=1, inputs_npz="unused.npz",
                    protocol={}, timeout_s=10)
    assert cell.status is Status.NOT_RUN and cell.reason == reason


def test_runner_refuses_gpu_in_process_and_points_to_the_child_runner(monkeypatch, tmp_path):
    from litegate.backends.runtime import Runner
    from litegate.errors import DelegateError

    monkeypatch.setattr(gpu, "probe_vulkan", lambda timeout_s=60.0: ((VulkanDevice("gpu0", "discrete", "1.3"),), None))
    with pytest.raises(DelegateError, match=r"CompiledModel in its own process"):
        Runner(tmp_path / "m.tflite", backend="gpu")


def test_doctor_gpu_row_names_the_vulkan_device_or_the_fix():
    from litegate import doctor

    (row,) = [r for r in doctor.check() if r["name"] == "backend gpu"]
    if row["ok"]:
        assert "Vulkan" in row["detail"]
    else:
        assert row["fix"], row


@pytest.mark.slow
def test_static_gpu_rules_agree_with_the_delegates_own_log(gpu_ready, mlp_model, mlp_run, gather_model, gather_run,
                                                          bert_model, bert_run):
    """litegate check's static GPU verdict against what the real delegate said about the same models."""
    try:
        from litegate.compat.check import check_model
    except ImportError as exc:  # the static engine is written separately
        pytest.skip(f"static GPU rules not available: {exc}")
    mismatches = []
    for name, path, run in (("mlp", mlp_model, mlp_run), ("gather", gather_model, gather_run),
                            ("bert", bert_model[0], bert_run)):
        static = check_model(path, ["gpu"])[0]
        unsupported = {o.op for o in static.ops if not o.supported}
        if unsupported != set(run.log.unsupported_ops):
            mismatches.append(f"{name}: static unsupported {sorted(unsupported)} != delegate {sorted(run.log.unsupported_ops)}")
        counts = (static.delegated_ops, static.total_ops - static.delegated_ops)
        if counts != (run.ops_on_gpu, run.ops_on_cpu):
            mismatches.append(f"{name}: static GPU/CPU ops {counts} != delegate {(run.ops_on_gpu, run.ops_on_cpu)}")
    assert not mismatches, "\n".join(mismatches)


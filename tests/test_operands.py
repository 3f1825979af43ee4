"""``symmetric_matmul_operands``: int8 attention matmuls with zero-point-0 right-hand operands, which XNNPACK runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from litegate.errors import ConfigError
from litegate.quantize import recipes
from litegate.quantize.operands import symmetric_matmul_operands
from litegate.tflite.verify import verify_bytes

SEQ, WIDTH, HEADS = 16, 32, 2


def _attention_int8(tmp_path, *, k_also_read: bool = False) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A two-head attention block made here, converted to full int8 by TFLiteConverter: k and v are calibrated on
    ranges far from symmetric (offsets +0.6 and -0.5), so their zero points are not 0. TANH (which XNNPACK runs in int8)
    stands in for the softmax (which it does not), so XNNPACK can take the whole graph once both matmuls qualify.

    Returns (model bytes, test inputs, the float model's outputs on them)."""
    import tensorflow as tf  # heavy: only the tests that convert import it

    rng = np.random.default_rng(0)
    w = {k: tf.constant(rng.normal(0, WIDTH ** -0.5, (WIDTH, WIDTH)).astype(np.float32)) for k in "qkvo"}

    def heads(t: tf.Tensor) -> tf.Tensor:
        return tf.transpose(tf.reshape(t, (1, SEQ, HEADS, WIDTH // HEADS)), (0, 2, 1, 3))

    @tf.function(input_signature=[tf.TensorSpec((1, SEQ, WIDTH), tf.float32)])
    def block(x: tf.Tensor) -> dict[str, tf.Tensor]:
        k = tf.matmul(x, w["k"]) + 0.6
        q, v = heads(tf.matmul(x, w["q"])), heads(tf.matmul(x, w["v"]) - 0.5)
        probs = tf.tanh(tf.matmul(q, heads(k), transpose_b=True) * 0.25)
        ctx = tf.reshape(tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3)), (1, SEQ, WIDTH))
        out = {"out": tf.matmul(ctx, w["o"])}
        if k_also_read:  # an op that keeps its input's int8 parameters reads k too
            out["k_max"] = tf.reduce_max(k, axis=-1)
        return out

    calib = rng.normal(size=(32, 1, SEQ, WIDTH)).astype(np.float32)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([block.get_concrete_function()])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = conv.convert()
    x = rng.normal(size=(8, 1, SEQ, WIDTH)).astype(np.float32)
    ref = np.stack([block(xi)["out"].numpy() for xi in x])
    return data, x, ref


def _run(data: bytes, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The model's ``out`` on each input (XNNPACK on), and how many DELEGATE nodes (XNNPACK partitions) it formed."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    outs = []
    for xi in x:
        it.set_tensor(it.get_input_details()[0]["index"], xi)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    partitions = sum(1 for op in it._get_ops_details() if op["op_name"] == "DELEGATE")
    return np.stack(outs), partitions


def _rhs(data: bytes) -> list:
    return [op.inputs[1] for op in verify_bytes(data).ops if op.op == "BATCH_MATMUL"]


@pytest.mark.slow
def test_zero_point_0_operands_let_xnnpack_take_the_attention_matmuls_and_keep_the_outputs(tmp_path):
    data, x, ref = _attention_int8(tmp_path)
    assert len(_rhs(data)) == 2 and all(t.zero_point != 0 for t in _rhs(data)), "the converter calibrated them so"
    out, stats = symmetric_matmul_operands(data)

    assert stats["batch_matmuls"] == stats["rewritten"] == 2 and not stats["skipped"] and stats["symmetric"] == 0
    assert 1.0 < stats["max_scale_growth"] < 255 / 127  # at most one bit of resolution
    assert all(t.zero_point == 0 for t in _rhs(out))
    again, stats_again = symmetric_matmul_operands(out)  # a second pass finds nothing to do
    assert again is out and stats_again["symmetric"] == 2 and stats_again["rewritten"] == 0
    # each chain (FULLY_CONNECTED output -> RESHAPE -> TRANSPOSE) still holds one set of parameters
    from ai_edge_litert.interpreter import Interpreter

    params = {t["name"]: t["quantization"] for t in Interpreter(model_content=out).get_tensor_details()}
    moved = [op for op in verify_bytes(out).ops if op.op in ("RESHAPE", "TRANSPOSE") and op.inputs[0].type == "INT8"]
    assert moved and all(params[op.inputs[0].name] == params[op.outputs[0].name] for op in moved)

    before, parts_before = _run(data, x)
    after, parts_after = _run(out, x)
    assert parts_before > 1 and parts_after == 1, (parts_before, parts_after)  # XNNPACK runs it whole now
    err_before = float(np.sqrt(np.mean((before - ref) ** 2)))
    err_after = float(np.sqrt(np.mean((after - ref) ** 2)))
    assert err_after < 1.3 * err_before + 1e-6, (err_before, err_after)
    assert err_before < 0.1 * float(np.sqrt(np.mean(ref ** 2)))  # the int8 model itself is sane
    # litegate's XNNPACK rule table agrees with the runtime: no matmul left on the CPU
    from litegate.compat.check import check_model

    path = tmp_path / "sym.tflite"
    path.write_bytes(out)
    xnnpack = check_model(path, ["xnnpack"])[0]
    assert "BATCH_MATMUL" not in xnnpack.fallback_ops and len([p for p in xnnpack.partitions if p.delegated]) == 1
    path.write_bytes(data)
    assert check_model(path, ["xnnpack"])[0].fallback_ops.get("BATCH_MATMUL") == 2


@pytest.mark.slow
def test_an_operand_also_read_by_an_op_that_may_assume_its_parameters_is_left_alone(tmp_path):
    data, _, _ = _attention_int8(tmp_path, k_also_read=True)
    out, stats = symmetric_matmul_operands(data)
    assert stats["batch_matmuls"] == 2 and stats["rewritten"] == 1
    assert len(stats["skipped"]) == 1
    assert re.fullmatch(r"a tensor of its chain is read by REDUCE_MAX \(op \d+\), which may assume its parameters",
                        stats["skipped"][0]["why"]), stats
    zps = [t.zero_point for t in _rhs(out)]
    assert sorted(z == 0 for z in zps) == [False, True]
    # a model whose buffers live after the flatbuffer (> 2 GB) is returned as it is: repacking would drop them
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    model.buffers[-1].offset, model.buffers[-1].size = 1 << 20, 4
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    external = bytes(builder.Output())
    same, stats = symmetric_matmul_operands(external)
    assert same is external and stats["skipped"][0]["why"].endswith("outside the flatbuffer (> 2 GB)")


def test_symmetric_matmul_operands_is_checked(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"name": "x", "kind": "dynamic-range", "params": {"symmetric_matmul_operands": True}}))
    with pytest.raises(ConfigError, match="symmetric_matmul_operands applies to full-integer and auto recipes only"):
        recipes.load(str(bad))
    bad.write_text(json.dumps({"name": "x", "kind": "full-integer", "params": {"symmetric_matmul_operands": "yes"}}))
    with pytest.raises(ConfigError, match="'symmetric_matmul_operands' must be a bool"):
        recipes.load(str(bad))
    assert all(recipes.load(n).params["symmetric_matmul_operands"] for n in ("int8", "int8-qat", "auto", "auto-npu"))

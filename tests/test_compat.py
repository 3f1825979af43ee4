"""Static delegate compatibility: the flatbuffer reader, the rule files, the engine and ``litegate check``.

Fast tests build tiny models with LiteRT's generated schema object API (no TensorFlow); the
``slow`` tests convert real tf_keras / tf.function models and the repo's BERT with TensorFlow.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from click.testing import CliRunner
from conftest import make_checkpoint, run_cli

from litegate.cli import cli, main
from litegate.compat.check import check_model, evaluate, render_table
from litegate.compat.ruleset import DELEGATES, load_rules, validate_rules
from litegate.errors import ConfigError, ModelLoadError
from litegate.tflite.flatbuffer import BUILTIN_NAMES, TensorInfo, count_macs, read_model
from litegate.tflite.verify import load_model
from litegate.types import CompatReport

# --- tiny models through the generated schema object API ---------------------------------------

_TYPES = {"FLOAT32": schema.TensorType.FLOAT32, "FLOAT16": schema.TensorType.FLOAT16,
          "INT32": schema.TensorType.INT32, "INT8": schema.TensorType.INT8}
_NP = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT8": np.int8}


def _tensor(name: str, shape: Sequence[int], dtype: str = "FLOAT32", *, const: bool = False,
            values: Sequence[float] | None = None, signature: Sequence[int] | None = None) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "type": dtype, "const": const or values is not None,
            "values": values, "signature": signature}


def _build(tensors: list[dict[str, Any]], ops: list[tuple[str, list[int], list[int], Any]],
           *, deprecated_only: bool = False) -> bytes:
    """Serialize a one-subgraph model: ops are (builtin name, input ids, output ids, options T object)."""
    codes: list[tuple[str, int]] = []
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    sg = schema.SubGraphT()
    sg.tensors = []
    for t in tensors:
        tt = schema.TensorT()
        tt.name, tt.shape, tt.type = t["name"], t["shape"], _TYPES[t["type"]]
        tt.shapeSignature = t["signature"]
        tt.buffer = 0
        if t["const"]:
            buf = schema.BufferT()
            n = int(np.prod(t["shape"])) if t["shape"] else 1
            vals = t["values"] if t["values"] is not None else [0.5] * n
            buf.data = list(np.asarray(vals, dtype=_NP[t["type"]]).tobytes())
            model.buffers.append(buf)
            tt.buffer = len(model.buffers) - 1
        sg.tensors.append(tt)
    sg.operators = []
    for name, ins, outs, options in ops:
        key = (name, 1)
        if key not in codes:
            codes.append(key)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(key), ins, outs
        if options is not None:
            op.builtinOptionsType = getattr(schema.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        sg.operators.append(op)
    used = {i for _, ins, _, _ in ops for i in ins if i >= 0}
    produced = {o for _, _, outs, _ in ops for o in outs}
    sg.inputs = [i for i, t in enumerate(tensors) if not t["const"] and i in used and i not in produced]
    sg.outputs = sorted(o for o in produced if not any(o in ins for _, ins, _, _ in ops))
    model.subgraphs = [sg]
    model.operatorCodes = []
    for name, version in codes:
        oc = schema.OperatorCodeT()
        code = getattr(schema.BuiltinOperator, name)
        oc.builtinCode = 0 if deprecated_only else code
        oc.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        oc.version = version
        model.operatorCodes.append(oc)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _fc_options(activation: int = 0) -> Any:
    o = schema.FullyConnectedOptionsT()
    o.fusedActivationFunction = activation
    return o


def _mlp_bytes() -> bytes:
    """x[1,16] -> FC(16->8) -> FC(8->4) -> SOFTMAX, float32."""
    t = [_tensor("x", [1, 16]), _tensor("w1", [8, 16], const=True), _tensor("b1", [8], const=True),
         _tensor("h", [1, 8]), _tensor("w2", [4, 8], const=True), _tensor("b2", [4], const=True),
         _tensor("z", [1, 4]), _tensor("y", [1, 4])]
    sm = schema.SoftmaxOptionsT()
    sm.beta = 1.0
    return _build(t, [("FULLY_CONNECTED", [0, 1, 2], [3], _fc_options(1)),
                      ("FULLY_CONNECTED", [3, 4, 5], [6], _fc_options()), ("SOFTMAX", [6], [7], sm)])


def _ops_model(chain: Sequence[str]) -> bytes:
    """A chain of float ops on x[1,4,4,8]: each op is a name from a small vocabulary."""
    tensors = [_tensor("x", [1, 4, 4, 8])]
    ops: list[tuple[str, list[int], list[int], Any]] = []
    cur = 0
    for k, name in enumerate(chain):
        if name in ("ADD", "MUL"):
            tensors.append(_tensor(f"c{k}", [8], const=True))
            ins = [cur, len(tensors) - 1]
            opts: Any = schema.AddOptionsT() if name == "ADD" else schema.MulOptionsT()
        elif name == "GATHER":
            tensors.append(_tensor(f"i{k}", [2, 2], "INT32", values=[0, 1, 1, 0]))
            ins, opts = [cur, len(tensors) - 1], schema.GatherOptionsT()
        else:  # unary
            ins, opts = [cur], None
        tensors.append(_tensor(f"t{k}", [1, 4, 4, 8]))
        cur = len(tensors) - 1
        ops.append((name, ins, [cur], opts))
    return _build(tensors, ops)


# --- fast: reader -----------------------------------------------------------------------------


def test_read_model_extracts_ops_tensors_and_options():
    m = read_model(_mlp_bytes())
    assert [o.op for o in m.ops] == ["FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]
    fc = m.ops[0]
    assert fc.version == 1 and fc.options["fused_activation_function"] == "RELU"
    assert fc.options["keep_num_dims"] is False and fc.options["weights_format"] == "DEFAULT"
    assert [t.is_const for t in fc.inputs if t] == [False, True, True]
    assert fc.inputs[1] is not None and fc.inputs[1].shape == (8, 16)
    assert m.ops[2].options["beta"] == 1.0
    assert m.subgraph_inputs == ((0,),) and m.subgraph_outputs == ((7,),)


def test_macs_dense_16_to_8_is_128_per_row():
    m = read_model(_mlp_bytes())
    assert [o.macs for o in m.ops] == [16 * 8, 8 * 4, 0]
    assert m.total_macs == 160


def test_count_macs_conv_depthwise_transpose_and_batch_matmul_by_hand():
    def t(shape: Sequence[int]) -> TensorInfo:
        return TensorInfo(index=0, name="", type="FLOAT32", shape=tuple(shape), shape_signature=tuple(shape),
                          is_const=False)

    # CONV_2D: out [1,6,6,4], filter [4,3,3,3] -> 144 outputs x 27
    assert count_macs("CONV_2D", [t([1, 8, 8, 3]), t([4, 3, 3, 3])], [t([1, 6, 6, 4])], {}) == 144 * 27
    # DEPTHWISE: out [1,4,4,4], filter [1,3,3,4] -> 64 x 9
    assert count_macs("DEPTHWISE_CONV_2D", [t([1, 6, 6, 4]), t([1, 3, 3, 4])], [t([1, 4, 4, 4])], {}) == 64 * 9
    # TRANSPOSE_CONV: input [1,4,4,4] scattered through filter [2,3,3,4] -> 64 x 18
    assert count_macs("TRANSPOSE_CONV", [t([4]), t([2, 3, 3, 4]), t([1, 4, 4, 4])], [t([1, 9, 9, 2])], {}) == 64 * 18
    # BATCH_MATMUL [2,5,7] x [2,7,3] -> 30 outputs x 7; adj_x contracts the second-to-last dim
    assert count_macs("BATCH_MATMUL", [t([2, 5, 7]), t([2, 7, 3])], [t([2, 5, 3])], {}) == 30 * 7
    assert count_macs("BATCH_MATMUL", [t([2, 7, 5]), t([2, 7, 3])], [t([2, 5, 3])], {"adj_x": True}) == 30 * 7
    assert count_macs("ADD", [t([1, 8]), t([1, 8])], [t([1, 8])], {}) == 0


def test_builtin_code_is_max_of_deprecated_and_new_field():
    gelu = schema.BuiltinOperator.GELU
    assert gelu > 127  # stored as 127 in the deprecated int8 field
    t = [_tensor("x", [1, 4]), _tensor("y", [1, 4])]
    assert read_model(_build(t, [("GELU", [0], [1], None)])).ops[0].op == "GELU"
    # files written before the int32 field existed carry only the deprecated code
    assert read_model(_build(t, [("TANH", [0], [1], None)], deprecated_only=True)).ops[0].op == "TANH"
    assert BUILTIN_NAMES[schema.BuiltinOperator.FULLY_CONNECTED] == "FULLY_CONNECTED"


def test_read_model_keeps_shape_signature_and_small_int_constants():
    t = [_tensor("x", [1, 8], signature=[-1, 8]), _tensor("shape", [2], "INT32", values=[2, 4]),
         _tensor("y", [2, 4], signature=[-1, 4])]
    m = read_model(_build(t, [("RESHAPE", [0, 1], [2], None)]))
    x, shape = m.ops[0].inputs
    assert x is not None and x.dynamic and x.shape_signature == (-1, 8) and x.shape == (1, 8)
    assert shape is not None and shape.values == (2, 4) and shape.is_const
    assert [t.name for t in m.dynamic_tensors()] == ["x", "y"]


@pytest.mark.parametrize("data", [b"", b"TFL3", b"\x00" * 7, b"\x10\x00\x00\x00TFL3" + b"\xff" * 40,
                                  b"\x00\x00\x00\x00TFL3", b"PK\x03\x04" + b"\x00" * 100])
def test_read_model_raises_model_load_error_for_garbage(data):
    with pytest.raises(ModelLoadError):
        read_model(data)


def test_read_model_raises_model_load_error_for_every_truncation():
    data = _mlp_bytes()
    for n in range(0, len(data) - 1):
        try:
            read_model(data[:n])
        except ModelLoadError:
            continue
        # a prefix that still parses must describe the same ops (the tail held only padding)
        assert [o.op for o in read_model(data[:n]).ops] == ["FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]


def test_read_model_never_raises_anything_but_model_load_error_on_corruption():
    data = _mlp_bytes()
    rng = random.Random(7)
    rules = [load_rules(d) for d in DELEGATES]
    for _ in range(400):
        b = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(8, len(b))] = rng.randrange(256)
        try:
            m = read_model(bytes(b))
        except ModelLoadError:
            continue
        for r in rules:  # whatever parsed must also be checkable
            evaluate(m, r)


def test_load_model_verifies_header_and_names_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_model(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_mlp_bytes()[:60])
    with pytest.raises(ModelLoadError, match="bad.tflite"):
        load_model(bad)


def test_read_model_rejects_other_schema_versions():
    model = schema.ModelT.InitFromPackedBuf(_mlp_bytes(), 0)
    model.version = 2
    b = flatbuffers.Builder(256)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    with pytest.raises(ModelLoadError, match="schema version 2"):
        read_model(bytes(b.Output()))


# --- fast: rule files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", DELEGATES)
def test_rule_file_is_valid_and_every_constraint_has_reason_and_source(name):
    rules = load_rules(name)
    assert validate_rules(rules) == []
    assert rules["delegate"] == name
    known = set(BUILTIN_NAMES.values())
    assert set(rules["ops"]) <= known, set(rules["ops"]) - known
    for op in rules["ops"].values():
        for c in op.get("constraints", ()):
            assert c["reason"].strip() and rules["sources"][c["source"]].strip()


def test_rule_files_encode_partition_defaults_from_delegate_sources():
    part = {d: load_rules(d)["partitioning"] for d in DELEGATES}
    assert part["gpu"]["min_nodes_per_partition"] == 1 and part["gpu"]["max_delegated_partitions"] == 1
    assert part["coreml"]["min_nodes_per_partition"] == 2 and part["coreml"]["max_delegated_partitions"] is None
    assert part["hexagon"]["min_nodes_per_partition"] == 2 and part["hexagon"]["max_delegated_partitions"] == 4
    socs = [s["hexagon"] for s in load_rules("hexagon")["supported_socs"]]
    assert socs == ["680", "682", "685", "690"]
    assert "Neural Engine" in load_rules("coreml")["devices"]["neural_engine"]


def test_load_rules_unknown_name_or_broken_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown delegate"):
        load_rules("nnapi")
    broken = tmp_path / "r.json"
    broken.write_text(json.dumps({"delegate": "x", "sources": {}, "partitioning": {}, "unlisted_op": {},
                                  "ops": {"ADD": {"source": "s", "constraints": [{"check": "nope"}]}}}))
    with pytest.raises(ConfigError, match="unknown check 'nope'"):
        load_rules(broken)


# --- fast: engine -----------------------------------------------------------------------------


def test_evaluate_float_mlp_is_fully_delegated_on_gpu_coreml_xnnpack_and_rejected_on_hexagon():
    m = read_model(_mlp_bytes())
    reports = {d: evaluate(m, load_rules(d)) for d in DELEGATES}
    for d in ("gpu", "coreml", "xnnpack"):
        assert reports[d].delegated_fraction == 1.0 and reports[d].delegated_mac_fraction == 1.0, d
        assert len(reports[d].partitions) == 1 and reports[d].fallback_ops == {}
    hexagon = reports["hexagon"]
    assert hexagon.delegated_fraction == 0.0 and hexagon.fallback_ops == {"FULLY_CONNECTED": 2, "SOFTMAX": 1}
    assert all("8-bit" in o.reason and "FLOAT32" in o.reason for o in hexagon.ops)


def test_evaluate_gpu_takes_only_the_largest_partition():
    # TANH ADD | GATHER(2-D indices) | ADD MUL ADD: two runs, the GPU keeps the larger one
    rep = evaluate(read_model(_ops_model(["TANH", "ADD", "GATHER", "ADD", "MUL", "ADD"])), load_rules("gpu"))
    by = {o.index: o for o in rep.ops}
    assert not by[2].supported and "Only support 1D indices" in by[2].reason
    assert [p.ops for p in rep.partitions] == [(0, 1), (3, 4, 5)]
    assert [p.delegated for p in rep.partitions] == [False, True]
    assert by[0].supported and not by[0].delegated and "max_delegated_partitions" in by[0].reason
    assert rep.delegated_fraction == pytest.approx(3 / 6)


def test_evaluate_coreml_partition_below_min_nodes_falls_back_to_cpu():
    # ADD | GATHER | MUL ADD: Core ML drops the 1-op partition, keeps the 2-op one
    rep = evaluate(read_model(_ops_model(["ADD", "GATHER", "MUL", "ADD"])), load_rules("coreml"))
    assert [(p.ops, p.delegated) for p in rep.partitions] == [((0,), False), ((2, 3), True)]
    first = rep.ops[0]
    assert first.supported and not first.delegated and "min_nodes_per_partition 2" in first.reason
    assert rep.fallback_ops == {"ADD": 1, "GATHER": 1}


def test_evaluate_dynamic_shape_refuses_whole_graph_on_gpu_but_not_xnnpack():
    t = [_tensor("x", [1, 16], signature=[-1, 16]), _tensor("w", [8, 16], const=True), _tensor("b", [8], const=True),
         _tensor("y", [1, 8], signature=[-1, 8])]
    m = read_model(_build(t, [("FULLY_CONNECTED", [0, 1, 2], [3], _fc_options())]))
    gpu = evaluate(m, load_rules("gpu"))
    assert gpu.delegated_fraction == 0.0 and "static-sized tensors" in gpu.model_reason
    assert "shape_signature [-1, 16]" in gpu.ops[0].reason
    assert evaluate(m, load_rules("xnnpack")).delegated_fraction == 1.0


def test_evaluate_fp16_constant_dequantize_is_folded_for_coreml():
    t = [_tensor("x", [1, 16]), _tensor("w16", [8, 16], "FLOAT16", const=True), _tensor("w", [8, 16]),
         _tensor("y", [1, 8])]
    m = read_model(_build(t, [("DEQUANTIZE", [1], [2], None), ("FULLY_CONNECTED", [0, 2, -1], [3], _fc_options())]))
    rep = evaluate(m, load_rules("coreml"))
    assert rep.delegated_fraction == 1.0, [(o.op, o.reason) for o in rep.ops]
    # without the fp16 remap Core ML would see non-constant float32 weights and refuse the FC
    assert evaluate(m, {**load_rules("coreml"), "fp16_constant_dequantize": {}}).delegated_fraction == 0.0


def test_compat_report_round_trips_through_json():
    rep = evaluate(read_model(_ops_model(["ADD", "GATHER", "MUL", "ADD"])), load_rules("coreml"))
    again = CompatReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again == rep
    assert "coreml: 2/4 ops delegated" in render_table([rep])


# --- fast: CLI --------------------------------------------------------------------------------


def test_cli_check_json_lists_every_op_per_delegate(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(_ops_model(["ADD", "GATHER", "MUL"]))
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "gpu,xnnpack", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [d["delegate"] for d in data] == ["gpu", "xnnpack"]
    ops = data[0]["ops"]
    assert [(o["op"], o["index"], o["supported"]) for o in ops] == [("ADD", 0, True), ("GATHER", 1, False), ("MUL", 2, True)]
    assert all(set(o) >= {"op", "index", "supported", "reason"} for o in ops)


def test_cli_check_table_is_default(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(_mlp_bytes())
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "hexagon"])
    assert res.exit_code == 0 and res.output.startswith("hexagon: 0/3 ops delegated")
    assert "FULLY_CONNECTED" in res.output and "Snapdragon" in res.output


def test_cli_check_fail_under_exits_1_naming_each_target_below_it(tmp_path, capsys):
    """ADD, GATHER, MUL: GATHER stays on the CPU and splits the graph; the GPU delegate takes one partition: 1 of 3."""
    model = tmp_path / "m.tflite"
    model.write_bytes(_ops_model(["ADD", "GATHER", "MUL"]))
    with pytest.raises(SystemExit) as exc:
        main(["check", str(model), "--delegate", "gpu", "--fail-under", "100"])
    assert exc.value.code == 1
    assert "litegate: gpu delegates 33.3% of the ops (1/3), below --fail-under 100%" in capsys.readouterr().err
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "gpu", "--fail-under", "30"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "gpu", "--fail-under", "101"])
    assert res.exit_code == 2 and "101" in res.output


def test_cli_check_unknown_delegate_exits_2(tmp_path, capsys):
    model = tmp_path / "m.tflite"
    model.write_bytes(_mlp_bytes())
    with pytest.raises(SystemExit) as exc:
        main(["check", str(model), "--delegate", "gpu,nnapi"])
    assert exc.value.code == 2 and "unknown delegate 'nnapi'" in capsys.readouterr().err


def test_cli_check_garbage_file_exits_3_with_one_line(tmp_path, capsys):
    model = tmp_path / "m.tflite"
    model.write_bytes(_mlp_bytes()[:100])
    with pytest.raises(SystemExit) as exc:
        main(["check", str(model)])
    err = capsys.readouterr().err
    assert exc.value.code == 3 and err.startswith("litegate: error: ") and err.count("\n") == 1


# --- slow: real converted models --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real models converted with TensorFlow's TFLiteConverter (seeded)."""
    import tensorflow as tf
    import tf_keras as keras

    out = tmp_path_factory.mktemp("compat-models")
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}

    def save(name: str, converter: Any) -> None:
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(converter.convert())

    def from_fn(fn: Any) -> Any:
        return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)

    mlp = keras.Sequential([keras.layers.Input((16,), batch_size=1), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(4), keras.layers.Softmax()])
    save("mlp", tf.lite.TFLiteConverter.from_keras_model(mlp))
    dynamic = keras.Sequential([keras.layers.Input((16,)), keras.layers.Dense(8, activation="relu")])
    save("dynamic", tf.lite.TFLiteConverter.from_keras_model(dynamic))

    table = tf.constant(rng.standard_normal((50, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 6], tf.int32)])
    def gather2d(ids: Any) -> Any:
        return {"y": tf.gather(table, ids) * 2.0}

    save("gather2d", from_fn(gather2d))

    @tf.function(input_signature=[tf.TensorSpec([1, 6, 8], tf.float32)])
    def shrink(x: Any) -> Any:
        return {"y": x[:, 0, :] + 1.0}

    save("shrink", from_fn(shrink))

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def flex(x: Any) -> Any:
        return {"y": tf.linalg.det(tf.reshape(x, [1, 2, 2])) + 1.0}

    conv = from_fn(flex)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    save("flex", conv)

    w1 = tf.constant(rng.standard_normal((16, 8)).astype(np.float32))
    w2 = tf.constant(rng.standard_normal((8, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32)])
    def int8_net(x: Any) -> Any:
        h = tf.nn.relu(tf.matmul(x, w1))
        z = tf.matmul(h, w2)
        return {"y": z - tf.reduce_max(z, axis=-1, keepdims=True)}

    def representative() -> Any:
        for _ in range(16):
            yield [rng.standard_normal((1, 16)).astype(np.float32)]

    conv = from_fn(int8_net)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the int8 I/O is intended
        warnings.simplefilter("ignore", UserWarning)
        save("int8", conv)
    conv = tf.lite.TFLiteConverter.from_keras_model(mlp)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    save("fp16", conv)
    return paths


@pytest.mark.slow
def test_reader_matches_interpreter_and_tf_reader_on_converted_models(real_models):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    for name, path in real_models.items():
        ours = load_model(path)
        details = Interpreter(model_path=str(path))._get_ops_details()
        assert [o.name for o in ours.subgraph_ops(0)] == [d["op_name"] for d in details], name
        for o, d in zip(ours.subgraph_ops(0), details, strict=True):
            assert [t.index if t else -1 for t in o.inputs] == list(d["inputs"]), (name, o.name)
            assert [t.index for t in o.outputs] == list(d["outputs"]), (name, o.name)
        ref = flatbuffer_utils.read_model(str(path))  # TF's own (object API) reader
        ref_codes = [ref.operatorCodes[op.opcodeIndex] for op in ref.subgraphs[0].operators]
        assert [o.version for o in ours.subgraph_ops(0)] == [c.version for c in ref_codes], name
        assert [o.op for o in ours.subgraph_ops(0)] == [
            BUILTIN_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in ref_codes], name


@pytest.mark.slow
def test_converted_mlp_is_fully_gpu_delegated_with_hand_computed_macs(real_models):
    model = load_model(real_models["mlp"])
    assert [o.op for o in model.ops] == ["FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]
    assert [o.macs for o in model.ops] == [128, 32, 0]
    (gpu,) = check_model(real_models["mlp"], ["gpu"])
    assert gpu.fully_delegated and gpu.delegated_mac_fraction == 1.0 and len(gpu.partitions) == 1


@pytest.mark.slow
def test_converted_2d_gather_is_refused_by_gpu_with_1d_indices_reason(real_models):
    (gpu,) = check_model(real_models["gather2d"], ["gpu"])
    gather = next(o for o in gpu.ops if o.op == "GATHER")
    assert not gather.supported and "Only support 1D indices" in gather.reason
    assert "gpu_compatibility.cc" in gather.source
    assert gpu.fallback_ops == {"GATHER": 1} and gpu.delegated_fraction == 0.5


@pytest.mark.slow
def test_converted_strided_slice_with_shrink_mask_is_refused_by_gpu_and_xnnpack(real_models):
    model = load_model(real_models["shrink"])
    ss = next(o for o in model.ops if o.op == "STRIDED_SLICE")
    assert ss.options["shrink_axis_mask"] != 0
    gpu, xnnpack = check_model(real_models["shrink"], ["gpu", "xnnpack"])
    assert "shrink_axis_mask" in next(o for o in gpu.ops if o.op == "STRIDED_SLICE").reason
    assert "shrink axis mask" in next(o for o in xnnpack.ops if o.op == "STRIDED_SLICE").reason


@pytest.mark.slow
def test_float_model_is_rejected_by_hexagon_and_int8_model_is_partly_supported(real_models):
    (float_hex,) = check_model(real_models["mlp"], ["hexagon"])
    assert float_hex.delegated_fraction == 0.0
    assert all("8-bit" in o.reason for o in float_hex.ops)
    hexagon, coreml = check_model(real_models["int8"], ["hexagon", "coreml"])
    assert 0.0 < hexagon.delegated_fraction < 1.0, render_table([hexagon])
    assert hexagon.ops[0].delegated and hexagon.ops[0].op == "FULLY_CONNECTED"
    assert any(not o.supported and o.op == "REDUCE_MAX" for o in hexagon.ops)
    assert coreml.delegated_fraction == 0.0 and "float" in coreml.ops[0].reason


@pytest.mark.slow
def test_dynamic_batch_model_is_refused_by_gpu(real_models):
    gpu, xnnpack = check_model(real_models["dynamic"], ["gpu", "xnnpack"])
    assert gpu.delegated_fraction == 0.0 and "static-sized tensors" in gpu.model_reason
    assert xnnpack.delegated_fraction == 1.0


@pytest.mark.slow
def test_flex_op_is_recognised_and_falls_back_everywhere(real_models):
    model = load_model(real_models["flex"])
    flex = [o for o in model.ops if o.is_flex]
    assert [o.custom_code for o in flex] == ["FlexMatrixDeterminant"]
    for rep in check_model(real_models["flex"]):
        verdict = next(o for o in rep.ops if o.op == "FlexMatrixDeterminant")
        assert not verdict.supported and "Flex" in verdict.reason, rep.delegate


@pytest.mark.slow
def test_fp16_model_is_fully_delegated_on_gpu_and_coreml(real_models):
    for rep in check_model(real_models["fp16"], ["gpu", "coreml"]):
        assert rep.fully_delegated, render_table([rep])
        assert "DEQUANTIZE" in [o.op for o in rep.ops]


@pytest.mark.slow
def test_cli_check_runs_as_subprocess(real_models):
    res = run_cli("check", str(real_models["gather2d"]), "--delegate", "gpu,coreml", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Only support 1D indices" in res.stdout and "min_nodes_per_partition 2" in res.stdout


@pytest.mark.slow
def test_bert_gpu_verdict_flags_2d_embedding_gather_and_shrink_slices(tmp_path):
    from litegate.api import convert_model
    from litegate.types import ModelSource

    ckpt = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "bert.tflite"
    convert_model(ModelSource(kind="hf-bert", path=str(ckpt), task="text-classification", seq_len=16), out)
    model = load_model(out)
    gpu, xnnpack = check_model(out, ["gpu", "xnnpack"])
    gathers = [o for o in gpu.ops if o.op == "GATHER"]
    assert gathers and all("Only support 1D indices" in o.reason for o in gathers)
    shrinking = {o.index for o in model.ops if o.op == "STRIDED_SLICE" and o.options.get("shrink_axis_mask")}
    for o in gpu.ops:
        if o.index in shrinking:
            assert "shrink_axis_mask" in o.reason
    assert 0.5 < gpu.delegated_fraction < 1.0
    assert gpu.delegated_mac_fraction is not None and gpu.delegated_mac_fraction > 0.9
    assert "GATHER" in xnnpack.fallback_ops and xnnpack.delegated_mac_fraction == 1.0


def test_xnnpack_refuses_int8_batch_matmul_with_nonzero_rhs_zero_point_as_the_runtime_does(tmp_path):
    """Static verdict against the runtime: the BATCH_MATMULs XNNPACK leaves to the builtin kernel (LiteRT's profiler)."""
    from conftest import DEMO

    from litegate.api import convert_model
    from litegate.benchmarks.profile import run_profile
    from litegate.quantize import recipes
    from litegate.types import ModelSource

    ckpt = make_checkpoint(tmp_path / "ckpt")
    source = ModelSource(kind="hf-bert", path=str(ckpt), task="text-classification", seq_len=16)
    # int8 as calibrated, without the rewrite that gives the shipped recipe zero-point-0 operands
    asym = tmp_path / "int8-asym.json"
    asym.write_text(json.dumps({"name": "int8-asym", "kind": "full-integer", "params": {
        **recipes.load("int8").params, "symmetric_matmul_operands": False}}))
    out = tmp_path / "int8.tflite"
    convert_model(source, out, recipe=str(asym), calibration=DEMO / "calibration.txt", samples=20)
    model = load_model(out)
    (xnnpack,) = check_model(out, ["xnnpack"])
    bmm = {o.index for o in model.ops if o.op == "BATCH_MATMUL"}
    refused = {o.index for o in xnnpack.ops if o.index in bmm and not o.delegated}
    rhs_zp = {o.index: o.inputs[1].zero_point for o in model.ops if o.index in bmm}
    assert refused == {i for i, zp in rhs_zp.items() if zp != 0} and refused  # calibrated K/V are not centred
    for o in xnnpack.ops:
        if o.index in refused:
            assert "non-zero zero point" in o.reason
    prof = run_profile(out, threads=1, backend="xnnpack", runs=2)
    builtin = {name: count for name, count, _, _ in prof["by_type"]}
    assert builtin.get("BATCH_MATMUL", 0) == len(refused)
    # the shipped int8 recipe: every BATCH_MATMUL delegated, by the rule table and by the runtime's own profile
    shipped = tmp_path / "int8-shipped.tflite"
    convert_model(source, shipped, recipe="int8", calibration=DEMO / "calibration.txt", samples=20)
    (sx,) = check_model(shipped, ["xnnpack"])
    assert all(o.delegated for o in sx.ops if o.op == "BATCH_MATMUL")
    prof = run_profile(shipped, threads=1, backend="xnnpack", runs=2)
    assert "BATCH_MATMUL" not in {name for name, _, _, _ in prof["by_type"]}
    fp32 = tmp_path / "fp32.tflite"
    convert_model(source, fp32)
    (fx,) = check_model(fp32, ["xnnpack"])
    assert all(o.delegated for o in fx.ops if o.op == "BATCH_MATMUL")  # float: zero points do not apply

"""Hostile .tflite files made in code: small real models, ObjectAPI mutations and flatbuffer bombs.

No TensorFlow: the models are built with LiteRT's generated schema (``schema_py_generated``) and the
``flatbuffers`` builder, so the tests that use them run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flatbuffers
from ai_edge_litert import schema_py_generated as s


def _tensor(name: bytes, shape: list[int], ttype: int = s.TensorType.FLOAT32, buffer: int = 0) -> Any:
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer = name, shape, ttype, buffer
    return t


def _map(name: bytes, index: int) -> Any:
    m = s.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m


def _sig(key: bytes, subgraph: int, inputs: list[tuple[bytes, int]], outputs: list[tuple[bytes, int]]) -> Any:
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, subgraph
    sig.inputs = [_map(n, i) for n, i in inputs]
    sig.outputs = [_map(n, i) for n, i in outputs]
    return sig


def pack(model: Any) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def unpack(data: bytes) -> Any:
    return s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))


def mutate(data: bytes, fn: Callable[[Any], None]) -> bytes:
    """``data`` unpacked with the ObjectAPI, changed by ``fn`` and packed again."""
    m = unpack(data)
    fn(m)
    return pack(m)


def add_model(seq: int = 4) -> bytes:
    """``y = x + x`` over int32 token ids ``x: [1, seq]`` with a ``serving_default`` signature (runs in LiteRT)."""
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors = [_tensor(b"input_ids", [1, seq], s.TensorType.INT32), _tensor(b"y", [1, seq], s.TensorType.INT32)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0], [1], [op], b"main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers = [s.BufferT()]
    model.description = b"litegate test: add"
    model.signatureDefs = [_sig(b"serving_default", 0, [(b"input_ids", 0)], [(b"y", 1)])]
    return pack(model)


def mlp_model(seed: int = 0) -> bytes:
    """A two-layer float MLP (FULLY_CONNECTED, RELU, RESHAPE with an int32 shape constant) and its weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = []
    for op in (s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.RELU, s.BuiltinOperator.RESHAPE):
        c = s.OperatorCodeT()
        c.builtinCode = c.deprecatedBuiltinCode = op
        c.version = 1
        codes.append(c)
    w1 = rng.standard_normal((8, 4)).astype(np.float32)
    w2 = rng.standard_normal((3, 8)).astype(np.float32)
    new_shape = np.array([1, 3], np.int32)
    buffers = [s.BufferT()]
    for arr in (w1, w2, new_shape):
        b = s.BufferT()
        b.data = list(arr.tobytes())
        buffers.append(b)
    tensors = [_tensor(b"features", [1, 4]), _tensor(b"w1", [8, 4], buffer=1), _tensor(b"h", [1, 8]),
               _tensor(b"h_relu", [1, 8]), _tensor(b"w2", [3, 8], buffer=2), _tensor(b"z", [1, 3]),
               _tensor(b"shape", [2], s.TensorType.INT32, buffer=3), _tensor(b"logits", [1, 3])]
    q = s.QuantizationParametersT()
    q.scale, q.zeroPoint = [0.1], [0]
    tensors[2].quantization = q

    def op(code: int, ins: list[int], outs: list[int], opt_type: int = 0, opt: Any = None) -> Any:
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, ins, outs
        if opt is not None:
            o.builtinOptionsType, o.builtinOptions = opt_type, opt
        return o

    fc = s.FullyConnectedOptionsT()
    reshape = s.ReshapeOptionsT()
    reshape.newShape = [1, 3]
    ops = [op(0, [0, 1, -1], [2], s.BuiltinOptions.FullyConnectedOptions, fc), op(1, [2], [3]),
           op(0, [3, 4, -1], [5], s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT()),
           op(2, [5, 6], [7], s.BuiltinOptions.ReshapeOptions, reshape)]
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [0], [7], ops, b"main"
    meta = s.MetadataT()
    meta.name, meta.buffer = b"min_runtime_version", len(buffers)
    mb = s.BufferT()
    mb.data = list(b"1.5.0\0\0\0\0\0\0\0\0\0\0\0")
    buffers.append(mb)
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [sg], buffers
    model.metadata = [meta]
    model.signatureDefs = [_sig(b"serving_default", 0, [(b"features", 0)], [(b"logits", 7)])]
    return pack(model)


def step_model(vocab: int = 8, state: int = 4) -> bytes:
    """A recurrent-generator layout: ``step(token, h) -> (logits, h)`` over two subgraphs' worth of signatures
    (``prefill`` and ``step``, as litegate exports them); the arithmetic is a stand-in (ADD)."""
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    subgraphs = []
    for name, tok_shape in ((b"prefill", [1, 4]), (b"step", [1, 1])):
        sg = s.SubGraphT()
        sg.tensors = [_tensor(b"tokens" if name == b"prefill" else b"token", tok_shape, s.TensorType.INT32),
                      _tensor(b"h", [1, state]), _tensor(b"logits", [1, state]), _tensor(b"h_out", [1, state])]
        a, b2 = s.OperatorT(), s.OperatorT()
        a.opcodeIndex, a.inputs, a.outputs = 0, [1, 1], [2]
        b2.opcodeIndex, b2.inputs, b2.outputs = 0, [1, 1], [3]
        sg.inputs, sg.outputs, sg.operators, sg.name = [0, 1], [2, 3], [a, b2], name
        subgraphs.append(sg)
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], subgraphs, [s.BufferT()]
    model.signatureDefs = [
        _sig(b"prefill", 0, [(b"tokens", 0), (b"h_0", 1)], [(b"logits", 2), (b"h_0", 3)]),
        _sig(b"step", 1, [(b"token", 0), (b"h_0", 1)], [(b"logits", 2), (b"h_0", 3)]),
    ]
    return pack(model)


def shared_vector_bomb(n_ops: int = 20_000, n_refs: int = 20_000, *, share_op: bool = True) -> bytes:
    """``n_ops`` operators whose ``inputs`` are one shared ``n_refs``-entry vector (n_ops x n_refs references).

    With ``share_op`` every entry of the operators vector points at one operator table: a 160 KB file for the
    default sizes (the attacker's file: 400 million tensor references).
    """
    b = flatbuffers.Builder(8 * (n_ops + n_refs) + 4096)
    names = [b.CreateString(n) for n in ("x", "y")]
    tensors = []
    for name in names:
        s.TensorStartShapeVector(b, 2)
        b.PrependInt32(4)
        b.PrependInt32(1)
        shape = b.EndVector()
        s.TensorStart(b)
        s.TensorAddShape(b, shape)
        s.TensorAddName(b, name)
        s.TensorAddType(b, s.TensorType.FLOAT32)
        tensors.append(s.TensorEnd(b))
    s.OperatorStartInputsVector(b, n_refs)
    for _ in range(n_refs):
        b.PrependInt32(0)
    shared_inputs = b.EndVector()
    s.OperatorStartOutputsVector(b, 1)
    b.PrependInt32(1)
    shared_outputs = b.EndVector()

    def one_op() -> int:
        s.OperatorStart(b)
        s.OperatorAddOpcodeIndex(b, 0)
        s.OperatorAddInputs(b, shared_inputs)
        s.OperatorAddOutputs(b, shared_outputs)
        return int(s.OperatorEnd(b))

    ops = [one_op()] * n_ops if share_op else [one_op() for _ in range(n_ops)]
    s.SubGraphStartOperatorsVector(b, n_ops)
    for o in reversed(ops):
        b.PrependUOffsetTRelative(o)
    ops_vec = b.EndVector()
    s.SubGraphStartTensorsVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tensors_vec = b.EndVector()
    s.SubGraphStartInputsVector(b, 1)
    b.PrependInt32(0)
    sg_in = b.EndVector()
    s.SubGraphStartOutputsVector(b, 1)
    b.PrependInt32(1)
    sg_out = b.EndVector()
    s.SubGraphStart(b)
    s.SubGraphAddTensors(b, tensors_vec)
    s.SubGraphAddInputs(b, sg_in)
    s.SubGraphAddOutputs(b, sg_out)
    s.SubGraphAddOperators(b, ops_vec)
    sg = s.SubGraphEnd(b)
    s.OperatorCodeStart(b)
    s.OperatorCodeAddDeprecatedBuiltinCode(b, s.BuiltinOperator.ADD)
    s.OperatorCodeAddBuiltinCode(b, s.BuiltinOperator.ADD)
    s.OperatorCodeAddVersion(b, 1)
    code = s.OperatorCodeEnd(b)
    s.BufferStart(b)
    buf0 = s.BufferEnd(b)
    s.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(code)
    codes = b.EndVector()
    s.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sg)
    sgs = b.EndVector()
    s.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(buf0)
    bufs = b.EndVector()
    s.ModelStart(b)
    s.ModelAddVersion(b, 3)
    s.ModelAddOperatorCodes(b, codes)
    s.ModelAddSubgraphs(b, sgs)
    s.ModelAddBuffers(b, bufs)
    b.Finish(s.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def huge_tensors(data: bytes, *, n: int = 1, gib: float = 1.0, variable: bool = True) -> bytes:
    """``data`` with ``n`` dangling float32 tensors of ``gib`` GiB each appended to subgraph 0 (no op uses them)."""
    def add(m: Any) -> None:
        for i in range(n):
            t = _tensor(f"huge_{i}".encode(), [int(gib * (1 << 30)) // (4 << 20), 1 << 20])  # gib GiB of float32
            t.isVariable = variable
            m.subgraphs[0].tensors.append(t)

    return mutate(data, add)

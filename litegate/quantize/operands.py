"""Zero-point-0 right-hand operands for int8 BATCH_MATMULs, so XNNPACK runs them (``symmetric_matmul_operands``).

XNNPACK's delegate takes an int8 BATCH_MATMUL only where its right-hand input has zero point 0; TFLite's
calibration gives an activation an asymmetric range (min/max), so a transformer's attention matmuls (``q @ k^T``
and ``softmax @ v``, where k and v are activations) fall back to TFLite's builtin int8 kernel. Measured on MiniLM
(AMD EPYC, 1 thread, each op alone): 1.7-3.9 ms per attention matmul on the builtin kernel, 0.17 ms for the one
whose calibrated zero point happened to be 0, which XNNPACK ran.

This pass rewrites a converted model: each such operand's quantization becomes symmetric (zero point 0) with the
smallest scale whose int8 grid still covers the old range, ``s' = s * max((128 + zp) / 128, (127 - zp) / 127)``.
The operand is usually ``FULLY_CONNECTED -> RESHAPE -> TRANSPOSE -> BATCH_MATMUL``: TFLite's int8 RESHAPE and
TRANSPOSE copy bytes and assume their input's parameters, so the whole chain is rewritten together, and the op that
produces its head requantizes to the new parameters at run time. A chain is left alone (with the reason) where a
tensor of it is a graph input or output, a constant, per-channel, or read or written by an op that might assume
equal input and output parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from litegate.errors import ModelLoadError
from litegate.tflite.flatbuffer import BUILTIN_NAMES

# int8 ops that copy bytes: their input and output must hold the same quantization parameters
PASS_THROUGH = frozenset({"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS"})
# int8 ops that read each input's parameters and requantize to their output's: safe neighbours of a rewritten chain
REQUANTIZING = frozenset({"FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL",
                          "QUANTIZE", "DEQUANTIZE"})


def symmetric_matmul_operands(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """``data`` with every int8 BATCH_MATMUL's activation right-hand operand at zero point 0, and what was done.

    Returns:
        (model bytes, stats): ``batch_matmuls`` (int8 ones with an activation right-hand input), ``symmetric``
        (already zero point 0), ``rewritten`` (operands given zero point 0), ``tensors`` (tensors whose parameters
        changed), ``max_scale_growth`` (the largest s'/s: how much resolution an operand gave up), ``skipped``
        ([{op, why}]). ``data`` itself is returned when nothing changed.

    Raises:
        ModelLoadError: ``data`` is not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema  # LiteRT's flatbuffer schema: build child only

    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # noqa: BLE001 - a malformed flatbuffer raises anything from struct to IndexError
        raise ModelLoadError(f"not a TFLite flatbuffer: {exc}") from None
    if any((b.offset or 0) > 1 for b in model.buffers or []):  # data after the flatbuffer (> 2 GB): Pack drops it
        return data, {"batch_matmuls": 0, "symmetric": 0, "rewritten": 0, "tensors": 0, "max_scale_growth": 1.0,
                      "skipped": [{"op": -1, "why": "the model keeps its buffers outside the flatbuffer (> 2 GB)"}]}
    int8 = schema.TensorType.INT8
    stats: dict[str, Any] = {"batch_matmuls": 0, "symmetric": 0, "rewritten": 0, "tensors": 0,
                             "max_scale_growth": 1.0, "skipped": []}
    changed = False
    for g in model.subgraphs or []:
        ops = list(g.operators or [])
        kinds = [BUILTIN_NAMES.get(_builtin(model.operatorCodes[op.opcodeIndex]), "?") for op in ops]
        producer: dict[int, int] = {}
        consumers: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            for t in _ids(op.outputs):
                producer[t] = i
            for t in _ids(op.inputs):
                consumers.setdefault(t, []).append(i)
        io = set(_ids(g.inputs)) | set(_ids(g.outputs))
        done: set[int] = set()
        for i, op in enumerate(ops):
            inputs = list(_ids(op.inputs))
            if kinds[i] != "BATCH_MATMUL" or len(inputs) < 2:
                continue
            lhs, rhs = (g.tensors[t] for t in inputs[:2])
            if lhs.type != int8 or rhs.type != int8 or _constant(model, rhs):
                continue
            stats["batch_matmuls"] += 1
            if inputs[1] in done:
                stats["rewritten"] += 1
                continue
            scale, zero = _per_tensor(rhs)
            if scale is None:
                stats["skipped"].append({"op": i, "why": "the right-hand input is not quantized per tensor"})
                continue
            if zero == 0:
                stats["symmetric"] += 1
                continue
            chain, why = _chain(inputs[1], ops, kinds, producer, consumers, io)
            if why is None:
                why = next((f"tensor {g.tensors[t].name.decode(errors='replace')!r} {w}" for t in chain
                            for w in [_unfit(model, g.tensors[t], scale, zero)] if w), None)
            if why is not None:
                stats["skipped"].append({"op": i, "why": why})
                continue
            growth = max((128 + zero) / 128, (127 - zero) / 127)
            new_scale = float(np.float32(scale * growth))
            for t in chain:
                _set_symmetric(g.tensors[t], new_scale)
            done.update(chain)
            changed = True
            stats["rewritten"] += 1
            stats["tensors"] += len(chain)
            stats["max_scale_growth"] = round(max(stats["max_scale_growth"], growth), 4)
    if not changed:
        return data, stats
    import flatbuffers  # the flatbuffers runtime LiteRT's schema module is generated for

    builder = flatbuffers.Builder(len(data) + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), stats


def _chain(start: int, ops: list[Any], kinds: list[str], producer: dict[int, int], consumers: dict[int, list[int]],
           io: set[int]) -> tuple[list[int], str | None]:
    """The tensors that must share ``start``'s parameters (linked by pass-through ops), or why they cannot change."""
    seen, todo = {start}, [start]
    while todo:
        t = todo.pop()
        if t in io:
            return [], "a tensor of its chain is a graph input or output"
        links: list[tuple[int, bool]] = [(producer[t], True)] if t in producer else []
        links += [(c, False) for c in consumers.get(t, [])]
        for j, produces in links:
            if kinds[j] in PASS_THROUGH:
                first = next(_ids(ops[j].inputs), None)
                if first is None:
                    return [], f"{kinds[j]} op {j} has no input"
                for u in (first, *_ids(ops[j].outputs)):
                    if u not in seen:
                        seen.add(u)
                        todo.append(u)
            elif kinds[j] not in REQUANTIZING:
                side = "written" if produces else "read"
                return [], f"a tensor of its chain is {side} by {kinds[j]} (op {j}), which may assume its parameters"
    return sorted(seen), None


def _unfit(model: Any, tensor: Any, scale: float, zero: int) -> str | None:
    """Why ``tensor`` cannot be rewritten with its chain's head (a constant, or other parameters), or None."""
    if _constant(model, tensor):
        return "is a constant"
    s, z = _per_tensor(tensor)
    if s is None or z != zero or not np.isclose(s, scale, rtol=1e-6, atol=0.0):
        return "holds other quantization parameters than its chain"
    return None


def _set_symmetric(tensor: Any, scale: float) -> None:
    q = tensor.quantization
    q.scale = np.asarray([scale], dtype=np.float32)
    q.zeroPoint = np.asarray([0], dtype=np.int64)
    if q.min is not None and len(q.min) == 1:
        q.min = np.asarray([-128.0 * scale], dtype=np.float32)
        q.max = np.asarray([127.0 * scale], dtype=np.float32)


def _per_tensor(tensor: Any) -> tuple[float | None, int]:
    q = tensor.quantization
    if q is None or q.scale is None or q.zeroPoint is None or len(q.scale) != 1 or len(q.zeroPoint) != 1:
        return None, 0
    return float(q.scale[0]), int(q.zeroPoint[0])


def _constant(model: Any, tensor: Any) -> bool:
    buf = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers or []) else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or (buf.offset or 0) > 1)


def _builtin(code: Any) -> int:
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _ids(values: Any) -> Iterator[int]:
    return (int(t) for t in (values if values is not None else ()) if int(t) >= 0)

"""Verify an untrusted .tflite before any interpreter sees it.

TFLite's Python bindings run only the flatbuffers verifier (structure), which does not check the
uint64 external buffer ``offset``/``size`` fields nor whether a tensor's shape × dtype fits its
buffer; crafted files that pass it have crashed kernels (integer overflow in shape products,
out-of-bounds reads) and LiteRT itself (a signature naming a subgraph the file does not have). This
module adds those semantic checks, overflow-safe (Python integers), on top of the bounds-checked
structural read in :mod:`litegate.tflite.flatbuffer`:

* file identifier ``TFL3`` and schema version 3;
* every table, vector and index inside the file, and every index LiteRT dereferences in range: op
  codes, buffers, operator inputs/outputs/intermediates, subgraph inputs/outputs, signature
  definitions (subgraph, named inputs and outputs, at least one of each) (the structural reader);
* work linear in the file size: the reader decodes at most the file's size (plus a small constant)
  however often a crafted file shares one vector between tables;
* every buffer's external ``offset + size`` inside the file (the reader);
* every tensor's dimensions >= 0 (``shape_signature`` may use -1), element count × element size
  below :data:`MAX_TENSOR_BYTES`, the sum over all tensors of the model below
  :data:`MAX_MODEL_TENSOR_BYTES`, and a constant tensor's data exactly as long as its shape × dtype
  says.

Nothing here runs native code on the file: :func:`load_model` also gives the signatures, so callers
that only need a model's inputs never open it with LiteRT in their own process.
"""

from __future__ import annotations

from pathlib import Path

from litegate.errors import ModelLoadError
from litegate.tflite.flatbuffer import ModelInfo, read_model

MAX_TENSOR_BYTES = 1 << 34  # 16 GiB: beyond any phone model; shapes claiming more are crafted
MAX_MODEL_TENSOR_BYTES = 1 << 34  # 16 GiB declared by all tensors together (weights + activations + state)
_ELEMENT_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
                  "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "UINT32": 4, "UINT16": 2,
                  "BFLOAT16": 2}


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def verify_bytes(data: bytes, *, source: str = "<bytes>") -> ModelInfo:
    """Raise :class:`ModelLoadError` naming the first problem; return the parsed model when it is sound."""
    if len(data) == 0:
        raise ModelLoadError(f"{source}: empty file (0 bytes), not a TFLite model")
    if len(data) < 8:
        raise ModelLoadError(f"{source}: not a TFLite model ({len(data)} bytes is too short for a flatbuffer)")
    info = read_model(data, source=source)  # identifier, schema version, structural bounds, indices, budget
    buffer_bytes = info.buffer_bytes  # the reader checked external offset + size against the file
    total = 0
    for s, tensors in enumerate(info.subgraph_tensors):
        for tensor in tensors:
            shape, sig = list(tensor.shape), list(tensor.shape_signature)
            where = f"tensor {tensor.index} ({tensor.name!r}) of subgraph {s}"
            if any(d < 0 for d in shape) or any(d < -1 for d in sig):
                raise ModelLoadError(f"{source}: {where} has a negative dimension {shape or sig}")
            elem = _ELEMENT_BYTES.get(tensor.type, 1)
            count = 1
            for d in shape:
                count *= d
            if count * elem > MAX_TENSOR_BYTES:
                raise ModelLoadError(f"{source}: {where} has shape {shape}: {count * elem} bytes of {tensor.type}, "
                                     f"more than any model can hold (overflowing shape)")
            total += count * elem
            if total > MAX_MODEL_TENSOR_BYTES:
                raise ModelLoadError(f"{source}: the tensors declare more than {_gib(MAX_MODEL_TENSOR_BYTES)} in all "
                                     f"(at {where}, shape {shape}: {_gib(total)}), more than any model can hold")
            bi = tensor.buffer
            if bi <= 0 or bi >= len(buffer_bytes):
                continue
            have = buffer_bytes[bi]
            if have and not tensor.sparse and tensor.type in _ELEMENT_BYTES:  # sparse tensors store compressed data
                if have != count * elem:
                    raise ModelLoadError(f"{source}: {where} has shape {shape} of {tensor.type} ({count * elem} "
                                         f"bytes) but its buffer {bi} holds {have} bytes")
    return info


def verify_tflite(path: str | Path) -> bytes:
    """Read and verify a .tflite file; return its bytes.

    Raises:
        ModelLoadError: missing file or any structural or semantic problem (one line, named).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such model file")
    data = p.read_bytes()
    verify_bytes(data, source=str(p))
    return data


def load_model(path: str | Path) -> ModelInfo:
    """Verify that ``path`` is a sound TFLite flatbuffer, then read it into plain records.

    Raises:
        ModelLoadError: the file is missing, not a TFLite model, truncated or corrupt.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such model file")
    return verify_bytes(p.read_bytes(), source=str(p))

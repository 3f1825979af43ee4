"""Verify an untrusted .tflite before any interpreter sees it.

TFLite's Python bindings run only the flatbuffers verifier (structure), which does not check the
uint64 external buffer ``offset``/``size`` fields nor whether a tensor's shape × dtype fits its
buffer; crafted files that pass it have crashed kernels (integer overflow in shape products,
out-of-bounds reads). This module adds those semantic checks, overflow-safe (Python integers),
on top of the bounds-checked structural read in :mod:`litegate.tflite.flatbuffer`:

* file identifier ``TFL3`` and schema version 3;
* every table, vector and index inside the file (the structural reader);
* every buffer's external ``offset + size`` inside the file;
* every tensor's dimensions >= 0 (``shape_signature`` may use -1), element count × element size
  below :data:`MAX_TENSOR_BYTES`, and a constant tensor's data exactly as long as its shape ×
  dtype says.
"""

from __future__ import annotations

from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

from litegate.errors import ModelLoadError
from litegate.tflite.flatbuffer import TYPE_NAMES, ModelInfo, read_model

MAX_TENSOR_BYTES = 1 << 34  # 16 GiB: beyond any phone model; shapes claiming more are crafted
_ELEMENT_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
                  "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "UINT32": 4, "UINT16": 2,
                  "BFLOAT16": 2}


def verify_bytes(data: bytes, *, source: str = "<bytes>") -> None:
    """Raise :class:`ModelLoadError` naming the first problem; return None for a sound model."""
    if len(data) == 0:
        raise ModelLoadError(f"{source}: empty file (0 bytes), not a TFLite model")
    if len(data) < 8:
        raise ModelLoadError(f"{source}: not a TFLite model ({len(data)} bytes is too short for a flatbuffer)")
    read_model(data, source=source)  # identifier, schema version, structural bounds
    size = len(data)
    m = schema.Model.GetRootAs(data, 0)
    n_buffers = m.BuffersLength()
    buffer_bytes: list[int | None] = []
    for j in range(n_buffers):
        b = m.Buffers(j)
        offset, length = int(b.Offset()), int(b.Size())
        if offset > 1 or length > 0:  # external data (files > 2 GB): offset/size into this file
            if offset < 0 or length < 0 or offset + length > size:
                raise ModelLoadError(f"{source}: buffer {j} points at bytes {offset}..{offset + length}, past the end "
                                     f"of the {size}-byte file")
            buffer_bytes.append(length)
        else:
            buffer_bytes.append(int(b.DataLength()))
    for s in range(m.SubgraphsLength()):
        sg = m.Subgraphs(s)
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            sig = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else []
            name = (tensor.Name() or b"").decode("utf-8", "replace")
            where = f"tensor {t} ({name!r}) of subgraph {s}"
            if any(d < 0 for d in shape) or any(d < -1 for d in sig):
                raise ModelLoadError(f"{source}: {where} has a negative dimension {shape or sig}")
            type_name = TYPE_NAMES.get(int(tensor.Type()), "")
            elem = _ELEMENT_BYTES.get(type_name, 1)
            count = 1
            for d in shape:
                count *= d
            if count * elem > MAX_TENSOR_BYTES:
                raise ModelLoadError(f"{source}: {where} has shape {shape}: {count * elem} bytes of {type_name}, "
                                     f"more than any model can hold (overflowing shape)")
            bi = int(tensor.Buffer())
            if bi <= 0 or bi >= len(buffer_bytes):
                continue
            have = buffer_bytes[bi]
            dense = tensor.Sparsity() is None  # sparse tensors store compressed data
            if have and dense and type_name in _ELEMENT_BYTES:
                if have != count * elem:
                    raise ModelLoadError(f"{source}: {where} has shape {shape} of {type_name} ({count * elem} bytes) "
                                         f"but its buffer {bi} holds {have} bytes")


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
    return read_model(verify_tflite(path), source=str(path))

"""Running a .tflite model through LiteRT (``ai_edge_litert``) on a named backend.

Backends that execute here:
* ``xnnpack`` - the builtin kernels with LiteRT's default XNNPACK delegate, ``threads`` threads;
* ``cpu`` - the builtin reference/optimized kernels without any delegate.

Backends that cannot execute on this machine get a ``not run`` reason from :func:`why_not_runnable`.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.errors import DelegateError, ModelLoadError

RUNNABLE = ("xnnpack", "cpu")
KNOWN = ("xnnpack", "cpu", "gpu", "hexagon", "coreml")


def why_not_runnable(backend: str) -> str | None:
    """None if ``backend`` runs on this machine, else the reason it cannot."""
    if backend in RUNNABLE:
        return None
    machine = f"{platform.system()} {platform.machine()}"
    if backend == "hexagon":
        return (f"the Hexagon DSP delegate needs a Qualcomm SoC with libhexagon_interface.so; this is {machine}")
    if backend == "coreml":
        return f"the Core ML delegate runs only on Apple devices (iOS/macOS); this is {machine}"
    if backend == "gpu":
        return "the GPU backend is not available in this version of litegate's runner"
    return f"unknown backend {backend!r}"


def verify_tflite_header(path: str | Path) -> bytes:
    """Read a .tflite file and check that it is a TFLite flatbuffer before any interpreter sees it."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such model file")
    data = p.read_bytes()
    if len(data) < 8:
        raise ModelLoadError(f"{p}: not a TFLite model ({len(data)} bytes is too short for a flatbuffer)")
    if data[4:8] != b"TFL3":
        raise ModelLoadError(f"{p}: not a TFLite model (file identifier {data[4:8]!r}, expected b'TFL3')")
    return data


class Runner:
    """A signature runner over one model, with int8/int16 I/O (de)quantization handled."""

    def __init__(self, path: str | Path, *, backend: str = "xnnpack", threads: int = 1, signature: str | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if backend not in RUNNABLE:
            raise DelegateError(why_not_runnable(backend) or backend)
        content = verify_tflite_header(path)
        resolver = OpResolverType.AUTO if backend == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            sigs = self.interpreter.get_signature_list()
            key = signature or (next(iter(sigs)) if sigs else None)
            if key is None:
                raise ModelLoadError(f"{path}: model has no signatures")
            if key not in sigs:
                raise ModelLoadError(f"{path}: no signature {key!r} (has {', '.join(sigs)})")
            self.signature = key
            self.runner = self.interpreter.get_signature_runner(key)
            self.inputs = self.runner.get_input_details()
            self.outputs = self.runner.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: LiteRT cannot load the model: {exc}") from None

    def input_names(self) -> list[str]:
        return list(self.inputs)

    def prepare(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cast/quantize a float or integer feed to each input's dtype."""
        out = {}
        for name, det in self.inputs.items():
            if name not in feed:
                raise ModelLoadError(f"model input {name!r} is not provided (have {', '.join(feed)})")
            x = np.asarray(feed[name])
            dtype = det["dtype"]
            scale, zp = det.get("quantization", (0.0, 0))
            if np.issubdtype(dtype, np.integer) and scale and not np.issubdtype(x.dtype, np.integer):
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / scale + zp), info.min, info.max)
            out[name] = np.ascontiguousarray(x.astype(dtype).reshape(det["shape"]))
        return out

    def invoke(self, prepared: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return self.runner(**prepared)

    def dequantize(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, value in raw.items():
            scale, zp = self.outputs[name].get("quantization", (0.0, 0))
            v = np.asarray(value)
            out[name] = (v.astype(np.float32) - zp) * scale if scale and np.issubdtype(v.dtype, np.integer) else v
        return out

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.dequantize(self.invoke(self.prepare(feed)))

    def run_batch(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run N samples one at a time (batch-1 models) and stack each output."""
        n = len(next(iter(feeds.values())))
        rows: dict[str, list[np.ndarray]] = {}
        for i in range(n):
            outs = self({k: v[i : i + 1] for k, v in feeds.items()})
            for k, v in outs.items():
                rows.setdefault(k, []).append(np.asarray(v)[0])
        return {k: np.stack(v) for k, v in rows.items()}

"""Running a .tflite model through LiteRT (``ai_edge_litert``) on a named backend.

Backends that execute here:
* ``xnnpack`` - the builtin kernels with LiteRT's default XNNPACK delegate, ``threads`` threads;
* ``cpu`` - the builtin reference/optimized kernels without any delegate;
* ``external:PATH.so[?key=value&key2=value2]`` - any TFLite delegate library (one that exports
  ``tflite_plugin_create_delegate``, e.g. ``libedgetpu.so.1`` or a vendor's external delegate),
  loaded with ``ai_edge_litert.interpreter.load_delegate(PATH, {key: value, ...})`` and given to the
  interpreter as ``experimental_delegates=[...]``. The query string is the delegate's options,
  percent-decoded (``external:/opt/vx/libvx_delegate.so?logging_level=1``). A PATH containing ``/``
  must exist (relative paths are taken from the working directory; in ``release.toml`` from the
  config's folder); a bare file name is left to the dynamic loader's search path. Nodes the
  delegate does not claim run on the builtin kernels without LiteRT's default XNNPACK delegate, so
  the delegate sees the whole graph.

``gpu`` runs LiteRT's GPU delegate (ML Drift over WebGPU/Vulkan) through ``CompiledModel`` in a child
process (:mod:`litegate.backends.gpu`); on a machine without a GPU, Mesa's lavapipe (``make gpu-sim``)
gives it a software Vulkan device whose coverage and fp16 numerics are real and whose latency is not.

``adb[:SERIAL][?options]`` backends run ``benchmark_model`` on an Android device instead of here
(:mod:`litegate.backends.adb`). Backends that cannot execute get a ``not run`` reason from
:func:`why_not_runnable`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.backends.spec import (
    RUNNABLE,
    external_why_not,
    is_adb_backend,
    is_aihub_backend,
    is_arm_backend,
    is_external_backend,
    parse_external,
)
from litegate.errors import DelegateError, ModelLoadError
from litegate.tasks import feed_for
from litegate.tflite.verify import load_model, verify_tflite


def load_external_delegate(backend: str) -> Any:
    """Load the delegate of an ``external:`` backend.

    Raises:
        DelegateError: the library is missing, is not a TFLite delegate, or refused its options.
    """
    from ai_edge_litert.interpreter import load_delegate  # LiteRT runtime: only where a model runs

    reason = external_why_not(backend)
    if reason:
        raise DelegateError(reason)
    spec = parse_external(backend)
    try:
        handle = ctypes.CDLL(spec.library)
    except OSError as exc:  # dlopen failed: not found on the loader's path, wrong architecture, missing dependency
        raise DelegateError(f"cannot load delegate {spec.library}: {exc}") from None
    for symbol in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate"):
        if not hasattr(handle, symbol):  # checked first: LiteRT's Delegate.__del__ trips over a library without them
            raise DelegateError(f"cannot load delegate {spec.library}: it is not a TFLite external delegate "
                                f"(no {symbol} symbol)")
    try:
        return load_delegate(spec.library, dict(spec.options))
    except (ValueError, RuntimeError, OSError) as exc:  # ValueError: the delegate refused its options (NULL)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DelegateError(f"cannot load delegate {spec.library}: {detail}") from None


def in_process_refusal(backend: str) -> str:
    """Why ``backend`` cannot be the in-process runner's backend (it runs elsewhere, or not here)."""
    if is_adb_backend(backend):
        return (f"{backend}: adb backends run benchmark_model on the device and cannot run "
                "in-process (use them in bench.backends, not for evaluation)")
    if is_aihub_backend(backend):
        return (f"{backend}: AI Hub backends run on a phone through Qualcomm AI Hub and cannot run in-process "
                "(use them in bench.backends; litegate.backends.aihub.run_outputs runs inputs on the phone)")
    if is_arm_backend(backend):
        return (f"{backend}: runs aarch64 LiteRT under QEMU in its own process (litegate.backends.arm.run_arm; use "
                "it in bench.backends: its accuracy rows and instruction counts come from there)")
    if backend == "gpu":
        return ("gpu: the GPU delegate runs through LiteRT's CompiledModel in its own process "
                "(litegate.backends.gpu.run_gpu; use it in bench.backends, not as the in-process evaluation backend)")
    return (f"{backend}: not an in-process LiteRT backend (in-process: {', '.join(RUNNABLE)} or external:PATH.so); "
            "`litegate doctor` says where it runs")


class Runner:
    """A signature runner over one model, with int8/int16 I/O (de)quantization handled."""

    def __init__(self, path: str | Path, *, backend: str = "xnnpack", threads: int = 1, signature: str | None = None):
        from ai_edge_litert.interpreter import (  # LiteRT runtime: only where a model runs
            Interpreter,
            OpResolverType,
        )

        if backend not in RUNNABLE and not is_external_backend(backend):
            raise DelegateError(in_process_refusal(backend))
        content = verify_tflite(path)
        delegates = [load_external_delegate(backend)] if is_external_backend(backend) else []
        resolver = OpResolverType.AUTO if backend == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads,
                                           experimental_op_resolver_type=resolver,
                                           experimental_delegates=delegates or None)
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
        feed = feed_for(list(self.inputs), dict(feed))
        out = {}
        for name, det in self.inputs.items():
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


def signatures_of(path: str | Path) -> dict[str, Any]:
    """Signature name -> input and output names of a .tflite (what an app calls), {} if it cannot be read.

    Read from the verified flatbuffer in LiteRT's order (names sorted): nothing native opens the file here.
    """
    try:
        model = load_model(path)
    except ModelLoadError:
        return {}
    return {s.key: {"inputs": [n for n, _ in s.inputs], "outputs": [n for n, _ in s.outputs]}
            for s in model.signatures}

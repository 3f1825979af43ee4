"""Per-operator time of a .tflite on LiteRT's CPU path (XNNPACK or the builtin kernels), from Python.

What ai_edge_litert 2.3 offers and what it does not:

* its Python API has no profiler. ``Interpreter`` accepts ``experimental_force_delegate_node_profiling``
  but its wrapper (``InterpreterWrapper``) has no call that attaches a ``tflite::Profiler`` or reads
  events; ``CompiledModel``'s ``Options`` (CPU, GPU, Qualcomm, OpenVINO) carry no profiling switch;
  ``profiling_info_pb2`` and ``model_runtime_info_pb2`` are generated protobuf classes nothing in
  the package fills;
* the ``libLiteRt.so`` the package ships exports LiteRT's C API, profiler included:
  ``LiteRtCompiledModelGetProfiler``, ``LiteRtStartProfiler`` / ``LiteRtStopProfiler``,
  ``LiteRtGetNumProfilerEvents`` / ``LiteRtGetProfilerEvents``, ``LiteRtGetProfileSummary``. The
  profiler exists when the compiled model was created with the runtime option
  ``enable_profiling = true`` (opaque options ``"runtime_options_string"``, a TOML payload); the
  CPU accelerator's options are the opaque ``"xnnpack"`` TOML (``num_threads``, ``kernel_mode``).

This module drives that C API through ``ctypes``: one compiled model on the CPU accelerator,
``threads`` threads, XNNPACK (``backend="xnnpack"``) or the builtin kernels (``backend="cpu"``,
``kernel_mode = "builtin"``), runs on real inputs, and collects the operator events. With XNNPACK,
the delegate reports each of its own operators (``Delegate/Fully Connected (NC, F32) GEMM`` ...,
indexed in XNNPACK's runtime, not in the .tflite); the ops it does not take are TFLite nodes
(``CAST``, ``GATHER`` ..., indexed by node). Times are the runtime's own microsecond timestamps.

Struct layouts follow LiteRT's ``litert/c`` headers of the 2.x line (``LiteRtRankedTensorType``
is 72 bytes, ``ProfiledEventData`` carries three ``size_t`` memory counters per snapshot); the
profile is checked against the ``Invoke`` event of the same runs, so a layout that did not match
would show as an op sum far from the invoke time.
"""

from __future__ import annotations

import ctypes as C
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litegate.errors import DelegateError, LitegateError
from litegate.isolation import run_isolated
from litegate.tasks import feed_for
from litegate.types import Status, VariantResult

OPERATOR_INVOKE_EVENT = 1 << 1
DELEGATE_OPERATOR_INVOKE_EVENT = 1 << 2
DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT = 1 << 3
DEFAULT_EVENT = 1
_OP_EVENTS = OPERATOR_INVOKE_EVENT | DELEGATE_OPERATOR_INVOKE_EVENT | DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT
_ELEMENT_TYPES: dict[int, Any] = {1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
                                  9: np.int8, 10: np.float16, 11: np.float64}
_HW_CPU = 1
_MAX_RANK = 8


class _Layout(C.Structure):
    _fields_ = [("rank", C.c_uint, 7), ("has_strides", C.c_uint, 1), ("dimensions", C.c_int32 * _MAX_RANK),
                ("strides", C.c_uint32 * _MAX_RANK)]


class _RankedTensorType(C.Structure):
    _fields_ = [("element_type", C.c_int), ("layout", _Layout)]


class _MemoryUsage(C.Structure):
    _fields_ = [("total_allocated_bytes", C.c_size_t), ("in_use_allocated_bytes", C.c_size_t),
                ("private_footprint_bytes", C.c_size_t)]


class _Event(C.Structure):
    _fields_ = [("tag", C.c_char_p), ("event_type", C.c_int), ("start_timestamp_us", C.c_uint64),
                ("elapsed_time_us", C.c_uint64), ("begin_mem_usage", _MemoryUsage), ("end_mem_usage", _MemoryUsage),
                ("event_metadata1", C.c_uint64), ("event_metadata2", C.c_uint64), ("event_source", C.c_int)]


_DESTRUCTOR = C.CFUNCTYPE(None, C.c_void_p)
_NO_DESTRUCTOR = _DESTRUCTOR(lambda _p: None)  # payloads are Python-owned buffers kept alive by the session


def litert_library() -> Path:
    """The ``libLiteRt.so`` shipped in the installed ``ai_edge_litert`` package."""
    import ai_edge_litert  # LiteRT runtime: only where a model runs

    return Path(ai_edge_litert.__file__).parent / "libLiteRt.so"


def aggregate(events: Iterable[tuple[str, int, int, float]], runs: int) -> list[tuple[str, int, float, float]]:
    """Sum operator events per (op name, op index), in first-seen (run) order.

    Args:
        events: ``(name, event type, index, elapsed ms)`` per event; non-operator events are ignored,
            and so is a delegate kernel's own node event when the delegate reports its operators.
        runs: how many inferences the events cover (only checked to be positive).

    Returns:
        ``[(op name, op index, total ms over all runs, % of the summed op time)]``; a delegate's
        operators are named ``Delegate/<name>`` (their index is the delegate's, not a .tflite node's).
    """
    if runs <= 0:
        raise ValueError("runs must be positive")
    evs = [e for e in events if e[1] & _OP_EVENTS]
    delegate_ops = any(e[1] & (DELEGATE_OPERATOR_INVOKE_EVENT | DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT) for e in evs)
    totals: dict[tuple[str, int], float] = {}
    for name, kind, index, ms in evs:
        if delegate_ops and kind & OPERATOR_INVOKE_EVENT and "delegate" in name.lower():
            continue  # the delegate node's own span; its operators are reported one by one
        if kind & (DELEGATE_OPERATOR_INVOKE_EVENT | DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT):
            name = f"Delegate/{name}"  # indexed in the delegate's own runtime, not in the .tflite
        key = (name, index)
        totals[key] = totals.get(key, 0.0) + ms
    whole = sum(totals.values())
    return [(name, index, ms, (ms / whole * 100.0) if whole > 0 else 0.0) for (name, index), ms in totals.items()]


def by_type(ops: Sequence[tuple[str, int, float, float]]) -> list[tuple[str, int, float, float]]:
    """``[(op name, count, total ms, %)]`` over ops of the same name, slowest first."""
    acc: dict[str, list[float]] = {}
    for name, _idx, ms, pct in ops:
        a = acc.setdefault(name, [0, 0.0, 0.0])
        a[0] += 1
        a[1] += ms
        a[2] += pct
    return sorted(((n, int(a[0]), a[1], a[2]) for n, a in acc.items()), key=lambda r: -r[2])


class _Session:
    """One profiled compiled model over the LiteRT C API (everything it allocates is released by :meth:`close`)."""

    def __init__(self, path: Path, *, threads: int, backend: str) -> None:
        if backend not in ("xnnpack", "cpu"):
            raise DelegateError(f"op profiling runs on LiteRT's CPU accelerator: backend 'xnnpack' or 'cpu', "
                                f"not {backend!r}")
        self.lib = C.CDLL(str(litert_library()))
        self._declare()
        self._keep: list[Any] = []
        self.env, self.model, self.options, self.compiled = C.c_void_p(), C.c_void_p(), C.c_void_p(), C.c_void_p()
        self.buffers: list[C.c_void_p] = []
        self._check(self.lib.LiteRtCreateEnvironment(0, None, C.byref(self.env)), "LiteRtCreateEnvironment")
        self._check(self.lib.LiteRtCreateModelFromFile(self.env, str(path).encode(), C.byref(self.model)),
                    f"LiteRtCreateModelFromFile({path})")
        self._check(self.lib.LiteRtCreateOptions(C.byref(self.options)), "LiteRtCreateOptions")
        self._check(self.lib.LiteRtSetOptionsHardwareAccelerators(self.options, _HW_CPU), "hardware accelerators")
        self._opaque("runtime_options_string", "enable_profiling = true\n")
        cpu = f"num_threads = {int(threads)}\n" + ('kernel_mode = "builtin"\n' if backend == "cpu" else "")
        self._opaque("xnnpack", cpu)
        self._check(self.lib.LiteRtCreateCompiledModel(self.env, self.model, self.options, C.byref(self.compiled)),
                    "LiteRtCreateCompiledModel")
        self.profiler = C.c_void_p()
        self._check(self.lib.LiteRtCompiledModelGetProfiler(self.compiled, C.byref(self.profiler)),
                    "LiteRtCompiledModelGetProfiler")
        if not self.profiler.value:
            raise DelegateError("LiteRT returned no profiler although enable_profiling was set")
        self.inputs = self._signature_tensors(inputs=True)
        self.outputs = self._signature_tensors(inputs=False)
        self.in_arrays = [self._host_buffer(t) for t in self.inputs]
        self.out_arrays = [self._host_buffer(t) for t in self.outputs]
        self._in = (C.c_void_p * len(self.inputs))(*self.buffers[: len(self.inputs)])
        self._out = (C.c_void_p * len(self.outputs))(*self.buffers[len(self.inputs):])

    def _declare(self) -> None:
        vp, sz, ip = C.c_void_p, C.c_size_t, C.c_int
        sig = {
            "LiteRtCreateEnvironment": [ip, vp, vp], "LiteRtCreateModelFromFile": [vp, C.c_char_p, vp],
            "LiteRtCreateOptions": [vp], "LiteRtSetOptionsHardwareAccelerators": [vp, ip],
            "LiteRtCreateOpaqueOptions": [C.c_char_p, vp, _DESTRUCTOR, vp], "LiteRtAddOpaqueOptions": [vp, vp],
            "LiteRtCreateCompiledModel": [vp, vp, vp, vp], "LiteRtCompiledModelGetProfiler": [vp, vp],
            "LiteRtGetModelSignature": [vp, sz, vp], "LiteRtGetNumSignatureInputs": [vp, vp],
            "LiteRtGetNumSignatureOutputs": [vp, vp], "LiteRtGetSignatureInputName": [vp, sz, vp],
            "LiteRtGetSignatureOutputName": [vp, sz, vp], "LiteRtGetSignatureInputTensorByIndex": [vp, sz, vp],
            "LiteRtGetSignatureOutputTensorByIndex": [vp, sz, vp], "LiteRtGetRankedTensorType": [vp, vp],
            "LiteRtCreateTensorBufferFromHostMemory": [vp, vp, sz, vp, vp],
            "LiteRtRunCompiledModel": [vp, sz, sz, vp, sz, vp], "LiteRtStartProfiler": [vp],
            "LiteRtStopProfiler": [vp], "LiteRtResetProfiler": [vp], "LiteRtGetNumProfilerEvents": [vp, vp],
            "LiteRtGetProfilerEvents": [vp, ip, vp],
        }
        for name, args in sig.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, C.c_int
        for name in ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyOptions",
                     "LiteRtDestroyModel", "LiteRtDestroyEnvironment"):
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = [vp], None

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise DelegateError(f"LiteRT C API: {what} failed with status {status}")

    def _opaque(self, identifier: str, toml: str) -> None:
        payload = C.create_string_buffer(toml.encode())
        self._keep.append(payload)
        opaque = C.c_void_p()
        self._check(self.lib.LiteRtCreateOpaqueOptions(identifier.encode(), C.cast(payload, C.c_void_p), _NO_DESTRUCTOR,
                                                       C.byref(opaque)), f"opaque options {identifier!r}")
        self._check(self.lib.LiteRtAddOpaqueOptions(self.options, opaque), f"add opaque options {identifier!r}")

    def _signature_tensors(self, *, inputs: bool) -> list[tuple[str, _RankedTensorType]]:
        sig = C.c_void_p()
        self._check(self.lib.LiteRtGetModelSignature(self.model, 0, C.byref(sig)), "LiteRtGetModelSignature")
        n = C.c_size_t()
        kind = "Input" if inputs else "Output"
        self._check(getattr(self.lib, f"LiteRtGetNumSignature{kind}s")(sig, C.byref(n)), f"signature {kind}s")
        out = []
        for i in range(n.value):
            name, tensor, rtt = C.c_char_p(), C.c_void_p(), _RankedTensorType()
            self._check(getattr(self.lib, f"LiteRtGetSignature{kind}Name")(sig, i, C.byref(name)), f"{kind} name")
            self._check(getattr(self.lib, f"LiteRtGetSignature{kind}TensorByIndex")(sig, i, C.byref(tensor)),
                        f"{kind} tensor")
            self._check(self.lib.LiteRtGetRankedTensorType(tensor, C.byref(rtt)), f"{kind} tensor type")
            if rtt.element_type not in _ELEMENT_TYPES or any(d < 0 for d in rtt.layout.dimensions[: rtt.layout.rank]):
                raise DelegateError(f"op profiling needs static shapes and plain element types; "
                                    f"{kind.lower()} {name.value!r} has type {rtt.element_type}, "
                                    f"shape {list(rtt.layout.dimensions[: rtt.layout.rank])}")
            out.append(((name.value or b"").decode(), rtt))
        return out

    def _host_buffer(self, tensor: tuple[str, _RankedTensorType]) -> np.ndarray:
        rtt = tensor[1]
        shape = tuple(int(d) for d in rtt.layout.dimensions[: rtt.layout.rank])
        dtype = np.dtype(_ELEMENT_TYPES[rtt.element_type])
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        raw = np.zeros(nbytes + 128, np.uint8)  # LiteRT wants host memory 64-byte aligned
        off = (-raw.ctypes.data) % 64
        arr = raw[off: off + nbytes].view(dtype)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)
        self._keep.append(raw)
        buf = C.c_void_p()
        self._check(self.lib.LiteRtCreateTensorBufferFromHostMemory(C.byref(rtt), arr.ctypes.data, nbytes, None,
                                                                    C.byref(buf)), f"tensor buffer {tensor[0]!r}")
        self.buffers.append(buf)
        return arr

    def set_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        mapped = feed_for([n for n, _ in self.inputs], dict(feed))
        for (name, _), arr in zip(self.inputs, self.in_arrays, strict=True):
            arr[...] = np.asarray(mapped[name]).reshape(arr.shape).astype(arr.dtype)

    def run(self) -> None:
        self._check(self.lib.LiteRtRunCompiledModel(self.compiled, 0, len(self.inputs), self._in, len(self.outputs),
                                                    self._out), "LiteRtRunCompiledModel")

    def events(self) -> list[tuple[str, int, int, float]]:
        n = C.c_int()
        self._check(self.lib.LiteRtGetNumProfilerEvents(self.profiler, C.byref(n)), "LiteRtGetNumProfilerEvents")
        if n.value <= 0:
            return []
        buf = (_Event * n.value)()
        self._check(self.lib.LiteRtGetProfilerEvents(self.profiler, n.value, buf), "LiteRtGetProfilerEvents")
        return [((e.tag or b"?").decode("utf-8", "replace"), int(e.event_type), int(e.event_metadata1),
                 e.elapsed_time_us / 1e3) for e in buf]

    def close(self) -> None:
        for buf in self.buffers:
            self.lib.LiteRtDestroyTensorBuffer(buf)
        self.buffers = []
        for handle, fn in ((self.compiled, "LiteRtDestroyCompiledModel"), (self.options, "LiteRtDestroyOptions"),
                           (self.model, "LiteRtDestroyModel"), (self.env, "LiteRtDestroyEnvironment")):
            if handle.value:
                getattr(self.lib, fn)(handle)
                handle.value = None


def op_profile(path: str | Path, *, threads: int = 1, backend: str = "xnnpack", runs: int = 20, warmup: int = 5,
               inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Profile ``path`` operator by operator, in this process (see :func:`run_profile` for the isolated call).

    Args:
        path: a .tflite with static input shapes.
        threads: CPU threads.
        backend: ``xnnpack`` (LiteRT's default CPU path) or ``cpu`` (builtin kernels, no XNNPACK).
        runs: profiled inferences (after ``warmup`` unprofiled ones).
        inputs: ``[N, ...]`` arrays by role (``input_ids`` ...); runs cycle through the N rows.
            Without inputs, zeros (token ids) and ones (masks) are used.

    Returns:
        ``ops``: ``[(op name, op index, total ms, % of time)]`` over the ``runs`` runs, in run order;
        ``op_ms_per_run`` (their sum / runs), ``invoke_ms_per_run`` (the runtime's own ``Invoke``
        span), ``wall_ms_per_run`` (Python-side, profiled runs), ``by_type``, ``outputs`` (the
        last run's outputs), and the settings.

    Raises:
        DelegateError: the library, the model or a C API call failed.
    """
    sess = _Session(Path(path), threads=threads, backend=backend)
    try:
        if inputs:
            n = len(next(iter(inputs.values())))
            feeds = [{k: np.asarray(v)[i: i + 1] for k, v in inputs.items()} for i in range(n)]
        else:
            feeds = [{name: (np.ones if "mask" in name else np.zeros)(a.shape, a.dtype)
                      for (name, _), a in zip(sess.inputs, sess.in_arrays, strict=True)}]
        for i in range(warmup):
            sess.set_inputs(feeds[i % len(feeds)])
            sess.run()
        lib = sess.lib
        sess._check(lib.LiteRtResetProfiler(sess.profiler), "LiteRtResetProfiler")
        sess._check(lib.LiteRtStartProfiler(sess.profiler), "LiteRtStartProfiler")
        wall = 0.0
        for i in range(runs):
            sess.set_inputs(feeds[i % len(feeds)])
            t = time.perf_counter()
            sess.run()
            wall += time.perf_counter() - t
        sess._check(lib.LiteRtStopProfiler(sess.profiler), "LiteRtStopProfiler")
        events = sess.events()
        outputs = {name: arr.copy() for (name, _), arr in zip(sess.outputs, sess.out_arrays, strict=True)}
    finally:
        sess.close()
    ops = aggregate(events, runs)
    invoke = sum(ms for name, kind, _i, ms in events if kind == DEFAULT_EVENT and name == "Invoke")
    return {"ops": ops, "runs": runs, "threads": threads, "backend": backend,
            "op_ms_per_run": sum(o[2] for o in ops) / runs, "invoke_ms_per_run": invoke / runs,
            "wall_ms_per_run": wall * 1e3 / runs, "by_type": by_type(ops), "outputs": outputs,
            "method": "LiteRT C API profiler (runtime option enable_profiling) of ai_edge_litert's libLiteRt.so, "
                      "through ctypes"}


def profile_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child entry for :func:`run_profile`: payload ``path``, ``threads``, ``backend``, ``runs``, ``warmup``, ``inputs_npz``."""
    inputs = None
    if payload.get("inputs_npz"):
        with np.load(payload["inputs_npz"]) as data:
            inputs = {k: data[k] for k in data.files}
    res = op_profile(payload["path"], threads=int(payload.get("threads", 1)), backend=str(payload.get("backend", "xnnpack")),
                     runs=int(payload.get("runs", 20)), warmup=int(payload.get("warmup", 5)), inputs=inputs)
    res["ops"] = [list(o) for o in res["ops"]]
    res["by_type"] = [list(o) for o in res["by_type"]]
    res["outputs"] = {k: v.astype(np.float64).tolist() for k, v in res["outputs"].items()}
    return res


def run_profile(path: str | Path, *, threads: int = 1, backend: str = "xnnpack", runs: int = 20, warmup: int = 5,
                inputs_npz: str | Path | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """:func:`op_profile` in an isolated child process (a crash in the C API becomes an ``IsolationError``).

    ``ops`` and ``by_type`` come back as lists of ``[name, index or count, total ms, %]``.
    """
    return run_isolated("litegate.benchmarks.profile:profile_job",
                        {"path": str(path), "threads": threads, "backend": backend, "runs": runs, "warmup": warmup,
                         "inputs_npz": str(inputs_npz) if inputs_npz else None}, timeout_s=timeout_s)


def profile_slowest(variants: Sequence[VariantResult], *, inputs_npz: Path | None, runs: int, timeout_s: float,
                    generator: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Where the time goes in the slowest variant (median latency at its fewest threads): LiteRT's op profiler."""
    if runs == 0:
        return {"not_run": "bench.profile_runs = 0"}
    if generator:
        return {"not_run": "the per-op profiler runs a model's default signature; generators are benchmarked per token"}
    cpu = [b for v in variants for b in v.bench if b.status is Status.OK and b.latency and b.backend in ("xnnpack", "cpu")]
    if not cpu or inputs_npz is None:
        return {"not_run": "no CPU latency was measured"}
    fewest = min(b.threads for b in cpu)
    slowest = max((b for b in cpu if b.threads == fewest), key=lambda b: b.latency.p50 if b.latency else 0.0)
    v = next(x for x in variants if x.name == slowest.variant)
    assert v.artifact is not None
    say(f"bench: per-op profile of {v.name} (the slowest, {slowest.backend} x{fewest})")

    try:
        prof = run_profile(v.artifact.path, threads=fewest, backend=slowest.backend, runs=runs,
                           inputs_npz=inputs_npz, timeout_s=timeout_s)
    except LitegateError as exc:
        return {"variant": v.name, "not_run": exc.message}
    return {"variant": v.name, "why": f"the slowest variant by median latency at {fewest} thread(s)",
            "backend": slowest.backend, "threads": fewest, "runs": prof["runs"], "method": prof["method"],
            "op_ms_per_run": round(prof["op_ms_per_run"], 4), "wall_ms_per_run": round(prof["wall_ms_per_run"], 4),
            "by_type": [{"op": n, "count": c, "ms_per_run": round(ms / prof["runs"], 4), "pct": round(pct, 2)}
                        for n, c, ms, pct in prof["by_type"]],
            "top_ops": [{"op": n, "index": i, "ms_per_run": round(ms / prof["runs"], 4), "pct": round(pct, 2)}
                        for n, i, ms, pct in sorted(prof["ops"], key=lambda r: -r[2])[:15]]}

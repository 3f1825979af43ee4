"""The machine's achievable fp32 peak, measured in the same run: two sgemm probes, the best counts.

* ``numpy``: a square float32 matrix multiply through numpy's BLAS, in a child process with the
  BLAS thread count pinned. OpenBLAS picks its kernel by CPU model and falls back to an older one
  on CPUs it does not know (``Haswell``, AVX2, on AMD Zen 5), so on new CPUs it is not the ceiling.
* ``xnnpack``: one FULLY_CONNECTED (512 x 1024 by 1024 x 1024, fp32, constant weights) run by
  LiteRT's XNNPACK delegate at the same thread count: the GEMM kernels a TFLite model gets, at
  the best shape for them. The probe model is built once with TensorFlow and kept under
  ``cache_dir`` (when given).

Variant efficiency is reported against the better of the two (and against the ISA's theoretical
FMA peak at the nominal clock, which turbo clocks can exceed).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import atomic_write_bytes
from litegate.errors import LitegateError
from litegate.isolation import run_isolated
from litegate.machine import cpu_flags
from litegate.types import Status, VariantResult


def sgemm_job(payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(payload.get("seconds", 0.5))
    rng = np.random.default_rng(0)
    best = 0.0
    for n in (1024, int(payload.get("n", 2048))):  # the best of two sizes: BLAS blocking favours one or the other
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            a @ b
            best = max(best, 2.0 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": best}


PROBE_SHAPE = (512, 1024, 1024)  # M x K by K x N


def probe_model_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: write the XNNPACK probe model, ``x[M, K] @ W[K, N]`` with constant W (one FULLY_CONNECTED)."""
    import tensorflow as tf  # TensorFlow: build child only

    m, k, n = PROBE_SHAPE
    w = tf.constant(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec([m, k], tf.float32, name="x")])
    def gemm(x: Any) -> Any:
        return {"y": tf.matmul(x, w)}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([gemm.get_concrete_function()], gemm)
    atomic_write_bytes(payload["out"], bytes(conv.convert()))
    return {"bytes": os.path.getsize(payload["out"])}


def xnnpack_gemm_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: best GFLOP/s of the probe model on XNNPACK with ``threads`` threads over ~``seconds``."""
    invoke, _ = probe_cell(payload["path"], int(payload["threads"]))
    for _ in range(3):
        invoke(None)
    gflop, best = probe_gflop(), 0.0
    t_end = time.perf_counter() + float(payload.get("seconds", 0.5))
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        invoke(None)
        best = max(best, gflop / (time.perf_counter() - t))
    return {"gflops": best}


def probe_model(cache_dir: Path) -> Path:
    """The XNNPACK probe model, ``cache_dir/probe/fc-MxKxN.tflite``, built once (in a child, with TensorFlow)."""
    m, k, n = PROBE_SHAPE
    where = Path(cache_dir) / "probe"
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"fc-{m}x{k}x{n}.tflite"
    if not path.is_file():
        run_isolated("litegate.benchmarks.peak:probe_model_job", {"out": str(path)}, timeout_s=300)
    return path


def probe_gflop() -> float:
    """GFLOP per invoke of the probe model (2 x M x K x N)."""
    m, k, n = PROBE_SHAPE
    return 2.0 * m * k * n / 1e9


def probe_cell(path: str | Path, threads: int) -> tuple[Callable[[Any], Any], list[Any]]:
    """The probe GEMM as a ``(run, feeds)`` cell for interleaved timing beside the models it is the peak of.

    Timed in the same blocks as a model, load from other jobs and clock changes hit both alike, so the
    model's share of the probe does not drift with the moment each was measured.
    """
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: only where a model runs

    m, k, _ = PROBE_SHAPE
    interp = Interpreter(model_path=str(path), num_threads=int(threads))  # XNNPACK by default
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"],
                      np.random.default_rng(1).standard_normal((m, k), dtype=np.float32))
    invoke = interp._interpreter.Invoke  # noqa: SLF001 - the native call, without Python-side checks

    def run(_feed: Any) -> None:
        invoke()

    run.interpreter = interp  # type: ignore[attr-defined]  # keeps the interpreter alive with the cell
    return run, [None]


def _xnnpack_probe(threads: list[int], cache_dir: Path | None) -> tuple[dict[str, float], str | None]:
    with tempfile.TemporaryDirectory(prefix="litegate-probe-") as tmp:
        try:
            path = probe_model(Path(cache_dir) if cache_dir else Path(tmp))
            out = {}
            for t in sorted(set(threads)):
                out[str(t)] = round(float(run_isolated("litegate.benchmarks.peak:xnnpack_gemm_job",
                                                       {"path": str(path), "threads": t}, timeout_s=120)["gflops"]), 2)
            return out, None
        except LitegateError as exc:
            return {}, exc.message


def measure_peak(threads: list[int], *, n: int = 2048, cache_dir: Path | None = None) -> dict[str, Any]:
    """{"gflops": {threads: the better probe's GFLOP/s}, "probes": both, "method": ...}.

    A failed probe leaves its entries out (and says why under ``probes``).
    """
    numpy_probe: dict[str, float] = {}
    for t in sorted(set(threads)):
        env = {k: str(t) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        try:
            numpy_probe[str(t)] = round(float(run_isolated("litegate.benchmarks.peak:sgemm_job", {"n": n},
                                                           timeout_s=120, env=env)["gflops"]), 2)
        except LitegateError:
            continue
    xnn, why = _xnnpack_probe(threads, cache_dir)
    best = {t: max(v for v in (numpy_probe.get(t), xnn.get(t)) if v is not None)
            for t in {*numpy_probe, *xnn}}
    m, k, nn = PROBE_SHAPE
    fpc, mhz = theoretical_flops_per_cycle(), cpu_mhz()
    theory = {str(t): round(fpc * mhz * 1e-3 * t, 1) for t in sorted(set(threads))} if fpc and mhz else {}
    probes: dict[str, Any] = {"numpy": numpy_probe, "xnnpack": xnn if not why else {"not_run": why}}
    return {"gflops": dict(sorted(best.items())), "probes": probes,
            "method": (f"the better of two sgemm probes per thread count: numpy sgemm 1024 and {n} float32 (BLAS "
                       f"threads pinned) and one XNNPACK FULLY_CONNECTED {m}x{k} by {k}x{nn} fp32; best of ~0.5 s each"),
            "isa_fma_flops_per_cycle_per_core": fpc, "cpu_mhz": mhz, "theoretical_gflops": theory}


def cpu_mhz() -> float | None:
    """The nominal clock from /proc/cpuinfo (None where unknown; turbo clocks can be higher)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def theoretical_flops_per_cycle() -> int | None:
    """fp32 FLOPs per cycle per core from the ISA: FMA units x vector lanes x 2.

    Intel cores with AVX-512 and AMD Zen 5 (family 0x1A) have two full-width 512-bit FMA pipes
    (64); Zen 4 (family 0x19) executes AVX-512 as two 256-bit halves, and AVX2 cores have two
    256-bit FMA units (32).
    """
    flags = cpu_flags()
    info: dict[str, str] = {}
    try:
        for ln in open("/proc/cpuinfo"):
            if ":" in ln:
                k, v = ln.split(":", 1)
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    if "avx512f" in flags and (vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and family >= 0x1A)):
        return 2 * 16 * 2
    if "fma" in flags and ("avx2" in flags or "avx512f" in flags):
        return 2 * 8 * 2
    return None


def with_efficiency(v: VariantResult, peak: Mapping[str, Any]) -> VariantResult:
    """Achieved GFLOP/s per measured cell (2 × MACs / p50) and its share of the measured sgemm peak."""
    macs = int(v.graph.get("macs") or 0)
    if not macs:
        return v
    cells = []
    for b in v.bench:
        if b.status is Status.OK and b.latency is not None and not b.protocol.get("latency_emulated"):
            gflops = 2.0 * macs / (b.latency.p50 * 1e-3) / 1e9
            eff = {"gflops": round(gflops, 2)}
            ref = peak.get("gflops", {}).get(str(b.threads))
            if ref:
                eff["pct_of_sgemm_peak"] = round(100.0 * gflops / ref, 1)
            theory = peak.get("theoretical_gflops", {}).get(str(b.threads))
            if theory:
                eff["pct_of_isa_peak"] = round(100.0 * gflops / theory, 1)
            b = dataclasses.replace(b, protocol={**b.protocol, "efficiency": eff})
        cells.append(b)
    return dataclasses.replace(v, bench=tuple(cells))

"""The machine's achievable fp32 peak, measured in the same run: an sgemm probe.

A square float32 matrix multiply through numpy's BLAS, in a child process with the BLAS thread
count pinned, is the best dense fp32 throughput this machine reaches from Python; variant
efficiency is reported against it (and against the ISA's theoretical FMA peak when the CPU clock
is known).
"""

from __future__ import annotations

import time
from typing import Any

from litegate.errors import LitegateError
from litegate.isolation import run_isolated
from litegate.machine import cpu_flags


def sgemm_job(payload: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

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


def measure_peak(threads: list[int], *, n: int = 2048) -> dict[str, Any]:
    """{"gflops": {threads: best GFLOP/s}, "method": ...}; a failed probe leaves that entry out."""
    out: dict[str, float] = {}
    for t in sorted(set(threads)):
        env = {k: str(t) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        try:
            out[str(t)] = round(float(run_isolated("litegate.benchmarks.peak:sgemm_job", {"n": n}, timeout_s=120,
                                                   env=env)["gflops"]), 2)
        except LitegateError:
            continue
    fpc, mhz = theoretical_flops_per_cycle(), cpu_mhz()
    theory = {str(t): round(fpc * mhz * 1e-3 * t, 1) for t in sorted(set(threads))} if fpc and mhz else {}
    return {"gflops": out, "method": f"numpy sgemm 1024 and {n} float32, best of ~0.5 s each, BLAS threads pinned",
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

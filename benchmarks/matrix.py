"""One cell of the benchmark matrix (variant × backend × threads), measured in its own child process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litegate.benchmarks.latency import summarize
from litegate.delegates.runtime import why_not_runnable

from litegate.errors import IsolationError, LitegateError
from litegate.isolation import run_isolated
from litegate.types import BenchResult, Status


def run_cell(*, path: str | Path, sha256: str, variant: str, backend: str, threads: int, inputs_npz: str | Path,
             protocol: dict[str, Any], timeout_s: float, mem_mb: int | None = None) -> BenchResult:
    """Measure one cell; a backend that cannot run here, a crash or a hang becomes a non-ok result, never an exception."""
    def result(status: Status, reason: str, **kw: Any) -> BenchResult:
        return BenchResult(artifact_sha256=sha256, variant=variant, backend=backend, threads=threads, status=status,
                           reason=reason, **kw)

    reason = why_not_runnable(backend)
    if reason:
        return result(Status.NOT_RUN, reason)
    payload = {"path": str(path), "backend": backend, "threads": threads, "inputs_npz": str(inputs_npz),
               "protocol": protocol}
    try:
        r = run_isolated("litegate.benchmarks.latency:bench_job", payload, timeout_s=timeout_s, mem_mb=mem_mb)
    except IsolationError as exc:
        status = Status.TIMEOUT if exc.kind == "timeout" else Status.FAILED
        return result(status, exc.message, protocol={"stderr_tail": exc.stderr[-1500:]})
    except LitegateError as exc:
        return result(Status.FAILED, exc.message)
    return result(Status.OK, "", init_ms=r["init_ms"], first_ms=r["first_ms"], latency=summarize(r["samples_ms"]),
                  peak_rss_mb=r["peak_rss_mb"], samples_ms=tuple(round(s, 5) for s in r["samples_ms"]),
                  protocol={**protocol, "n_inputs": r["n_inputs"]})

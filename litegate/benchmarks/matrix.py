"""One cell of the benchmark matrix (variant × backend × threads), measured in its own child process.

Local backends (``xnnpack``, ``cpu``, ``external:...``) run :func:`litegate.benchmarks.latency.bench_job`;
``adb[:SERIAL]`` backends run :func:`litegate.backends.adb.bench_job`, which drives ``benchmark_model``
on the device; ``aihub:DEVICE`` backends run on a phone through Qualcomm AI Hub
(:func:`litegate.backends.aihub.bench_cells`: a variant's AI Hub cells are submitted together and
polled together, the job ids saved beside the variant so a re-run resumes them). ``gpu`` runs LiteRT's
GPU delegate through ``CompiledModel``
(:func:`litegate.backends.gpu.run_gpu`): the cell's ``protocol`` records what the delegate took
(``fully_accelerated``, ``ops_on_gpu``/``ops_on_cpu``, ``gpu_fallback`` ops with the delegate's
reasons), and on a software Vulkan device (Mesa lavapipe) ``latency_emulated`` and the ``reason``
say that the timings are not GPU latency. ``arm64-emu[?kernels=...]`` runs aarch64 LiteRT under QEMU
(:func:`litegate.backends.arm.run_arm`): its cell has no latency (emulated time means nothing) but
``instructions``, the guest instructions per inference, and only a 1-thread cell (counted single-threaded).
All but AI Hub's (network calls in this process, the cell's
timeout their polling deadline) run under :func:`litegate.isolation.run_isolated` with the cell's timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from litegate.backends import adb, aihub, arm, gpu
from litegate.backends.registry import why_not_runnable
from litegate.backends.spec import is_arm_backend
from litegate.errors import IsolationError, LitegateError
from litegate.isolation import run_isolated
from litegate.timing import summarize
from litegate.types import BenchResult, LatencyStats, Status, VariantResult

# AI Hub profiles a model's first signature; a generator is timed per token on its decode/step signature
AIHUB_SIGNATURE = ("AI Hub profiles the model's first signature (a generator's prefill), not the per-token "
                   "signature this cell times")


def run_cell(*, path: str | Path, sha256: str, variant: str, backend: str, threads: int, inputs_npz: str | Path,
             protocol: dict[str, Any], timeout_s: float, mem_mb: int | None = None,
             signature: str | None = None) -> BenchResult:
    """Measure one cell; a backend that cannot run here, a crash or a hang becomes a non-ok result, never an exception.

    ``signature`` picks the signature to time (e.g. a generator's per-token ``decode``); default: the first.
    """
    def result(status: Status, reason: str, **kw: Any) -> BenchResult:
        return BenchResult(artifact_sha256=sha256, variant=variant, backend=backend, threads=threads, status=status,
                           reason=reason, **kw)

    if adb.is_adb_backend(backend):
        return _adb_cell(path=path, sha256=sha256, backend=backend, threads=threads, protocol=protocol,
                         timeout_s=timeout_s, mem_mb=mem_mb, result=result)
    if aihub.is_aihub_backend(backend):
        if signature is not None:
            return result(Status.NOT_RUN, AIHUB_SIGNATURE)
        return _aihub_cell(path=path, sha256=sha256, variant=variant, backend=backend, threads=threads,
                           timeout_s=timeout_s)
    reason = why_not_runnable(backend)
    if reason:
        return result(Status.NOT_RUN, reason)
    if is_arm_backend(backend):
        return _arm_cell(path=path, backend=backend, inputs_npz=inputs_npz, timeout_s=timeout_s, mem_mb=mem_mb,
                         signature=signature, result=result)
    if backend == "gpu":
        return _gpu_cell(path=path, inputs_npz=inputs_npz, threads=threads, protocol=protocol, timeout_s=timeout_s,
                         mem_mb=mem_mb, signature=signature, result=result)
    payload = {"path": str(path), "backend": backend, "threads": threads, "inputs_npz": str(inputs_npz),
               "protocol": protocol, "signature": signature}
    try:
        r = run_isolated("litegate.benchmarks.latency:bench_job", payload, timeout_s=timeout_s, mem_mb=mem_mb)
    except IsolationError as exc:
        status = Status.TIMEOUT if exc.kind == "timeout" else Status.FAILED
        return result(status, exc.message, protocol={"stderr_tail": exc.stderr[-1500:]})
    except LitegateError as exc:
        return result(Status.FAILED, exc.message)
    return result(Status.OK, "", init_ms=r["init_ms"], first_ms=r["first_ms"], latency=summarize(r["samples_ms"]),
                  peak_rss_mb=r["peak_rss_mb"], samples_ms=tuple(round(s, 5) for s in r["samples_ms"]),
                  protocol={**protocol, "n_inputs": r["n_inputs"],
                            "rss_before_mb": round(r["rss_before_mb"], 1),
                            "rss_model_load_mb": round(r["rss_after_load_mb"] - r["rss_before_mb"], 1),
                            "rss_increase_mb": round(r["peak_rss_mb"] - r["rss_before_mb"], 1)})


def _gpu_cell(*, path: str | Path, inputs_npz: str | Path, threads: int, protocol: dict[str, Any], timeout_s: float,
              mem_mb: int | None, signature: str | None, result: Callable[..., BenchResult]) -> BenchResult:
    """One cell on LiteRT's GPU delegate: coverage from the delegate's own log, latency marked when emulated."""
    try:
        run = gpu.run_gpu(path, inputs=inputs_npz, threads=threads, protocol=protocol, signature=signature,
                          timeout_s=timeout_s, mem_mb=mem_mb)
    except IsolationError as exc:
        status = Status.TIMEOUT if exc.kind == "timeout" else Status.FAILED
        log = gpu.parse_delegate_log(exc.stderr)
        return result(status, exc.message, protocol={"source": gpu.SOURCE, "stderr_tail": exc.stderr[-1500:],
                                                     "gpu_fallback": [f.to_dict() for f in log.fallbacks]})
    except LitegateError as exc:
        return result(Status.FAILED, exc.message, protocol={"source": gpu.SOURCE})
    if run.log.shader_errors:
        return result(Status.FAILED, "the GPU delegate's kernels failed WebGPU validation, so its outputs are invalid: "
                      f"{run.log.shader_errors[0]}", protocol={**protocol, **run.protocol()})
    if not run.samples_ms:
        return result(Status.FAILED, "the GPU delegate run returned no timings", protocol={**protocol, **run.protocol()})
    return result(Status.OK, gpu.emulation_note(run.adapter) if run.emulated else "", init_ms=run.init_ms,
                  first_ms=run.first_ms, latency=summarize(run.samples_ms), peak_rss_mb=run.peak_rss_mb,
                  samples_ms=tuple(round(s, 5) for s in run.samples_ms),
                  protocol={**protocol, "n_inputs": run.n_inputs, **run.protocol()})


def cell_threads(backend: str, threads: Sequence[int]) -> tuple[int, ...]:
    """The thread counts ``backend`` gets a cell for: all of ``threads``, but only 1 for ``arm64-emu`` (it counts
    instructions single-threaded)."""
    return (1,) if is_arm_backend(backend) else tuple(threads)


ARM_BENCH_SAMPLES = 8  # inferences counted per arm64-emu cell; the median is its count


def _arm_cell(*, path: str | Path, backend: str, inputs_npz: str | Path, timeout_s: float, mem_mb: int | None,
              signature: str | None, result: Callable[..., BenchResult]) -> BenchResult:
    """One cell on aarch64 LiteRT under QEMU: instructions per inference, never a latency."""
    try:
        run = arm.run_arm(path, inputs_npz, backend, samples=ARM_BENCH_SAMPLES, signature=signature,
                          timeout_s=timeout_s, mem_mb=mem_mb)
    except IsolationError as exc:
        status = Status.TIMEOUT if exc.kind == "timeout" else Status.FAILED
        return result(status, exc.message, protocol={"source": arm.SOURCE, "stderr_tail": exc.stderr[-1500:]})
    except LitegateError as exc:
        return result(Status.FAILED, exc.message, protocol={"source": arm.SOURCE})
    return result(Status.OK, arm.NO_LATENCY, instructions=run.per_inference, protocol=run.protocol())


def _adb_cell(*, path: str | Path, sha256: str, backend: str, threads: int, protocol: dict[str, Any],
              timeout_s: float, mem_mb: int | None, result: Callable[..., BenchResult]) -> BenchResult:
    """One cell on an Android device: host-side checks here, the device run in a child process."""
    target, reason = adb.resolve(backend)
    if target is None:
        return result(Status.NOT_RUN, reason or "adb backend unavailable")
    payload = {"adb": target.adb, "serial": target.serial, "binary": target.binary, "backend": backend,
               "path": str(path), "sha256": sha256, "threads": threads, "protocol": protocol, "timeout_s": timeout_s}
    try:
        r = run_isolated("litegate.backends.adb:bench_job", payload, timeout_s=timeout_s, mem_mb=mem_mb)
    except IsolationError as exc:
        status = Status.TIMEOUT if exc.kind == "timeout" else Status.FAILED
        return result(status, exc.message, protocol={"source": "benchmark_model", "device": target.serial,
                                                     "stderr_tail": exc.stderr[-1500:]})
    except LitegateError as exc:
        return result(Status.FAILED, exc.message, protocol={"source": "benchmark_model", "device": target.serial})
    return result(Status.OK, r.get("note", ""), init_ms=r["init_ms"], first_ms=r["first_ms"],
                  latency=LatencyStats.from_dict(r["latency"]), peak_rss_mb=r["peak_rss_mb"],
                  protocol={**protocol, **r["protocol"]})


def _aihub_cell(*, path: str | Path, sha256: str, variant: str, backend: str, threads: int,
                timeout_s: float) -> BenchResult:
    """One cell on a phone through Qualcomm AI Hub, its job id saved beside the artifact (a re-run resumes it)."""
    cell = aihub.Cell(path=str(path), sha256=sha256, variant=variant, backend=backend, threads=threads)
    return aihub.bench_cells([cell], store_path=Path(path).parent / aihub.STORE_NAME, timeout_s=timeout_s)[0]


def bench_variant(v: VariantResult, *, backends: Sequence[str], threads: Sequence[int], inputs_npz: Path,
                  protocol: dict[str, Any], timeout_s: float, mem_mb: int | None = None,
                  signature: str | None = None) -> Iterator[BenchResult]:
    """Every cell (backend × threads; ``arm64-emu`` at 1 thread only) of one published variant, one child process
    each; its AI Hub cells are submitted together first and polled together."""
    assert v.artifact is not None
    hub = iter(aihub.bench_cells([aihub.Cell(path=v.artifact.path, sha256=v.artifact.sha256, variant=v.name,
                                             backend=b, threads=t)
                                  for b in backends if aihub.is_aihub_backend(b) and signature is None
                                  for t in threads],
                                 store_path=Path(v.artifact.path).parent / aihub.STORE_NAME, timeout_s=timeout_s))
    for backend in backends:
        for t in cell_threads(backend, threads):
            if aihub.is_aihub_backend(backend) and signature is None:
                yield next(hub)
                continue
            yield run_cell(path=v.artifact.path, sha256=v.artifact.sha256, variant=v.name, backend=backend, threads=t,
                           inputs_npz=inputs_npz, protocol=protocol, timeout_s=timeout_s, mem_mb=mem_mb,
                           signature=signature)

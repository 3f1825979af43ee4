"""Latency and memory measurement of one (model, backend, threads) cell.

Protocol: create the interpreter (``init_ms``), time the first inference (``first_ms``), run
``warmup_runs`` untimed inferences, then time inferences until both ``min_runs`` and
``min_seconds`` are reached (capped by ``max_runs``). Inputs cycle through real tokenized task
text. The cell runs in its own child process (``bench_job``) so its peak RSS is its own.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from litegate.types import LatencyStats

DEFAULT_PROTOCOL = {"warmup_runs": 10, "min_runs": 50, "min_seconds": 1.0, "max_runs": 2000}


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted samples."""
    if not sorted_samples:
        raise ValueError("no samples")
    pos = (len(sorted_samples) - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(sorted_samples) - 1)
    return float(sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo))


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """p50/p90/p99, mean, sample standard deviation, min, max and n of ``samples_ms``."""
    s = sorted(float(x) for x in samples_ms)
    n = len(s)
    mean = sum(s) / n
    std = float(np.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1))) if n > 1 else 0.0
    return LatencyStats(p50=percentile(s, 50), p90=percentile(s, 90), p99=percentile(s, 99), mean=mean, std=std,
                        min=s[0], max=s[-1], n=n)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(run_once: Any, feeds: Sequence[Mapping[str, np.ndarray]], protocol: Mapping[str, Any]) -> tuple[float, list[float]]:
    """Time ``run_once(feed)``; returns (first_ms, timed samples in ms)."""
    p = {**DEFAULT_PROTOCOL, **protocol}
    t0 = time.perf_counter()
    run_once(feeds[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(int(p["warmup_runs"])):
        run_once(feeds[i % len(feeds)])
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(samples) < int(p["max_runs"]) and (
        len(samples) < int(p["min_runs"]) or time.perf_counter() - start < float(p["min_seconds"])
    ):
        feed = feeds[i % len(feeds)]
        t = time.perf_counter()
        run_once(feed)
        samples.append((time.perf_counter() - t) * 1e3)
        i += 1
    return first_ms, samples


def bench_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: measure one cell. payload: path, backend, threads, inputs_npz, protocol."""
    from litegate.delegates.runtime import Runner

    rss_before = peak_rss_mb()
    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    t0 = time.perf_counter()
    runner = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]),
                    signature=payload.get("signature"))
    init_ms = (time.perf_counter() - t0) * 1e3
    rss_loaded = peak_rss_mb()
    n = len(next(iter(arrays.values())))
    feeds = [runner.prepare({k: v[i : i + 1] for k, v in arrays.items()}) for i in range(n)]
    first_ms, samples = measure(runner.invoke, feeds, payload.get("protocol", {}))
    return {
        "init_ms": init_ms,
        "first_ms": first_ms,
        "samples_ms": samples,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "rss_after_load_mb": rss_loaded,
        "n_inputs": n,
    }


def eval_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: run every sample of ``inputs_npz`` and save outputs to ``out_npz``."""
    from litegate.delegates.runtime import Runner

    from litegate.artifacts import save_npz

    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    runner = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]))
    outs = runner.run_batch(arrays)
    save_npz(payload["out_npz"], outs)
    return {"outputs": sorted(outs), "n": len(next(iter(arrays.values())))}

"""Latency and memory measurement of one (model, backend, threads) cell.

Protocol (:mod:`litegate.timing`): create the interpreter (``init_ms``), time the first inference (``first_ms``), run
``warmup_runs`` untimed inferences, then time inferences until both ``min_runs`` and
``min_seconds`` are reached (capped by ``max_runs``). Inputs cycle through real tokenized task
text. The cell runs in its own child process (``bench_job``) so its peak RSS is its own.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from litegate.artifacts import save_npz
from litegate.backends.runtime import Runner
from litegate.timing import measure, peak_rss_mb


def bench_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: measure one cell. payload: path, backend, threads, inputs_npz, protocol."""
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
    """Child-process entry: run every sample of ``inputs_npz`` (those in ``[start, stop)`` when given: one shard of
    a parallel evaluation) and save outputs to ``out_npz``."""
    rows = slice(payload.get("start"), payload.get("stop"))
    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k][rows] for k in data.files}
    runner = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]))
    outs = runner.run_batch(arrays)
    save_npz(payload["out_npz"], outs)
    return {"outputs": sorted(outs), "n": len(next(iter(arrays.values())))}

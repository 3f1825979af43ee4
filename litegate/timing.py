"""The timing protocol, shared by every backend that times inferences and by the benchmarks.

Create the interpreter, time the first inference, run ``warmup_runs`` untimed inferences, then time
inferences until both ``min_runs`` and ``min_seconds`` are reached (capped by ``max_runs``).
:class:`Protocol` holds the defaults; the release config, the CLI and every backend take them from here.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from litegate.types import LatencyStats


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How many inferences are timed: warm-up runs, then at least ``min_runs`` and ``min_seconds``."""

    warmup_runs: int = 10
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 2000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT = Protocol()
DEFAULT_PROTOCOL = DEFAULT.to_dict()


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted samples."""
    if not sorted_samples:
        raise ValueError("no samples")
    pos = (len(sorted_samples) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return float(sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo))


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """p50/p90/p99, mean, sample standard deviation, min, max and n of ``samples_ms``."""
    s = sorted(float(x) for x in samples_ms)
    n = len(s)
    mean = sum(s) / n
    std = float(math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1))) if n > 1 else 0.0
    return LatencyStats(p50=percentile(s, 50), p90=percentile(s, 90), p99=percentile(s, 99), mean=mean, std=std,
                        min=s[0], max=s[-1], n=n)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(run_once: Any, feeds: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any]) -> tuple[float, list[float]]:
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




class Stages:
    """Wall time per stage of a run (seconds), for ``report.json``'s ``run.stages`` and ``make perf``.

    ``with stages.clock("bench")`` adds the block's wall time to ``bench``; ``stages.add("eval:int8", s)`` records a
    figure measured elsewhere (a child's own clock). Times of a stage are summed when it is entered again.
    """

    def __init__(self) -> None:
        self._s: dict[str, float] = {}
        self._lock = threading.Lock()  # children's threads add their figures at once

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._s[name] = self._s.get(name, 0.0) + float(seconds)

    def clock(self, name: str) -> _Clock:
        return _Clock(self, name)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self._s.items()}


class _Clock:
    def __init__(self, stages: Stages, name: str) -> None:
        self._stages, self._name, self._t0 = stages, name, 0.0

    def __enter__(self) -> None:
        self._t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._stages.add(self._name, time.monotonic() - self._t0)

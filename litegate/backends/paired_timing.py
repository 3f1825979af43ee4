"""Two models timed in one process, in alternating blocks: the measurement under :mod:`litegate.benchmarks.paired`
(a baseline's model beside the candidate's) and under ``auto``'s guard against the fp32 model
(:mod:`litegate.quantize.build`). Why alternate: see :mod:`litegate.benchmarks.paired`."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.backends.runtime import Runner


@dataclasses.dataclass(frozen=True)
class PairedProtocol:
    """How the pair is timed: ``rounds`` rounds of one block per model (``warmup`` untimed + ``block`` timed runs)."""

    rounds: int = 15
    block: int = 10
    warmup: int = 2
    seed: int = 0
    interleave: str = "block"  # "block": one block per model per round; "run": the models alternate per inference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paired_blocks(base: str | Path, new: str | Path, arrays: Mapping[str, np.ndarray], *, backend: str, threads: int,
                  signature: str | None = None, protocol: PairedProtocol | None = None,
                  slowdown: float = 0.0) -> dict[str, list[float]]:
    """The block medians (ms) of ``base`` and ``new`` timed in alternating blocks in this process (the protocol in the
    module docstring), on the rows of ``arrays`` in turn."""
    p = protocol or PairedProtocol()
    n_inputs = len(next(iter(arrays.values())))
    runners = {side: Runner(path, backend=backend, threads=threads, signature=signature)
               for side, path in (("base", base), ("new", new))}
    feeds = {side: [r.prepare(_fit({k: v[i:i + 1] for k, v in arrays.items()}, r)) for i in range(n_inputs)]
             for side, r in runners.items()}
    slowdowns = {"base": 0.0, "new": slowdown}

    def timed(side: str, i: int) -> float:
        t = time.perf_counter()
        runners[side].invoke(feeds[side][i % n_inputs])
        if slowdowns[side]:
            until = time.perf_counter() + (time.perf_counter() - t) * slowdowns[side]
            while time.perf_counter() < until:
                pass
        return (time.perf_counter() - t) * 1e3

    blocks: dict[str, list[float]] = {"base": [], "new": []}
    rng = random.Random(p.seed)
    order = ["base", "new"]
    done = 0
    for _ in range(p.rounds):
        samples: dict[str, list[float]] = {"base": [], "new": []}
        if p.interleave == "run":  # the two models take turns inference by inference: drift on any time scale
            for side in order:    # above one inference hits both
                for i in range(p.warmup):
                    timed(side, done + i)
            for i in range(p.block):
                rng.shuffle(order)
                for side in order:
                    samples[side].append(timed(side, done + i))
        else:  # blocks: each model's caches stay warm within its block
            rng.shuffle(order)
            for side in order:
                for i in range(p.warmup + p.block):
                    ms = timed(side, done + i)
                    if i >= p.warmup:
                        samples[side].append(ms)
        for side in order:
            blocks[side].append(float(np.median(samples[side])))
        done += p.warmup + p.block
    return {"base": blocks["base"], "new": blocks["new"]}


def _fit(sample: dict[str, np.ndarray], runner: Runner) -> dict[str, np.ndarray]:
    """The same token rows at this model's own sequence length (zero-padded or cut on the last axis): a candidate
    built at another ``seq_len`` is timed on the same texts, its length being part of its cost."""
    length = int(next(iter(runner.inputs.values()))["shape"][-1])
    out = {}
    for k, v in sample.items():
        if v.ndim >= 2 and v.shape[-1] != length:
            v = v[..., :length] if v.shape[-1] > length else np.concatenate(
                [v, np.zeros((*v.shape[:-1], length - v.shape[-1]), v.dtype)], axis=-1)
        out[k] = v
    return out

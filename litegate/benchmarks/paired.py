"""Paired re-measurement: the baseline's model timed beside the candidate's, in one child, in interleaved blocks.

Two runs of one byte-identical model on a shared CI machine differ by more than either run's own spread: the machine
drifts between runs (other tenants, frequency, cache state), and a bootstrap over one run's samples cannot see that.
So when the baseline's model file is at hand, litegate does not compare figures from two runs: it loads the
baseline's model and the candidate's in the same child process, on the same backend and thread count, and times them
in alternating blocks (``warmup`` untimed runs, then ``block`` timed runs each; which model goes first is shuffled
every round). Drift then hits both models of a round alike, and the statistic is the median over rounds of
``median(candidate block) / median(baseline block)``, with a bootstrap interval over rounds. ``make gate-calibration``
measures its false-alarm rate on identical models and its detection rate for a 10% slowdown on this machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import sha256_file
from litegate.backends.paired_timing import PairedProtocol, paired_blocks
from litegate.errors import LitegateError
from litegate.isolation import run_isolated
from litegate.types import PairedCell


def paired_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child entry: time ``base`` and ``new`` in alternating blocks. payload: base, new, backend, threads,
    inputs_npz, signature, protocol (PairedProtocol fields), slowdown (calibration only: the candidate busy-waits
    that fraction of each of its own inferences, a simulated regression)."""
    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    return paired_blocks(payload["base"], payload["new"], arrays, backend=payload["backend"],
                         threads=int(payload["threads"]), signature=payload.get("signature"),
                         protocol=PairedProtocol(**payload.get("protocol", {})),
                         slowdown=float(payload.get("slowdown", 0.0)))


def find_baseline_model(baseline_report: Path, recorded_path: str, sha256: str) -> Path | None:
    """The baseline variant's model file: the file next to the baseline's report.json with the recorded name (how a
    downloaded CI artifact holds it), else the recorded path; only a file whose sha256 is the recorded one counts."""
    name = Path(recorded_path).name
    for candidate in (baseline_report.parent / name, Path(recorded_path)):
        if candidate.is_file() and sha256_file(candidate) == sha256:
            return candidate
    return None


def remeasure(*, variant: str, base_path: Path, new_path: str, backend: str, threads: int, inputs_npz: Path,
              signature: str | None, protocol: PairedProtocol, timeout_s: float, mem_mb: int | None = None,
              slowdown: float = 0.0) -> PairedCell:
    """Time the baseline's model beside the candidate's in one child; a failure becomes ``reason``, never raises."""
    payload: Mapping[str, Any] = {"base": str(base_path), "new": new_path, "backend": backend, "threads": threads,
                                  "inputs_npz": str(inputs_npz), "signature": signature,
                                  "protocol": protocol.to_dict(), "slowdown": slowdown}
    cell = PairedCell(variant=variant, backend=backend, threads=threads, base_path=str(base_path),
                      reason="not timed yet")
    try:
        r = run_isolated("litegate.benchmarks.paired:paired_job", dict(payload), timeout_s=timeout_s, mem_mb=mem_mb)
    except LitegateError as exc:
        return dataclasses.replace(cell, reason=f"paired re-measurement failed: {exc.message}")
    return dataclasses.replace(cell, base_blocks=tuple(round(x, 5) for x in r["base"]),
                               new_blocks=tuple(round(x, 5) for x in r["new"]), reason="")

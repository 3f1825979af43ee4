"""Parse what TFLite/LiteRT's ``benchmark_model`` tool prints.

The tool's output changed across releases and reaches us through different channels (a
terminal, ``adb shell``, ``adb logcat``), so every line is first stripped of its channel
prefix, then matched against the statements the tool is known to print:

* ``INFO: `` / ``WARNING: `` / ``ERROR: `` (TFLite's minimal logger);
* logcat ``I tflite  : `` (``-v tag``), ``I/tflite  ( 1234): `` (``-v brief``) and full
  ``11-21 10:00:00.123  1234  1234 I tflite  : `` (``-v threadtime``, optionally with a year).

Recognised statements (see ``tensorflow/lite/tools/benchmark/benchmark_model.cc`` and
``tensorflow/core/util/stats_calculator.h``):

* ``The input model file size (MB): 5.42``
* ``Initialized session in 3.42ms.``
* ``Running benchmark for at least N iterations ...`` - the first opens the warm-up phase,
  the second the timed phase; the ``count=`` line after each belongs to that phase;
* ``count=50 first=.. curr=.. min=.. max=.. avg=.. std=..`` with optional ``p5= median= p95=``,
  the short forms ``count=1 curr=..`` and ``count=5 curr=..(all same)``, and ``count=0``;
* ``Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..``
  (and TF 1.x's ``Average inference timings in us: Warmup: .., Init: .., no stats: ..``);
* ``Peak memory footprint (MB): init=.. overall=..`` (older builds: peak RSS),
  ``Memory footprint delta from the start of the tool (MB): init=.. overall=..`` (newer: RSS deltas)
  and ``Overall peak memory footprint (MB) via periodic monitoring: ..``;
* delegate application: ``Explicitly applied GPU delegate, and the model graph will be completely
  executed by the delegate.``, ``... partially executed by the delegate w/ 3 delegate kernels.``,
  ``Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.``;
* parameter echoes such as ``Num threads: [4]``;
* errors: lines logged at error level and the tool's known failure statements
  (``Could not create Hexagon delegate: ...``, ``GPU acceleration is unsupported on this platform.``,
  ``Failed to ...``, ``Disallowed CPU fallback detected.``, ``Benchmarking failed.``).

Numbers may be written in scientific notation (``2.95034e+06``). Durations keep the tool's unit
(microseconds, ``_us``) except ``Initialized session in ..ms`` (``_ms``). A field the output does
not state is ``None``; nothing is inferred except what the tool's own format defines (a
``count=N curr=X`` line means every sample was ``X``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"

_THREADTIME = re.compile(
    r"^(?:\d{4}-)?\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2}\.\d+\s+\d+\s+\d+\s+([VDIWEF])\s+[^\s:]*\s*:\s?(.*)$")
_LOGCAT_TAG = re.compile(r"^([VDIWEF])\s+[^\s:]+\s*:\s?(.*)$")
_LOGCAT_BRIEF = re.compile(r"^([VDIWEF])/[^\s(]+\s*\(\s*\d+\):\s?(.*)$")
_LEVEL = re.compile(r"^(INFO|WARNING|WARN|ERROR|FATAL|VERBOSE|DEBUG):\s?(.*)$")

_MODEL_SIZE = re.compile(rf"^The input model file size \(MB\):\s*({_NUM})")
_INIT_SESSION = re.compile(rf"^Initialized session in\s*({_NUM})\s*ms")
_RUNNING = re.compile(r"^Running benchmark for (?:at least\s+)?\d+\s+iterations")
_COUNT = re.compile(r"^count=(\d+)(.*)$")
_KEY_VALUE = re.compile(rf"(\w+)=({_NUM})(?![\w.])")
_TIMINGS = re.compile(r"^(?:Average )?[Ii]nference timings in us:\s*(.*)$")
_TIMING_ITEM = re.compile(rf"^\s*([A-Za-z][A-Za-z ()]*?)\s*:\s*({_NUM})\s*$")
_PEAK_OLD = re.compile(rf"^Peak memory footprint \(MB\):\s*init=({_NUM})\s+overall=({_NUM})")
_DELTA = re.compile(rf"^Memory footprint delta from the start of the tool \(MB\):\s*init=({_NUM})\s+overall=({_NUM})")
_PEAK_MONITORED = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring:\s*({_NUM})")
_APPLIED_FULL = re.compile(r"^Explicitly applied (.+?) delegate, and the model graph will be completely executed")
_APPLIED_PARTIAL = re.compile(
    r"^Explicitly applied (.+?) delegate, and the model graph will be partially executed by the delegate w/ (\d+)")
_APPLIED_NONE = re.compile(r"^Though (.+?) delegate is explicitly applied, the model graph will not be executed")
_PARAMETER = re.compile(r"^([A-Za-z#][^:\[\]]*?):\s*\[(.*)\]\s*$")
_DELEGATE_ERROR = re.compile(
    r"^(?:Could not create .+? delegate.*"
    r"|.+? acceleration is unsupported on this platform.*"
    r"|Failed to (?:create|apply|initialize) .*delegate.*"
    r"|Disallowed CPU fallback detected.*)$")
_ERROR = re.compile(
    r"^(?:Failed to .+|Benchmarking failed.*|Aborted.*|Segmentation fault.*|CANNOT LINK EXECUTABLE.*"
    r"|.*: (?:inaccessible or not found|not found|No such file or directory|Permission denied)"
    r"|Didn't find op for builtin opcode.*|Node number \d+ .* failed to (?:prepare|invoke).*)$")

_TIMING_FIELDS = {
    "Init": "init_us",
    "First inference": "first_inference_us",
    "Warmup (avg)": "warmup_avg_us",
    "Warmup": "warmup_avg_us",
    "Inference (avg)": "inference_avg_us",
    "Inference": "inference_avg_us",
    "no stats": "inference_avg_us",  # TF 1.x printed the inference average under this label
}


@dataclasses.dataclass(frozen=True)
class RunStats:
    """One ``count=`` line: the statistics of one phase (warm-up or timed runs), in microseconds.

    For ``count=N curr=X`` / ``count=N curr=X(all same)`` the tool prints the short form because
    every sample equalled ``X``; ``all_same`` is then True and first/min/max/avg are ``X``, std 0.
    """

    count: int
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    avg_us: float | None = None
    std_us: float | None = None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    all_same: bool = False


@dataclasses.dataclass(frozen=True)
class DelegateApplication:
    """What the tool said about applying one delegate.

    ``execution`` is ``full``, ``partial`` or ``none``; ``kernels`` the number of delegate
    kernels (partitions) for ``partial``.
    """

    delegate: str
    execution: str
    kernels: int | None = None


@dataclasses.dataclass(frozen=True)
class BenchmarkModelOutput:
    """Everything :func:`parse` found in one run's output; ``None`` where the output is silent."""

    model_size_mb: float | None = None
    init_session_ms: float | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    warmup: RunStats | None = None
    inference: RunStats | None = None
    runs: tuple[RunStats, ...] = ()
    peak_memory_init_mb: float | None = None
    peak_memory_overall_mb: float | None = None
    memory_delta_init_mb: float | None = None
    memory_delta_overall_mb: float | None = None
    peak_memory_monitored_mb: float | None = None
    delegates: tuple[DelegateApplication, ...] = ()
    delegate_errors: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timings_us: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (non-finite numbers become ``None``)."""

        def plain(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


def strip_prefix(line: str) -> tuple[str, str]:
    """Remove logcat and log-level prefixes from one line.

    Returns:
        (level, text) where level is ``E`` (error/fatal), ``W``, ``I`` or ``""`` (no prefix).
    """
    text = line.strip()
    level = ""
    for rx in (_THREADTIME, _LOGCAT_BRIEF, _LOGCAT_TAG):
        m = rx.match(text)
        if m:
            level, text = m.group(1), m.group(2).strip()
            break
    m = _LEVEL.match(text)
    if m:
        word, text = m.group(1), m.group(2).strip()
        level = {"ERROR": "E", "FATAL": "E", "WARNING": "W", "WARN": "W"}.get(word, level or "I")
    if level == "F":
        level = "E"
    return level, text


def _run_stats(count: int, rest: str) -> RunStats:
    values = {k: float(v) for k, v in _KEY_VALUE.findall(rest)}
    p5, median, p95 = values.get("p5"), values.get("median"), values.get("p95")
    curr = values.get("curr")
    if count > 0 and "min" not in values and curr is not None:
        # Stat::OutputToStream prints only ``curr`` when min == max (one sample, or all equal).
        return RunStats(count=count, first_us=curr, curr_us=curr, min_us=curr, max_us=curr, avg_us=curr, std_us=0.0,
                        p5_us=p5, median_us=median, p95_us=p95, all_same=True)
    return RunStats(count=count, first_us=values.get("first"), curr_us=curr, min_us=values.get("min"),
                    max_us=values.get("max"), avg_us=values.get("avg"), std_us=values.get("std"), p5_us=p5,
                    median_us=median, p95_us=p95)


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def parse(text: str) -> BenchmarkModelOutput:
    """Parse the complete output (stdout and stderr together) of one ``benchmark_model`` run."""
    fields: dict[str, Any] = {}
    phased: list[tuple[int, RunStats]] = []  # (number of "Running benchmark" headers seen, stats)
    headers = 0
    delegates: list[DelegateApplication] = []
    delegate_errors: list[str] = []
    errors: list[str] = []
    parameters: dict[str, str] = {}
    timings: dict[str, float] = {}
    for raw in text.splitlines():
        level, line = strip_prefix(raw)
        if not line:
            continue
        if m := _COUNT.match(line):
            phased.append((headers, _run_stats(int(m.group(1)), m.group(2))))
        elif _RUNNING.match(line):
            headers += 1
        elif m := _TIMINGS.match(line):
            for item in m.group(1).split(","):
                im = _TIMING_ITEM.match(item)
                if im:
                    timings[im.group(1)] = float(im.group(2))
                    if im.group(1) in _TIMING_FIELDS:
                        fields[_TIMING_FIELDS[im.group(1)]] = float(im.group(2))
        elif m := _MODEL_SIZE.match(line):
            fields["model_size_mb"] = float(m.group(1))
        elif m := _INIT_SESSION.match(line):
            fields["init_session_ms"] = float(m.group(1))
        elif m := _PEAK_OLD.match(line):
            fields["peak_memory_init_mb"], fields["peak_memory_overall_mb"] = float(m.group(1)), float(m.group(2))
        elif m := _DELTA.match(line):
            fields["memory_delta_init_mb"], fields["memory_delta_overall_mb"] = float(m.group(1)), float(m.group(2))
        elif m := _PEAK_MONITORED.match(line):
            fields["peak_memory_monitored_mb"] = float(m.group(1))
        elif m := _APPLIED_FULL.match(line):
            delegates.append(DelegateApplication(m.group(1), "full"))
        elif m := _APPLIED_PARTIAL.match(line):
            delegates.append(DelegateApplication(m.group(1), "partial", int(m.group(2))))
        elif m := _APPLIED_NONE.match(line):
            delegates.append(DelegateApplication(m.group(1), "none"))
        elif _DELEGATE_ERROR.match(line):
            delegate_errors.append(line)
            errors.append(line)
        elif level == "E" or _ERROR.match(line):
            errors.append(line)
        elif m := _PARAMETER.match(line):
            parameters[m.group(1).strip()] = m.group(2)

    runs = tuple(s for _, s in phased)
    warmup = next((s for h, s in phased if h == 1), None)
    inference = next((s for h, s in reversed(phased) if h >= 2), None)
    if headers == 0 and runs:
        # Output filtered down to the statistics lines: the tool always prints warm-up before timed runs.
        if len(runs) >= 2:
            warmup, inference = runs[0], runs[-1]
        elif _same(runs[0].avg_us, fields.get("inference_avg_us")):
            inference = runs[0]
        elif _same(runs[0].avg_us, fields.get("warmup_avg_us")):
            warmup = runs[0]
    return BenchmarkModelOutput(
        **fields, warmup=warmup, inference=inference, runs=runs, delegates=tuple(delegates),
        delegate_errors=tuple(delegate_errors), errors=tuple(errors), parameters=parameters, timings_us=timings,
    )

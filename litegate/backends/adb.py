"""The ``adb[:SERIAL]`` backend: measure a model on an Android device with ``benchmark_model``.

Backend syntax (in ``bench.backends`` or ``litegate bench --backend``)::

    adb                                   the one attached device, XNNPACK
    adb:SERIAL                            that device (as ``adb devices`` lists it, e.g. 192.168.1.7:5555)
    adb:SERIAL?delegate=gpu               gpu | hexagon | nnapi | xnnpack (default) | cpu
    adb?delegate=hexagon&hexagon_lib_path=/data/local/tmp
    adb?benchmark_model=/path/to/android_aarch64_benchmark_model

Query options (``&``-separated ``key=value``, percent-decoded):

* ``delegate`` - which of ``--use_gpu``, ``--use_hexagon``, ``--use_nnapi``, ``--use_xnnpack`` to pass
  (``cpu`` passes ``--use_xnnpack=false``);
* ``benchmark_model`` - the host path of an Android build of ``benchmark_model``; without it the
  environment variable ``LITEGATE_BENCHMARK_MODEL`` names it;
* ``device_dir`` - where to push files on the device (default ``/data/local/tmp/litegate``);
* any other lower-case key is passed on as ``--key=value`` (e.g. ``gpu_precision_loss_allowed=true``,
  ``hexagon_lib_path=...``), except the flags litegate sets itself from the bench protocol.

A run pushes the binary and the model, runs ``benchmark_model --graph=... --num_threads=T
--warmup_runs=W --num_runs=N --min_secs=S --report_peak_memory_footprint=true`` plus the delegate
flag, removes the model, and parses the output with :mod:`litegate.backends.benchmark_model`.
``benchmark_model`` reports statistics, not samples: the :class:`~litegate.types.BenchResult` takes
mean/std/min/max/n from the timed phase, p50 from its median (or its average when the build
prints no percentiles, said so), and p90/p99 from upper bounds (p95, max), as recorded under
``protocol["latency_fields"]``; ``protocol["source"]`` is ``"benchmark_model"``.

Checks that can be made from the host without running anything on the device (adb on PATH, a
device attached and authorized, a binary configured) are :func:`why_not_runnable` reasons (``not
run``); anything the device or the tool then reports is a failure with the tool's own line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litegate.backends.benchmark_model import BenchmarkModelOutput, RunStats, parse
from litegate.backends.spec import is_adb_backend, parse_options
from litegate.errors import BenchmarkError, DelegateError
from litegate.tflite.verify import verify_tflite
from litegate.types import LatencyStats

BINARY_ENV = "LITEGATE_BENCHMARK_MODEL"
DEFAULT_DEVICE_DIR = "/data/local/tmp/litegate"
DELEGATE_FLAGS: dict[str, tuple[str, ...]] = {
    "xnnpack": ("--use_xnnpack=true",),
    "cpu": ("--use_xnnpack=false",),
    "gpu": ("--use_gpu=true",),
    "hexagon": ("--use_hexagon=true",),
    "nnapi": ("--use_nnapi=true",),
}
RESERVED_FLAGS = ("graph", "num_threads", "num_runs", "warmup_runs", "min_secs", "report_peak_memory_footprint",
                  "use_gpu", "use_hexagon", "use_nnapi", "use_xnnpack")
ADB_TIMEOUT_S = 30.0
RC_MARKER = "__litegate_rc="
_SERIAL = re.compile(r"^[A-Za-z0-9._:\-]+$")
_FLAG = re.compile(r"^[a-z][a-z0-9_]*$")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclasses.dataclass(frozen=True)
class AdbSpec:
    """A parsed ``adb[:SERIAL][?options]`` backend."""

    serial: str | None = None
    delegate: str = "xnnpack"
    benchmark_model: str | None = None
    device_dir: str = DEFAULT_DEVICE_DIR
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AdbTarget:
    """Everything a run needs, resolved on the host: adb, the device serial and the binary."""

    adb: str
    serial: str
    binary: str
    spec: AdbSpec


def parse_backend(backend: str) -> AdbSpec:
    """Parse an ``adb[:SERIAL][?key=value&...]`` backend string.

    Raises:
        ValueError: the string is not of that form; the message says what is wrong.
    """
    if not is_adb_backend(backend):
        raise ValueError(f"{backend!r} is not an adb backend (adb, adb:SERIAL, adb:SERIAL?delegate=gpu)")
    head, _, query = backend.partition("?")
    serial = head[len("adb:"):] if head.startswith("adb:") else None
    if serial is not None and not _SERIAL.match(serial):
        raise ValueError(f"{backend!r}: device serial {serial!r} must be letters, digits, '.', ':', '-' or '_'")
    opts = parse_options(backend, query)
    delegate = opts.pop("delegate", "xnnpack")
    if delegate not in DELEGATE_FLAGS:
        raise ValueError(f"{backend!r}: delegate={delegate!r} is not one of {', '.join(DELEGATE_FLAGS)}")
    binary = opts.pop("benchmark_model", None) or None
    device_dir = opts.pop("device_dir", DEFAULT_DEVICE_DIR)
    if not device_dir.startswith("/"):
        raise ValueError(f"{backend!r}: device_dir must be an absolute device path, got {device_dir!r}")
    for key in opts:
        if not _FLAG.match(key):
            raise ValueError(f"{backend!r}: option {key!r} is not a benchmark_model flag name")
        if key in RESERVED_FLAGS:
            raise ValueError(f"{backend!r}: --{key} is set by litegate (bench protocol, threads, delegate=)")
    return AdbSpec(serial=serial, delegate=delegate, benchmark_model=binary, device_dir=device_dir.rstrip("/") or "/",
                   flags=opts)


def find_adb() -> str | None:
    """The ``adb`` executable on PATH, or None."""
    return shutil.which("adb")


def list_devices(adb: str, *, timeout_s: float = ADB_TIMEOUT_S) -> list[tuple[str, str]]:
    """``adb devices`` as (serial, state) pairs; state is ``device``, ``unauthorized``, ``offline``, ...

    Raises:
        DelegateError: adb itself failed or hung.
    """
    proc = _adb([adb, "devices"], timeout_s=timeout_s)
    if proc.returncode != 0:
        raise DelegateError(f"adb devices failed (exit {proc.returncode}): {_last_line(proc.stdout)}")
    devices = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("*", "List of devices")) or line.startswith("adb "):
            continue
        parts = line.split(None, 1)
        if len(parts) == 2:
            devices.append((parts[0], parts[1].strip()))
    return devices


def _state_hint(state: str) -> str:
    if state == "unauthorized":
        return "unauthorized: accept the USB debugging prompt on the device"
    if state.startswith("no permissions"):
        return f"{state}: fix the host's udev rules for the device"
    return state


def resolve(backend: str, *, env: Mapping[str, str] | None = None) -> tuple[AdbTarget | None, str | None]:
    """Check, from the host, that ``backend`` can run: adb on PATH, the device attached, a binary given.

    Returns:
        (target, None) when it can run, else (None, the ``not run`` reason).
    """
    environ = os.environ if env is None else env
    try:
        spec = parse_backend(backend)
    except ValueError as exc:
        return None, str(exc)
    adb = find_adb()
    if adb is None:
        return None, "adb not found on PATH (install Android platform-tools)"
    try:
        devices = list_devices(adb)
    except DelegateError as exc:
        return None, exc.message
    ready = [s for s, state in devices if state == "device"]
    if spec.serial is not None:
        state = dict(devices).get(spec.serial)
        if state is None:
            listed = ", ".join(s for s, _ in devices) or "none"
            return None, f"device {spec.serial} not found (attached: {listed})"
        if state != "device":
            return None, f"device {spec.serial} is {_state_hint(state)}"
        serial = spec.serial
    elif not devices:
        return None, "no device attached (adb devices lists none)"
    elif not ready:
        return None, "no device ready: " + "; ".join(f"{s} is {_state_hint(st)}" for s, st in devices)
    elif len(ready) > 1:
        return None, f"{len(ready)} devices attached ({', '.join(ready)}): name one as adb:SERIAL"
    else:
        serial = ready[0]
    binary = spec.benchmark_model or environ.get(BINARY_ENV, "")
    if not binary:
        return None, (f"no benchmark_model binary: set {BINARY_ENV}=/path/to/benchmark_model (an Android build) "
                      "or add ?benchmark_model=PATH to the backend")
    if not Path(binary).is_file():
        return None, f"benchmark_model binary {binary} does not exist"
    return AdbTarget(adb=adb, serial=serial, binary=str(Path(binary).resolve()), spec=spec), None


def why_not_runnable(backend: str) -> str | None:
    """None if ``backend`` (an adb form) can run now, else the ``not run`` reason."""
    return resolve(backend)[1]


def _adb(argv: Sequence[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DelegateError(f"{' '.join(argv[:4])} timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise DelegateError(f"cannot run {argv[0]}: {exc}") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _checked(argv: Sequence[str], what: str, timeout_s: float) -> str:
    proc = _adb(argv, timeout_s=timeout_s)
    if proc.returncode != 0:
        raise DelegateError(f"{what} failed (exit {proc.returncode}): {_last_line(proc.stdout)}")
    return proc.stdout


def command_flags(spec: AdbSpec, *, graph: str, threads: int, protocol: Mapping[str, Any]) -> list[str]:
    """The ``benchmark_model`` flags for one cell."""
    flags = [f"--graph={graph}", f"--num_threads={int(threads)}",
             f"--warmup_runs={int(protocol.get('warmup_runs', 1))}", f"--num_runs={int(protocol.get('min_runs', 50))}"]
    if "min_seconds" in protocol:
        flags.append(f"--min_secs={float(protocol['min_seconds']):g}")
    flags.append("--report_peak_memory_footprint=true")
    flags.extend(DELEGATE_FLAGS[spec.delegate])
    flags.extend(f"--{k}={v}" for k, v in spec.flags.items())
    return flags


def _device_info(adb: str, serial: str) -> dict[str, str]:
    """Manufacturer, model, Android version and SoC platform from ``getprop`` (empty when unreadable)."""
    try:
        proc = _adb([adb, "-s", serial, "shell", "getprop"], timeout_s=ADB_TIMEOUT_S)
    except DelegateError:
        return {}
    wanted = {"ro.product.manufacturer": "manufacturer", "ro.product.model": "model",
              "ro.build.version.release": "android", "ro.build.version.sdk": "sdk", "ro.board.platform": "platform",
              "ro.soc.model": "soc"}
    info = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$", line.strip())
        if m and m.group(1) in wanted:
            info[wanted[m.group(1)]] = m.group(2)
    return info


def failure_reason(out: BenchmarkModelOutput, returncode: int | None) -> str | None:
    """Why a ``benchmark_model`` run must count as failed, or None when its numbers stand."""
    if out.delegate_errors:
        return out.delegate_errors[0]
    if returncode not in (0, None):
        return out.errors[-1] if out.errors else f"benchmark_model exited {returncode}"
    if out.inference is None or out.inference.count < 1 or out.inference.avg_us is None:
        why = out.errors[-1] if out.errors else "no timed-run statistics (count=...) in its output"
        return f"benchmark_model printed no inference statistics: {why}"
    return None


def latency_from(stats: RunStats) -> tuple[LatencyStats, dict[str, str]]:
    """A :class:`LatencyStats` (ms) from one phase's statistics, and where each order statistic came from.

    Raises:
        BenchmarkError: the statistics are incomplete or inconsistent.
    """
    if stats.count < 1 or None in (stats.min_us, stats.max_us, stats.avg_us, stats.std_us):
        raise BenchmarkError(f"benchmark_model statistics are incomplete: {stats}")
    assert stats.min_us is not None and stats.max_us is not None and stats.avg_us is not None
    assert stats.std_us is not None
    if stats.all_same:
        p50 = p90 = p99 = stats.avg_us
        fields = {"p50": "all samples equal", "p90": "all samples equal", "p99": "all samples equal"}
    else:
        p50, src50 = (stats.median_us, "median") if stats.median_us is not None else (stats.avg_us, "avg (no median printed)")
        p90, src90 = (stats.p95_us, "p95 (upper bound)") if stats.p95_us is not None else (stats.max_us, "max (upper bound)")
        p99 = stats.max_us
        fields = {"p50": src50, "p90": src90, "p99": "max (upper bound)"}
    fields.update(mean="avg", std="std (population)", min="min", max="max", n="count", samples="not available")
    try:
        lat = LatencyStats(p50=p50 / 1e3, p90=p90 / 1e3, p99=p99 / 1e3, mean=stats.avg_us / 1e3,
                           std=stats.std_us / 1e3, min=stats.min_us / 1e3, max=stats.max_us / 1e3, n=stats.count)
    except ValueError as exc:
        raise BenchmarkError(f"benchmark_model statistics are inconsistent ({exc}): {stats}") from None
    return lat, fields


def summarize_output(out: BenchmarkModelOutput, *, returncode: int | None = 0) -> dict[str, Any]:
    """The fields :func:`~litegate.benchmarks.latency.bench_job` returns, from a parsed run.

    Raises:
        DelegateError: the requested delegate could not be created (the tool's own line).
        BenchmarkError: the run failed or printed no usable statistics.
    """
    reason = failure_reason(out, returncode)
    if reason is not None:
        if out.delegate_errors:
            raise DelegateError(reason)
        raise BenchmarkError(reason)
    assert out.inference is not None
    latency, fields = latency_from(out.inference)
    init_ms = out.init_us / 1e3 if out.init_us is not None else out.init_session_ms
    first_ms = None
    if out.first_inference_us is not None:
        first_ms = out.first_inference_us / 1e3
    elif out.warmup is not None and out.warmup.first_us is not None:
        first_ms = out.warmup.first_us / 1e3  # the warm-up phase starts with the first inference
    if out.peak_memory_monitored_mb is not None:
        peak, peak_src = out.peak_memory_monitored_mb, "overall peak memory footprint via periodic monitoring"
    elif out.peak_memory_overall_mb is not None:
        peak, peak_src = out.peak_memory_overall_mb, "peak memory footprint (overall)"
    else:
        peak, peak_src = None, "not reported"
    return {
        "init_ms": init_ms, "first_ms": first_ms, "latency": latency.to_dict(), "peak_rss_mb": peak,
        "protocol": {
            "latency_fields": fields, "peak_memory_source": peak_src, "model_size_mb": out.model_size_mb,
            "memory_delta_overall_mb": out.memory_delta_overall_mb, "warmup_count": out.warmup.count if out.warmup else None,
            "delegates": [dataclasses.asdict(d) for d in out.delegates],
        },
    }


def _delegate_note(spec: AdbSpec, out: BenchmarkModelOutput) -> str:
    name = {"gpu": "GPU", "hexagon": "Hexagon", "nnapi": "NNAPI"}.get(spec.delegate)
    if name is None:
        return ""
    applied = [d for d in out.delegates if d.delegate.lower() == name.lower()]
    if not applied:
        return f"benchmark_model did not say whether the {name} delegate was applied"
    if applied[-1].execution == "none":
        return f"the {name} delegate executed no part of the graph: the timings are CPU timings"
    return ""


def bench_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: push, run ``benchmark_model`` on the device, parse.

    payload: adb, serial, binary, backend, path, sha256, threads, protocol (the bench protocol),
    timeout_s (per adb step).
    """
    verify_tflite(payload["path"])
    spec = parse_backend(payload["backend"])
    adb, serial, binary = payload["adb"], payload["serial"], payload["binary"]
    step_s = float(payload.get("timeout_s", 300.0))
    sha = str(payload["sha256"])
    tag = sha[:16] if _HEX.match(sha[:16]) else "model"
    remote_bin = f"{spec.device_dir}/benchmark_model"
    remote_model = f"{spec.device_dir}/{tag}.tflite"
    s = [adb, "-s", serial]
    _checked([*s, "shell", f"mkdir -p {shlex.quote(spec.device_dir)}"], "adb shell mkdir", ADB_TIMEOUT_S)
    _checked([*s, "push", binary, remote_bin], f"adb push {Path(binary).name}", step_s)
    _checked([*s, "shell", f"chmod 755 {shlex.quote(remote_bin)}"], "adb shell chmod", ADB_TIMEOUT_S)
    _checked([*s, "push", str(payload["path"]), remote_model], "adb push model", step_s)
    flags = command_flags(spec, graph=remote_model, threads=int(payload["threads"]), protocol=payload["protocol"])
    remote = " ".join(shlex.quote(a) for a in [remote_bin, *flags]) + f" 2>&1; echo {RC_MARKER}$?"
    try:
        proc = _adb([*s, "shell", remote], timeout_s=step_s)
    finally:
        with contextlib.suppress(DelegateError):
            _adb([*s, "shell", f"rm -f {shlex.quote(remote_model)}"], timeout_s=ADB_TIMEOUT_S)
    text, rc = proc.stdout, None
    m = re.search(rf"^{re.escape(RC_MARKER)}(\d+)\s*$", text, re.MULTILINE)
    if m:
        rc, text = int(m.group(1)), text[: m.start()] + text[m.end():]
    elif proc.returncode != 0:
        rc = proc.returncode
    out = parse(text)
    summary = summarize_output(out, returncode=rc)
    summary["note"] = _delegate_note(spec, out)
    summary["protocol"].update(source="benchmark_model", device=serial, device_info=_device_info(adb, serial),
                               delegate=spec.delegate, command=["benchmark_model", *flags])
    return summary

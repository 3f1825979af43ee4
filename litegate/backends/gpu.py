"""The ``gpu`` backend: LiteRT's real GPU delegate (ML Drift over WebGPU/Vulkan) through ``CompiledModel``.

``ai_edge_litert.compiled_model.CompiledModel.from_file(path, GPU | CPU)`` hands every op the GPU
delegate accepts to ``libLiteRtWebGpuAccelerator.so`` and runs the rest on the CPU. On a machine
without a GPU, Mesa's software Vulkan driver (lavapipe, Mesa >= 24: ``make gpu-sim``) gives the
delegate a device: what it delegates and its fp16 numerics are the delegate's own, but its latency
is the CPU emulating a GPU and means nothing as GPU latency.

The delegate says what it refuses on stderr, e.g.::

    ERROR: Following operations are not supported by GPU delegate:
    GATHER: Only support 1D indices
    STRIDED_SLICE: Slice does not support shrink_axis_mask parameter.
    88 operations will run on the GPU, and the remaining 10 operations will run on the CPU.

:func:`parse_delegate_log` reads that (and the older ``Next operations ...`` / ``First N operations
...`` wording of the TFLite GPU delegate). A fully delegated graph prints no such block; then every
op of the main subgraph runs on the GPU.

``CompiledModel`` applies the delegate to every subgraph of the model (every signature, whichever
one is run), in subgraph order: each subgraph prints its own block (or none when fully delegated)
and each subgraph the delegate takes ops from then logs ``Initializing WebGPU-based API from
graph.`` once, so :attr:`DelegateLog.subgraphs` lists one report per subgraph.

Every delegate run happens in a child process (:func:`litegate.isolation.run_isolated`) whose fds 1
and 2 are re-pointed at a log file the parent chose, so the log survives a crash or a hang.
The Vulkan probe behind :func:`why_not_runnable` runs in a child too: a broken driver cannot take
the caller down.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from litegate.artifacts import save_npz
from litegate.backends.runtime import Runner
from litegate.errors import DelegateError, IsolationError, LitegateError, ModelLoadError
from litegate.isolation import read_tail, run_isolated
from litegate.tflite.flatbuffer import read_model
from litegate.tflite.verify import verify_tflite
from litegate.timing import measure, peak_rss_mb

__all__ = [
    "MIN_MESA",
    "DelegateLog",
    "Fallback",
    "GpuRun",
    "SubgraphReport",
    "VulkanDevice",
    "emulation_note",
    "parse_delegate_log",
    "probe_vulkan",
    "run_gpu",
    "usable_device",
    "why_not_runnable",
]

MIN_MESA = 24
GPU_SIM_FIX = ("run `make gpu-sim` as root (installs Mesa's software Vulkan driver, lavapipe, from "
               "bookworm-backports), or install this machine's GPU Vulkan driver")
SOURCE = "LiteRT CompiledModel GPU|CPU (ML Drift GPU delegate over WebGPU/Vulkan)"
_LOG_KEEP = 20_000

# --- the delegate's log ------------------------------------------------------------------------

_PREFIX = r"(?:[A-Z]\s+tflite\s*:\s*|ERROR:\s*|E\d{4}\s[\d:.]+\s+\d+\s+[\w.]+:\d+\]\s*)?"
_HEADER = re.compile(_PREFIX + r"(?:Following|Next) operations are not supported by GPU delegate:\s*$")
_OP_LINE = re.compile(_PREFIX + r"([A-Z][A-Z0-9_]*(?: [\w.:-]+)?):(?:\s(.*)|)$")
_SPLITS = (
    (re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU"),
     lambda m: (int(m[1]), int(m[2]))),
    (re.compile(r"First (\d+) operations will run on the GPU, and the remaining (\d+) on the CPU"),
     lambda m: (int(m[1]), int(m[2]))),
    (re.compile(r"No operations will run on the GPU, and all (\d+) operations will run on the CPU"),
     lambda m: (0, int(m[1]))),
)
_ADAPTER = re.compile(r"Selected adapter: (.+?)\s*$")
_KERNEL = re.compile(r"Initializing [\w-]+-based API from graph")
_ERROR = re.compile(r"^(?:ERROR: |E\d{4} \S+\s+\d+ \S+\] )")


@dataclasses.dataclass(frozen=True)
class Fallback:
    """One op type the GPU delegate refused, with the delegate's reason (empty if it gave none)."""

    op: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"op": self.op, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class SubgraphReport:
    """What the GPU delegate reported about one subgraph (one ``GetOpsToReplace`` call).

    Attributes:
        fallbacks: the refused op types with reasons, as listed (unique, sorted by the delegate).
        ops_on_gpu: ops the delegate took (None for a fully delegated subgraph: its log gives no count).
        ops_on_cpu: ops left to the CPU (0 for a fully delegated subgraph).
        fully_delegated: the delegate took every op (it printed no block, only its kernel line).
    """

    fallbacks: tuple[Fallback, ...] = ()
    ops_on_gpu: int | None = None
    ops_on_cpu: int = 0
    fully_delegated: bool = False


@dataclasses.dataclass(frozen=True)
class DelegateLog:
    """What the GPU delegate reported about one model.

    Attributes:
        fallbacks: op types (with reasons) the delegate refused, in the order it listed them; an op
            type refused for two reasons appears twice.
        ops_on_gpu: ops the delegate took, from its ``N operations will run on the GPU`` line
            (None when it printed no such line: a fully delegated graph, or no delegation at all).
        ops_on_cpu: ops left to the CPU, from the same line.
        adapter: the WebGPU adapter it selected (``llvmpipe (...), ..., adapterType=CPU / Software``).
        errors: other ``ERROR:`` lines (e.g. a compile failure), verbatim.
        subgraphs: one report per subgraph the delegate was applied to, in subgraph order: a block
            closed by its split line, or a fully delegated subgraph (a kernel line with no block
            before it). Logs of delegates that print no kernel line only show the blocks.
    """

    fallbacks: tuple[Fallback, ...] = ()
    ops_on_gpu: int | None = None
    ops_on_cpu: int | None = None
    adapter: str | None = None
    errors: tuple[str, ...] = ()
    subgraphs: tuple[SubgraphReport, ...] = ()

    @property
    def unsupported_ops(self) -> frozenset[str]:
        """The refused op type names (``GATHER``, ``STRIDED_SLICE``, ...)."""
        return frozenset(f.op for f in self.fallbacks)

    @property
    def shader_errors(self) -> tuple[str, ...]:
        """WebGPU validation errors (a kernel's WGSL that did not compile): the delegate's outputs are invalid.

        Seen with an int8 BERT on ai-edge-litert 2.3: ``Error while parsing WGSL: ... cannot assign
        'vec4<f16>' to 'vec4<i32>'``; the model still "runs" and returns the same numbers for every input.
        """
        return tuple(_strip_log_prefix(e) for e in self.errors if "Validation error" in e or "WGSL" in e)

    @property
    def software_adapter(self) -> bool:
        """True when the delegate ran on a CPU-emulated adapter (Mesa lavapipe / llvmpipe, SwiftShader)."""
        a = (self.adapter or "").lower()
        return "adaptertype=cpu" in a or "llvmpipe" in a or "swiftshader" in a or "arch=software" in a


def parse_delegate_log(text: str) -> DelegateLog:
    """Read the GPU delegate's coverage report out of a LiteRT/TFLite log.

    Args:
        text: the process's stderr (LiteRT ``ERROR:``/``INFO:`` lines, absl ``I0000`` lines, or
            logcat ``E tflite  :`` lines).

    Returns:
        The refused ops with reasons, the GPU/CPU op split, the adapter and any other error lines.
        When the log has several reports (several subgraphs or compilations), the last split line
        wins and the refused ops are the union, first listing first; :attr:`DelegateLog.subgraphs`
        keeps them apart.
    """
    fallbacks: list[Fallback] = []
    seen: set[tuple[str, str]] = set()
    gpu = cpu = None
    adapter = None
    errors: list[str] = []
    reports: list[SubgraphReport] = []
    block: list[Fallback] = []
    awaiting_kernel = False  # a block was closed by its split line; its kernel line comes next
    in_block = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if _HEADER.search(line):
            in_block = True
            block = []
            continue
        split = None
        for pattern, counts in _SPLITS:
            m = pattern.search(line)
            if m:
                split = counts(m)
                break
        if split is not None:
            gpu, cpu = split
            in_block = False
            reports.append(SubgraphReport(fallbacks=tuple(dict.fromkeys(block)), ops_on_gpu=gpu, ops_on_cpu=cpu))
            block = []
            awaiting_kernel = gpu > 0
            continue
        if _KERNEL.search(line):
            if not awaiting_kernel:
                reports.append(SubgraphReport(fully_delegated=True))
            awaiting_kernel = False
            in_block = False
            continue
        if in_block:
            m = _OP_LINE.fullmatch(line.strip())
            if m:
                item = (m[1], (m[2] or "").strip())
                block.append(Fallback(*item))
                if item not in seen:
                    seen.add(item)
                    fallbacks.append(Fallback(*item))
                continue
            if line.strip():  # anything else ends the listing
                in_block = False
        m = _ADAPTER.search(line)
        if m:
            adapter = m[1]
            continue
        m = _ERROR.match(line)
        if m and "not supported by GPU delegate" not in line:
            errors.append(line)
    return DelegateLog(fallbacks=tuple(fallbacks), ops_on_gpu=gpu, ops_on_cpu=cpu, adapter=adapter,
                       errors=tuple(errors[:50]), subgraphs=tuple(reports))


def _strip_log_prefix(line: str) -> str:
    """``E0000 00:00:17.9 21185 environment.cc:105] Validation error: ...`` -> ``Validation error: ...``."""
    m = re.match(r"^(?:ERROR: |E\d{4} \S+\s+\d+ \S+\] )(.*)$", line)
    return m[1] if m else line


def emulation_note(adapter: str) -> str:
    """What a report says about latency measured on a software Vulkan adapter."""
    return (f"GPU latency is emulated: the delegate ran on {adapter}, the CPU emulating a GPU, so these timings "
            "are not GPU latency; coverage (which ops the delegate takes) and fp16 numerics are real")


# --- the Vulkan device -------------------------------------------------------------------------

_DEVICE_TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
_VK_RESULTS = {-1: "VK_ERROR_OUT_OF_HOST_MEMORY", -3: "VK_ERROR_INITIALIZATION_FAILED",
               -6: "VK_ERROR_LAYER_NOT_PRESENT", -7: "VK_ERROR_EXTENSION_NOT_PRESENT",
               -9: "VK_ERROR_INCOMPATIBLE_DRIVER"}


@dataclasses.dataclass(frozen=True)
class VulkanDevice:
    """One Vulkan physical device as the loader reports it."""

    name: str
    device_type: str
    api_version: str
    driver_name: str = ""
    driver_info: str = ""

    @property
    def software(self) -> bool:
        """A CPU implementation (lavapipe, SwiftShader): real coverage and numerics, emulated latency."""
        return self.device_type == "cpu"

    @property
    def mesa_version(self) -> tuple[int, int] | None:
        """(major, minor) of a Mesa driver (``driverInfo`` ``Mesa 25.0.7 ...``), else None."""
        m = re.search(r"\bMesa (\d+)\.(\d+)", self.driver_info)
        return (int(m[1]), int(m[2])) if m else None

    @property
    def lavapipe(self) -> bool:
        return self.driver_name == "llvmpipe" or "llvmpipe" in self.name

    def describe(self) -> str:
        """``llvmpipe (LLVM 15.0.6, 256 bits), cpu, Mesa 25.0.7 (LLVM 15.0.6), Vulkan 1.4``."""
        parts = [self.name, self.device_type]
        if self.driver_info:
            parts.append(self.driver_info)
        parts.append(f"Vulkan {self.api_version}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class _AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class _InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(_AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


class _Properties(ctypes.Structure):  # VkPhysicalDeviceProperties head; the tail (limits) is padding here
    _fields_ = [("apiVersion", ctypes.c_uint32), ("driverVersion", ctypes.c_uint32), ("vendorID", ctypes.c_uint32),
                ("deviceID", ctypes.c_uint32), ("deviceType", ctypes.c_int), ("deviceName", ctypes.c_char * 256),
                ("pipelineCacheUUID", ctypes.c_uint8 * 16), ("rest", ctypes.c_uint8 * 4096)]


class _DriverProperties(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("driverID", ctypes.c_int),
                ("driverName", ctypes.c_char * 256), ("driverInfo", ctypes.c_char * 256),
                ("conformanceVersion", ctypes.c_uint8 * 4)]


class _Properties2(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("properties", _Properties)]


def _vk_version(v: int) -> str:
    return f"{v >> 22 & 0x7F}.{v >> 12 & 0x3FF}"


def vulkan_devices() -> list[VulkanDevice]:
    """The Vulkan physical devices of this machine, read in this process through ``libvulkan.so.1``.

    Call it in a child process (:func:`probe_vulkan` does): a broken driver can crash its caller.

    Raises:
        DelegateError: no Vulkan loader, or the loader found no driver; the message says which.
    """
    try:
        vk = ctypes.CDLL("libvulkan.so.1")
    except OSError:
        raise DelegateError(f"no Vulkan loader (libvulkan.so.1 not found): {GPU_SIM_FIX}") from None
    vk.vkCreateInstance.argtypes = [ctypes.POINTER(_InstanceInfo), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    vk.vkEnumeratePhysicalDevices.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    vk.vkGetPhysicalDeviceProperties.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Properties)]
    vk.vkDestroyInstance.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    app = _AppInfo(0, None, b"litegate", 1, b"litegate", 1, (1 << 22) | (1 << 12))  # Vulkan 1.1
    info = _InstanceInfo(1, None, 0, ctypes.pointer(app), 0, None, 0, None)
    instance = ctypes.c_void_p()
    rc = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if rc != 0:
        raise DelegateError(f"no Vulkan driver (vkCreateInstance: {_VK_RESULTS.get(rc, rc)}): {GPU_SIM_FIX}")
    try:
        count = ctypes.c_uint32()
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        handles = (ctypes.c_void_p * count.value)()
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
        props2 = getattr(vk, "vkGetPhysicalDeviceProperties2", None)
        if props2 is not None:
            props2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Properties2)]
        devices = []
        for handle in handles[: count.value]:
            p = _Properties()
            vk.vkGetPhysicalDeviceProperties(handle, ctypes.byref(p))
            driver_name = driver_info = ""
            if props2 is not None and p.apiVersion >= (1 << 22) | (2 << 12):  # VkPhysicalDeviceDriverProperties: 1.2
                drv = _DriverProperties(1000196000, None)
                p2 = _Properties2(1000059001, ctypes.cast(ctypes.pointer(drv), ctypes.c_void_p))
                props2(handle, ctypes.byref(p2))
                driver_name = drv.driverName.decode(errors="replace")
                driver_info = drv.driverInfo.decode(errors="replace")
            devices.append(VulkanDevice(name=p.deviceName.decode(errors="replace"),
                                        device_type=_DEVICE_TYPES.get(p.deviceType, "other"),
                                        api_version=_vk_version(p.apiVersion), driver_name=driver_name,
                                        driver_info=driver_info))
        return devices
    finally:
        vk.vkDestroyInstance(instance, None)


def probe_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: the Vulkan devices, or why there are none."""
    try:
        return {"devices": [d.to_dict() for d in vulkan_devices()], "reason": None}
    except DelegateError as exc:
        return {"devices": [], "reason": exc.message}


def usable_device(devices: Sequence[VulkanDevice]) -> tuple[VulkanDevice | None, str | None]:
    """The device the delegate can use (a hardware GPU first), or the reason none can serve.

    Mesa's lavapipe older than :data:`MIN_MESA` lacks what LiteRT's WebGPU (Dawn) backend needs.
    """
    if not devices:
        return None, f"no Vulkan device (the Vulkan loader found no driver): {GPU_SIM_FIX}"
    ok = [d for d in devices if not (d.lavapipe and (d.mesa_version or (0, 0)) < (MIN_MESA, 0))]
    if not ok:
        old = devices[0]
        mesa = old.mesa_version
        which = f"Mesa {mesa[0]}.{mesa[1]}" if mesa else f"Mesa of unknown version ({old.driver_info or old.name})"
        return None, (f"{which} lavapipe is too old for LiteRT's WebGPU GPU delegate (needs Mesa >= {MIN_MESA}): "
                      f"run `make gpu-sim` as root to install Mesa >= {MIN_MESA} from bookworm-backports")
    ok.sort(key=lambda d: d.software)
    return ok[0], None


def _litert_reason() -> str | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        return "ai-edge-litert is not installed (pip install ai-edge-litert)"
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / "compiled_model.py").is_file():
        return f"this ai-edge-litert ({folder}) has no CompiledModel API: pip install 'ai-edge-litert>=2'"
    if not (folder / "libLiteRtWebGpuAccelerator.so").is_file():
        return f"this ai-edge-litert build has no GPU accelerator (no libLiteRtWebGpuAccelerator.so in {folder})"
    return None


@functools.lru_cache(maxsize=1)
def probe_vulkan(timeout_s: float = 60.0) -> tuple[tuple[VulkanDevice, ...], str | None]:
    """This machine's Vulkan devices (probed once per process, in a child), or why there are none."""
    try:
        r = run_isolated("litegate.backends.gpu:probe_job", {}, timeout_s=timeout_s)
    except IsolationError as exc:
        return (), f"the Vulkan driver probe failed ({exc.message}): {GPU_SIM_FIX}"
    except LitegateError as exc:
        return (), exc.message
    return tuple(VulkanDevice(**d) for d in r["devices"]), r["reason"]


def why_not_runnable() -> str | None:
    """None when the GPU delegate can run here (LiteRT's WebGPU accelerator and a usable Vulkan device)."""
    reason = _litert_reason()
    if reason:
        return reason
    devices, reason = probe_vulkan()
    if reason:
        return reason
    return usable_device(devices)[1]


# --- running a model ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """One model through the GPU delegate.

    Attributes:
        fully_accelerated: ``CompiledModel.is_fully_accelerated()``.
        log: the delegate's coverage report (:func:`parse_delegate_log`).
        ops_total: ops in the subgraph of the signature that ran (what that subgraph's report counts).
        init_ms: ``CompiledModel.from_file`` (the delegate's partitioning).
        first_ms: the first inference, which compiles the GPU kernels (shaders).
        samples_ms: timed inferences (write inputs, run, read outputs); emulated on a software adapter.
        peak_rss_mb: the child's peak resident set size.
        n_inputs: input samples run.
        outputs: output name -> one row per input sample, dequantized as :class:`Runner` does.
        cpu_max_abs_diff: output name -> max |GPU - CPU reference| when asked for.
        adapter: the adapter the delegate selected (from its log, else from the Vulkan probe).
        emulated: the adapter is a CPU implementation (lavapipe): latency is not GPU latency.
        log_text: the end of the child's log.
        subgraph: the subgraph index of the signature that ran.
    """

    fully_accelerated: bool
    log: DelegateLog
    ops_total: int | None
    init_ms: float
    first_ms: float | None
    samples_ms: tuple[float, ...]
    peak_rss_mb: float
    n_inputs: int
    outputs: Mapping[str, np.ndarray]
    cpu_max_abs_diff: Mapping[str, float]
    adapter: str
    emulated: bool
    log_text: str
    subgraph: int = 0

    @property
    def report(self) -> SubgraphReport | None:
        """The delegate's report about the subgraph that ran, when the log has one per subgraph."""
        subs = self.log.subgraphs
        return subs[self.subgraph] if 0 <= self.subgraph < len(subs) else None

    @property
    def ops_on_gpu(self) -> int | None:
        report = self.report
        if report is not None:
            return self.ops_total if report.fully_delegated else report.ops_on_gpu
        if self.log.ops_on_gpu is not None:
            return self.log.ops_on_gpu
        return self.ops_total if self.fully_accelerated else None

    @property
    def ops_on_cpu(self) -> int | None:
        report = self.report
        if report is not None:
            return report.ops_on_cpu
        if self.log.ops_on_cpu is not None:
            return self.log.ops_on_cpu
        return 0 if self.fully_accelerated else self.ops_total

    def protocol(self) -> dict[str, Any]:
        """The coverage and how it was measured, for a :class:`BenchResult`'s ``protocol``."""
        return {
            "source": SOURCE,
            "adapter": self.adapter,
            "latency_emulated": self.emulated,
            "fully_accelerated": self.fully_accelerated,
            "ops_total": self.ops_total,
            "ops_on_gpu": self.ops_on_gpu,
            "ops_on_cpu": self.ops_on_cpu,
            "gpu_fallback": [f.to_dict() for f in self.log.fallbacks],
            **({"delegate_errors": [_strip_log_prefix(e) for e in self.log.errors[:10]]} if self.log.errors else {}),
            **({"max_abs_diff_vs_cpu": dict(self.cpu_max_abs_diff)} if self.cpu_max_abs_diff else {}),
        }


@contextlib.contextmanager
def _fds_to(path: str) -> Iterator[None]:
    """Point fds 1 and 2 (where LiteRT's native code logs) at ``path`` for the block."""
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers, before the fds move back
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def gpu_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: one model through ``CompiledModel`` with GPU|CPU acceleration.

    payload: ``path``, ``log_path`` (fds 1/2 go there), ``threads``, ``signature`` (None: the first),
    optional ``inputs_npz`` (rows of encoded text, as for the latency cells) with ``out_npz`` (the GPU
    outputs), ``compare_cpu`` and ``max_samples``, optional ``protocol`` (time inferences as
    :func:`litegate.timing.measure` does).
    """
    with _fds_to(payload["log_path"]):
        return _gpu_job(payload)


def _gpu_job(payload: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert.compiled_model import (  # LiteRT runtime: only where a model runs
        CompiledModel,
        CpuOptions,
        HardwareAccelerator,
        Options,
    )

    path = str(payload["path"])
    threads = int(payload.get("threads", 1))
    content = verify_tflite(path)
    # the CPU reference kernels: I/O (de)quantization and role mapping as everywhere in litegate, and CPU outputs
    wanted = payload.get("signature")
    reference = Runner(path, backend="cpu", threads=threads, signature=wanted) if payload.get("inputs_npz") else None
    options = Options(hardware_accelerators=HardwareAccelerator.GPU | HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=threads))
    t0 = time.perf_counter()
    try:
        model = CompiledModel.from_file(path, options=options)
    except (RuntimeError, ValueError) as exc:
        raise DelegateError(f"LiteRT could not compile {path} for GPU|CPU: {' '.join(str(exc).split())}") from None
    init_ms = (time.perf_counter() - t0) * 1e3
    fully = model.is_fully_accelerated()
    signatures = model.get_signature_list()
    if not signatures:
        raise ModelLoadError(f"{path}: model has no signatures")
    if wanted and wanted not in signatures:
        raise ModelLoadError(f"{path}: no signature {wanted!r} (has {', '.join(signatures)})")
    key = wanted or (reference.signature if reference and reference.signature in signatures else next(iter(signatures)))
    subgraph, ops_total = _signature_subgraph(content, key)
    index = model.get_signature_index(key)
    in_names = list(signatures[key]["inputs"])
    out_names = list(signatures[key]["outputs"])
    in_details = model.get_input_tensor_details(key)
    out_details = model.get_output_tensor_details(key)
    inputs = model.create_input_buffers(index)
    outputs = model.create_output_buffers(index)

    def run_once(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, buf in zip(in_names, inputs, strict=True):
            buf.write(np.ascontiguousarray(feed[name], dtype=np.dtype(in_details[name]["dtype"])))
        model.run_by_index(index, inputs, outputs)
        got = {}
        for name, buf in zip(out_names, outputs, strict=True):
            d = out_details[name]
            shape = [int(s) for s in d["shape"]]
            got[name] = buf.read(int(np.prod(shape)), np.dtype(d["dtype"])).reshape(shape)
        return got

    result: dict[str, Any] = {"fully_accelerated": bool(fully), "ops_total": ops_total, "subgraph": subgraph,
                              "init_ms": init_ms,
                              "first_ms": None, "samples_ms": [], "signature": key, "n_inputs": 0,
                              "max_abs_diff_vs_cpu": {}}
    if reference is not None:
        with np.load(payload["inputs_npz"]) as data:
            arrays = {k: data[k] for k in data.files}
        n = len(next(iter(arrays.values())))
        limit = int(payload.get("max_samples") or n)
        feeds = [reference.prepare({k: v[i : i + 1] for k, v in arrays.items()}) for i in range(min(n, limit))]
        result["n_inputs"] = len(feeds)
        if payload.get("protocol") is not None:
            first_ms, samples = measure(run_once, feeds, payload["protocol"])
            result["first_ms"], result["samples_ms"] = first_ms, samples
        rows: dict[str, list[np.ndarray]] = {}
        for i, feed in enumerate(feeds):
            t = time.perf_counter()
            outs = reference.dequantize(run_once(feed))
            if i == 0 and result["first_ms"] is None:
                result["first_ms"] = (time.perf_counter() - t) * 1e3
            for k, v in outs.items():
                rows.setdefault(k, []).append(np.asarray(v)[0])
        stacked = {k: np.stack(v) for k, v in rows.items()}
        if payload.get("out_npz"):
            save_npz(payload["out_npz"], stacked)
        if payload.get("compare_cpu"):
            ref = reference.run_batch({k: v[: len(feeds)] for k, v in arrays.items()})
            result["max_abs_diff_vs_cpu"] = {
                k: float(np.max(np.abs(stacked[k].astype(np.float64) - np.asarray(ref[k], np.float64))))
                for k in stacked if k in ref}
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _signature_subgraph(content: bytes, key: str) -> tuple[int, int | None]:
    """(subgraph index, op count) of signature ``key``: what the delegate's report for it counts.

    A model without signature defs (or a key it does not list) maps to subgraph 0.
    """
    try:
        model = read_model(content)
        raw = schema.Model.GetRootAs(content, 0)
        index = 0
        for i in range(raw.SignatureDefsLength()):
            sig = raw.SignatureDefs(i)
            if (sig.SignatureKey() or b"").decode("utf-8", "replace") == key:
                index = int(sig.SubgraphIndex())
                break
        return index, len(model.subgraph_ops(index))
    except LitegateError:
        return 0, None


def _runtime_dir(tmp: Path) -> dict[str, str]:
    """``XDG_RUNTIME_DIR`` for the child: the caller's, or a private one (WebGPU/Vulkan look for it)."""
    current = os.environ.get("XDG_RUNTIME_DIR", "")
    if current and Path(current).is_dir():
        return {}
    run = tmp / "xdg-runtime"
    run.mkdir(mode=0o700, exist_ok=True)
    return {"XDG_RUNTIME_DIR": str(run)}


def _read_tail(path: Path) -> str:
    return read_tail(path, _LOG_KEEP)


def run_gpu(path: str | Path, *, inputs: Mapping[str, np.ndarray] | str | Path | None = None, threads: int = 1,
            protocol: Mapping[str, Any] | None = None, compare_cpu: bool = False, max_samples: int | None = None,
            signature: str | None = None, timeout_s: float = 300.0, mem_mb: int | None = None) -> GpuRun:
    """Run ``path`` through LiteRT's GPU delegate (GPU|CPU) in a child process and read what it says.

    Args:
        path: a .tflite model.
        inputs: encoded inputs, one row per sample (arrays, or an .npz of them), mapped onto the
            model's inputs by role as :class:`litegate.backends.runtime.Runner` does; None runs no
            inference (coverage only).
        threads: CPU threads for the ops the delegate leaves to the CPU.
        protocol: time inferences with this protocol (:data:`litegate.timing.DEFAULT_PROTOCOL`
            keys); None times nothing.
        compare_cpu: also run the samples on the CPU reference kernels and report max |GPU - CPU|.
        max_samples: use at most this many rows of ``inputs``.
        signature: the signature to run (e.g. a generator's ``decode``); default: the first.
        timeout_s: wall-clock limit of the child (the first inference compiles shaders: ~10 s on lavapipe).
        mem_mb: optional cap on the child's resident memory (its whole process group).

    Returns:
        The delegate's coverage, the outputs and the timings.

    Raises:
        DelegateError: the GPU backend cannot run here, or LiteRT refused the model.
        IsolationError: the child crashed or hung; ``stderr`` holds the end of the delegate's log.
        ModelLoadError: ``path`` is not a TFLite model.
    """
    verify_tflite(path)
    reason = why_not_runnable()
    if reason:
        raise DelegateError(reason)
    devices, _ = probe_vulkan()
    device, _ = usable_device(devices)
    with tempfile.TemporaryDirectory(prefix="litegate-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        log_path, out_npz = tmp / "delegate.log", tmp / "outputs.npz"
        payload: dict[str, Any] = {"path": str(Path(path).resolve()), "log_path": str(log_path), "threads": threads,
                                   "compare_cpu": compare_cpu, "max_samples": max_samples, "signature": signature,
                                   "protocol": dict(protocol) if protocol is not None else None}
        if inputs is not None:
            if isinstance(inputs, Mapping):
                npz = tmp / "inputs.npz"
                save_npz(npz, {k: np.asarray(v) for k, v in inputs.items()})
                inputs = npz
            payload["inputs_npz"] = str(inputs)
            payload["out_npz"] = str(out_npz)
        env = {"TF_CPP_MIN_LOG_LEVEL": "0", **_runtime_dir(tmp)}  # the delegate's coverage lines are INFO/ERROR
        try:
            r = run_isolated("litegate.backends.gpu:gpu_job", payload, timeout_s=timeout_s, mem_mb=mem_mb, env=env)
        except IsolationError as exc:
            raise IsolationError(exc.message, kind=exc.kind, stderr=_read_tail(log_path) or exc.stderr) from None
        except ModelLoadError:
            raise
        except LitegateError as exc:
            log = parse_delegate_log(_read_tail(log_path))
            detail = f" (delegate: {log.errors[-1]})" if log.errors else ""
            raise type(exc)(exc.message + detail) from None
        text = _read_tail(log_path)
        outputs: dict[str, np.ndarray] = {}
        if out_npz.is_file():
            with np.load(out_npz) as data:
                outputs = {k: data[k] for k in data.files}
    log = parse_delegate_log(text)
    adapter = log.adapter or (device.describe() if device else "unknown adapter")
    emulated = log.software_adapter if log.adapter else bool(device and device.software)
    return GpuRun(fully_accelerated=r["fully_accelerated"], log=log, ops_total=r["ops_total"],
                  subgraph=int(r.get("subgraph", 0)), init_ms=r["init_ms"],
                  first_ms=r["first_ms"], samples_ms=tuple(r["samples_ms"]), peak_rss_mb=r["peak_rss_mb"],
                  n_inputs=r["n_inputs"], outputs=outputs, cpu_max_abs_diff=r["max_abs_diff_vs_cpu"], adapter=adapter,
                  emulated=emulated, log_text=text)

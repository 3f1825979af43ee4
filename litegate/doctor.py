"""``litegate doctor``: what can run on this machine, and what would fix what cannot."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

from litegate.backends import adb, aihub, arm, gpu
from litegate.backends import qnn as htp
from litegate.backends.registry import KNOWN, why_not_runnable
from litegate.compat import coreml, qnn
from litegate.errors import DelegateError

ADB_INSTALL = "install Android platform-tools (apt-get install adb, or sdkmanager 'platform-tools') and put adb on PATH"
BINARY_FIX = (f"get an Android build of benchmark_model (TFLite's prebuilt android_aarch64_benchmark_model, or bazel "
              f"build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model) and export "
              f"{adb.BINARY_ENV}=/path/to/benchmark_model")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check() -> list[dict[str, Any]]:
    """One row per component: name, ok, detail, fix."""
    rows: list[dict[str, Any]] = []
    for dist, why in (("tensorflow", "conversion and quantization"), ("tf-keras", "building and pruning models"),
                      ("ai-edge-litert", "running .tflite models"), ("tokenizers", "tokenizing task text")):
        v = _version(dist)
        rows.append({"name": dist, "ok": v is not None, "detail": f"{v} ({why})" if v else f"not installed ({why})",
                     "fix": "" if v else f"pip install {dist}"})
    runtime_ok = False
    if _version("ai-edge-litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (LiteRT runtime: a probe of whether it loads)

            runtime_ok = True
        except Exception as exc:  # a broken wheel raises anything
            rows.append({"name": "ai-edge-litert import", "ok": False, "detail": str(exc), "fix": "reinstall ai-edge-litert"})
    for backend in KNOWN:
        reason = why_not_runnable(backend)
        ok = reason is None and runtime_ok
        fix = ""
        if backend == "hexagon":
            fix = "use adb:SERIAL?delegate=hexagon on a Snapdragon device (Hexagon 680-690), or external:/path/libhexagon_delegate.so"
        elif backend == "coreml":
            fix = ("run on an iPhone/iPad (A12 or newer) or a Mac (TFLite's Core ML delegate; Core ML ML Programs "
                   "converted by coremltools are the mlprogram target)")
        elif backend == "gpu":
            rows.append(_gpu_row(reason, runtime_ok))
            continue
        elif backend == arm.NAME:
            rows.append(_arm_row(reason))
            continue
        elif not runtime_ok:
            fix = "pip install ai-edge-litert"
        rows.append({"name": f"backend {backend}", "ok": ok, "detail": "can run here" if ok else (reason or "runtime missing"),
                     "fix": "" if ok else fix})
    rows.append({"name": "backend external", "ok": runtime_ok,
                 "detail": ("any TFLite delegate .so via load_delegate: bench.backends = "
                            "[\"external:/path/libdelegate.so?key=value&key2=value2\"] (options go to the delegate)")
                 if runtime_ok else "needs ai-edge-litert to load delegate libraries",
                 "fix": "" if runtime_ok else "pip install ai-edge-litert"})
    rows.extend(_adb_rows())
    rows.append(_aihub_row())
    rows.append(_qnn_row())
    rows.append(_mlprogram_row())
    return rows


def _mlprogram_row() -> dict[str, Any]:
    """Core ML ML Programs (check.delegates = ["mlprogram[:DEPLOYMENT]"]): coremltools installed, and where prediction runs."""
    version = coreml.coremltools_version()
    if version is None:
        return {"name": "compat mlprogram", "ok": False, "fix": coreml.INSTALL,
                "detail": "coremltools not installed (Core ML ML Program conversion of each float variant)"}
    return {"name": "compat mlprogram", "ok": True, "fix": "",
            "detail": f"coremltools {version}: check.delegates = [\"mlprogram[:DEPLOYMENT]\"] converts each float variant "
                      f"to a .mlpackage (default {coreml.DEFAULT_DEPLOYMENT}); prediction cells not run: "
                      f"{coreml.prediction_reason()}"}


def _aihub_row() -> dict[str, Any]:
    """Qualcomm AI Hub (aihub:DEVICE): the client installed and a token found; no network call."""
    version = _version("qai-hub")
    if version is None or not aihub.client_installed():
        return {"name": "backend aihub", "ok": False, "detail": aihub.INSTALL, "fix": "pip install 'litegate[aihub]'"}
    source = aihub.token_source()
    if source is None:
        return {"name": "backend aihub", "ok": False, "detail": f"qai-hub {version}; {aihub.NO_TOKEN}",
                "fix": (f"export {aihub.TOKEN_ENV}=<token from AI Hub's account page>, or run "
                        "'qai-hub configure --api_token <token>'")}
    return {"name": "backend aihub", "ok": True, "fix": "",
            "detail": f"qai-hub {version}; token from {source}; bench.backends = [\"aihub:DEVICE[?compute_unit="
                      "npu|gpu|cpu]\"] runs on a real phone (device names: qai-hub list-devices; not checked here)"}


def _qnn_row() -> dict[str, Any]:
    """Qualcomm's HTP compiler (litegate check --delegate qnn:SOC): LiteRT's AOT plugin plus the QNN libraries."""
    reason = htp.why_not_available()
    if reason:
        return {"name": "compat qnn", "ok": False, "detail": reason, "fix": htp.INSTALL}
    return {"name": "compat qnn", "ok": True, "fix": "",
            "detail": f"Qualcomm HTP compiler (ai-edge-litert {_version('ai-edge-litert')}, onnxruntime-qnn "
                      f"{_version('onnxruntime-qnn')}): check.delegates = [\"qnn:{qnn.DEFAULT_SOC}\"]; the compile "
                      "verdict, and accuracy on QNN's x86 HTP emulator "
                      + (f"(not here: {emu})" if (emu := htp.emulator_why_not()) else "(numerics only: no latency)")}


def _gpu_row(reason: str | None, runtime_ok: bool) -> dict[str, Any]:
    """LiteRT's GPU delegate: can it run, on which Vulkan device, and what would fix it."""
    if reason is not None or not runtime_ok:
        if not runtime_ok:
            return {"name": "backend gpu", "ok": False, "detail": reason or "runtime missing",
                    "fix": "pip install ai-edge-litert"}
        detail, sep, fix = (reason or "").partition(": run `make gpu-sim`")
        return {"name": "backend gpu", "ok": False, "detail": detail,
                "fix": f"run `make gpu-sim`{fix}" if sep else "install ai-edge-litert >= 2 with its GPU accelerator"}
    devices, _ = gpu.probe_vulkan()
    device, _ = gpu.usable_device(devices)
    where = device.describe() if device else "a Vulkan device"
    detail = f"LiteRT GPU delegate (ML Drift over WebGPU/Vulkan) on {where}"
    if device is not None and device.software:
        detail += ("; a software Vulkan device: delegate coverage and fp16 numerics are real, latency is CPU "
                   "emulation and means nothing as GPU latency")
    return {"name": "backend gpu", "ok": True, "detail": detail, "fix": ""}


def _arm_row(reason: str | None) -> dict[str, Any]:
    """The emulated Arm CPU: what ``make arm-sim`` installed, or what would make it run."""
    setup = arm.read_setup()[0]
    if reason or setup is None:
        return {"name": f"backend {arm.NAME}", "ok": False, "detail": reason or "not set up",
                "fix": "sudo make arm-sim (Debian x86_64: QEMU user mode, an arm64 debootstrap root, aarch64 LiteRT, "
                       f"the instruction-count plugin; under {arm.home()}, or ${arm.ROOT_ENV})"}
    return {"name": f"backend {arm.NAME}", "ok": True, "fix": "",
            "detail": f"aarch64 LiteRT {setup.litert} under {setup.qemu} on a pinned {setup.cpu} ({setup.home}): "
                      f"bench.backends = [\"{arm.FORM}\"] gives accuracy on ARM kernels and instructions per "
                      "inference (never a latency)"}


def _adb_rows() -> list[dict[str, Any]]:
    """adb itself, the attached devices, and the benchmark_model binary the adb backend pushes."""
    rows: list[dict[str, Any]] = []
    tool = adb.find_adb()
    if tool is None:
        rows.append({"name": "backend adb", "ok": False, "detail": "adb not found on PATH", "fix": ADB_INSTALL})
    else:
        try:
            devices = adb.list_devices(tool)
        except DelegateError as exc:
            rows.append({"name": "backend adb", "ok": False, "detail": f"{tool}: {exc.message}",
                         "fix": "run 'adb kill-server; adb start-server' and check 'adb devices'"})
            devices = None
        if devices is not None:
            ready = [s for s, state in devices if state == "device"]
            listed = ", ".join(f"{s} ({state})" for s, state in devices)
            if ready:
                rows.append({"name": "backend adb", "ok": True, "detail": f"{tool}; devices: {listed}; "
                             f"use adb or adb:SERIAL[?delegate=gpu|hexagon|nnapi|xnnpack|cpu]", "fix": ""})
            elif devices:
                rows.append({"name": "backend adb", "ok": False, "detail": f"{tool}; no device ready: {listed}",
                             "fix": "accept the USB debugging prompt on the device (unauthorized) or reconnect it (offline)"})
            else:
                rows.append({"name": "backend adb", "ok": False, "detail": f"{tool}; no device attached",
                             "fix": "connect a device with USB debugging enabled, or 'adb connect HOST:PORT'"})
    binary = os.environ.get(adb.BINARY_ENV, "")
    if not binary:
        rows.append({"name": "benchmark_model", "ok": False,
                     "detail": f"{adb.BINARY_ENV} is not set (the adb backend pushes this binary to the device)",
                     "fix": BINARY_FIX})
    elif not Path(binary).is_file():
        rows.append({"name": "benchmark_model", "ok": False, "detail": f"{adb.BINARY_ENV}={binary} does not exist",
                     "fix": BINARY_FIX})
    else:
        rows.append({"name": "benchmark_model", "ok": True, "detail": f"{adb.BINARY_ENV}={binary}", "fix": ""})
    return rows

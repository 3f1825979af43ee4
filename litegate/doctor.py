"""``litegate doctor``: what can run on this machine, and what would fix what cannot."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from litegate.delegates.runtime import KNOWN, why_not_runnable


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
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401

            runtime_ok = True
        except Exception as exc:  # a broken wheel raises anything
            rows.append({"name": "ai-edge-litert import", "ok": False, "detail": str(exc), "fix": "reinstall ai-edge-litert"})
    for backend in KNOWN:
        reason = why_not_runnable(backend)
        ok = reason is None and runtime_ok
        fix = ""
        if backend == "hexagon":
            fix = "run on a Snapdragon device (Hexagon 680-690) over adb, or pass the delegate .so"
        elif backend == "coreml":
            fix = "run on an iPhone/iPad (A12 or newer) or a Mac"
        elif backend == "gpu":
            fix = "GPU execution through LiteRT's CompiledModel is planned; use static compatibility meanwhile"
        elif not runtime_ok:
            fix = "pip install ai-edge-litert"
        rows.append({"name": f"backend {backend}", "ok": ok, "detail": "can run here" if ok else (reason or "runtime missing"),
                     "fix": "" if ok else fix})
    return rows

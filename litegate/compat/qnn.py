"""Qualcomm HTP (QNN) compatibility from Qualcomm's own compiler: a full ahead-of-time compile per SoC.

The verdict for a modern Snapdragon NPU comes from compiling, not from rules: :mod:`litegate.backends.qnn`
runs Qualcomm's HTP compiler (through LiteRT's AOT Qualcomm plugin) and parses its log; this module names the
targets (``qnn[:SOC]``) and turns the compiler's verdict into a compatibility report: ops offloaded or
refused with QNN's reasons, partitions, compile time and compiled size.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from litegate.backends import qnn as htp
from litegate.compat.partition import tflite_node_subsets
from litegate.compat.summary import summed
from litegate.tflite.flatbuffer import ModelInfo
from litegate.types import CompatPartition, CompatReport, OpCompat, Status

PREFIX = "qnn"
DEFAULT_SOC = "SM8650"  # Snapdragon 8 Gen 3
INSTALL = htp.INSTALL
SOURCE = "Qualcomm AI Engine Direct (QNN) HTP compiler through LiteRT's AOT Qualcomm plugin"
TIMEOUT_S = htp.TIMEOUT_S

_HTP_VERSION = re.compile(r"has incorrect Value (\d+), expected >= (\d+)")


def is_qnn_target(name: str) -> bool:
    """True for ``qnn`` and ``qnn:SOC``."""
    return name == PREFIX or name.startswith(PREFIX + ":")


def known_socs() -> tuple[str, ...]:
    """The Snapdragon SoCs the installed LiteRT's Qualcomm AOT target knows (``SM8650``, ...)."""
    from ai_edge_litert.aot.vendors.qualcomm.target import (
        SocModel,  # LiteRT's AOT package: only for qnn targets
    )

    return tuple(s.value for s in SocModel if s.value != "ALL")


def parse_target(name: str) -> str:
    """The SoC of ``qnn[:SOC]`` (``qnn`` alone: :data:`DEFAULT_SOC`).

    Raises:
        ValueError: not a qnn target, or a SoC the compiler does not know (the message lists them).
    """
    if not is_qnn_target(name):
        raise ValueError(f"{name!r} is not a qnn target (qnn or qnn:SOC, e.g. qnn:{DEFAULT_SOC})")
    soc = name.partition(":")[2].strip().upper() or DEFAULT_SOC
    socs = known_socs()
    if soc not in socs:
        raise ValueError(f"unknown Snapdragon SoC {soc!r} for qnn (known: {', '.join(socs)})")
    return soc


def report(model: ModelInfo, path: str | Path, target: str, *, model_name: str = "",
           timeout_s: float = TIMEOUT_S) -> CompatReport:
    """The compiler's verdict for ``model`` on ``target`` (``qnn[:SOC]``) as a compatibility report.

    Ops the compiler refused are not delegated, with QNN's reason; the others are, in partitions formed as
    TFLite forms them (the compiler's own partition count is checked against them in ``extra``). A graph that
    fails to compile is delegated nowhere (``model_reason`` says why); a compiler that cannot run here is
    ``not_run`` with the command that fixes it, never a zero.
    """
    soc = parse_target(target)
    name = f"{PREFIX}:{soc}"
    title = f"Qualcomm HTP on {soc} (QNN AOT compile)"
    verdict = htp.compile_model(path, soc, timeout_s=timeout_s)
    base: dict[str, Any] = {"delegate": name, "title": title, "model": model_name, "notes": (f"verdict of {SOURCE}",)}
    if verdict["status"] == "setup_error":
        return _empty(status=Status.NOT_RUN, reason=verdict["errors"][0] if verdict["errors"] else INSTALL,
                      **base)
    if verdict["status"] in ("timeout", "crashed", "bad_model", "error"):
        status = Status.TIMEOUT if verdict["status"] == "timeout" else Status.FAILED
        why = "; ".join(verdict.get("errors", [])) or verdict["status"]
        return _empty(status=status, reason=f"compiler {verdict['status']}: {why}", **base,
                      extra={"seconds": verdict["seconds"]})
    refused = {(r["subgraph"], r["op_index"]): r for r in verdict["refused"]}
    compiled = verdict["status"] == "compiled"
    model_reason = "" if compiled else ("compiled ops validated but the graph failed to compile for the HTP: "
                                        + ("; ".join(verdict.get("errors", [])) or "no reason logged"))
    ops: list[OpCompat] = []
    partitions: list[CompatPartition] = []
    for s in range(len(model.subgraph_tensors)):
        sub = model.subgraph_ops(s)
        supported = {o.index for o in sub if (s, o.index) not in refused}
        for kind, group in tflite_node_subsets(sub, supported):
            if kind:
                partitions.append(CompatPartition(subgraph=s, ops=tuple(o.index for o in group), delegated=compiled,
                                                  reason="" if compiled else "the graph failed to compile",
                                                  macs=sum(o.macs for o in group)))
        for o in sub:
            r = refused.get((s, o.index))
            reason = ("; ".join(_glossed(x) for x in r["reasons"]) or "not supported by the Qualcomm compiler") if r else (
                "" if compiled else "the graph failed to compile for the HTP")
            ops.append(OpCompat(index=o.index, op=o.name, version=o.version, delegate=name, supported=r is None,
                                reason=reason, delegated=compiled and r is None, subgraph=s, macs=o.macs,
                                source=SOURCE))
    extra = {"soc": soc, "seconds": verdict["seconds"], "compiled_bytes": verdict.get("compiled_bytes"),
             "compiler_subgraphs": verdict["subgraphs"], "compile_status": verdict["status"]}
    return summed(ops, partitions, model_reason=model_reason, extra=extra, **base)


def _glossed(reason: str) -> str:
    """QNN's reason, with what its numbers mean where that is known (the HTP architecture version check)."""
    m = _HTP_VERSION.search(reason)
    if m:
        return f"{reason} (this SoC's HTP is v{m.group(1)}; QNN needs v{m.group(2)} or newer for this op)"
    return reason


def _empty(*, status: Status, reason: str, extra: dict[str, Any] | None = None, **base: Any) -> CompatReport:
    """A cell with no verdict (not run, failed, timed out): no op counts as delegated or refused."""
    return summed((), (), status=status, reason=reason, extra=extra or {}, **base)

"""Qualcomm HTP (QNN) compatibility from Qualcomm's own compiler: a full ahead-of-time compile per SoC.

The verdict for a modern Snapdragon NPU comes from compiling, not from rules: LiteRT's AOT tool
(``ai_edge_litert/tools/apply_plugin_main``, the binary ``ai_edge_litert.aot.aot_compile`` runs) with the
Qualcomm compiler plugin shipped in ``ai-edge-litert`` partitions the model, validates every op with QNN's
HTP validator and prepares the graph for the SoC's HTP. Per-op validation is not enough: a graph whose ops
all validate can still fail at graph finalize (measured: the embedded default's fp32 on SM8350), so only
the full compile decides.

The QNN x86_64 host libraries (QAIRT 2.51: ``libQnnHtp.so``, ``libQnnSystem.so``, ``libQnnIr.so``,
``libQnnSaver.so``) come from the ``onnxruntime-qnn`` 2.7.0 wheel under Qualcomm's licence: installed by
``pip install 'litegate[qualcomm]'``, never copied into this repository. The plugin lists
``libQnnLpai.so`` as needed without using a symbol from it; a symlink of that name to
``libQnnSaver.so`` in a private folder satisfies the loader. Tested pair: ai-edge-litert 2.3.0 with
onnxruntime-qnn 2.7.0.

The compiler runs as its own process (native code: a crash or a hang is that cell's classified failure)
with a timeout, in a scratch folder that is removed afterwards. Its log is parsed: LiteRT's lines on
stderr (``Partitioned subgraph<0>, selected 175 ops, from a total of 176 ops. resulted in 2 partitions.``,
``LiteRT Op #3 'StridedSlice' (code=45) is not supported in Qualcomm Compiler.``) and QNN's validator on
stdout (the reason for each refused op, e.g. ``Output[0] has incorrect Rank 1.``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litegate.compat.partition import tflite_node_subsets
from litegate.tflite.flatbuffer import ModelInfo
from litegate.types import CompatPartition, CompatReport, OpCompat, Status

PREFIX = "qnn"
DEFAULT_SOC = "SM8650"  # Snapdragon 8 Gen 3
INSTALL = "pip install 'litegate[qualcomm]' (onnxruntime-qnn 2.7.0: Qualcomm's QAIRT 2.51 x86_64 libraries)"
SOURCE = "Qualcomm AI Engine Direct (QNN) HTP compiler through LiteRT's AOT Qualcomm plugin"
TIMEOUT_S = 600.0

_PART = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. "
                   r"resulted in (\d+) partitions\.")
_QNN_REFUSED = re.compile(r"QNN op validation failed: '([^']+)'")
_LITERT_REFUSED = re.compile(r"LiteRT Op #(\d+) '([^']+)' \(code=(\d+)\) is not supported")
_NOISE = re.compile(r"Op specific validation failed|master op validator|validateOpConfig failed|GraphHtpSettings option")
_HTP_VERSION = re.compile(r"has incorrect Value (\d+), expected >= (\d+)")
_FINAL = re.compile(r"could not create op|prepare failed|[Ff]inalize")


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


def _package_dir(module: str) -> Path | None:
    """Where an installed package lives, found without importing it (nothing of it runs in this process)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def toolchain() -> tuple[dict[str, Path] | None, str | None]:
    """The compiler binary, its Qualcomm plugin folder and the QNN library folder, or why they are missing."""
    litert = _package_dir("ai_edge_litert")
    if litert is None:
        return None, "ai-edge-litert is not installed (pip install 'ai-edge-litert==2.3.*')"
    tool, plugin = litert / "tools" / "apply_plugin_main", litert / "vendors" / "qualcomm" / "compiler"
    if not tool.is_file() or not (plugin / "libLiteRtCompilerPlugin_Qualcomm.so").is_file():
        return None, f"this ai-edge-litert has no Qualcomm AOT compiler plugin ({plugin}); install ai-edge-litert 2.3"
    qnn = _package_dir("onnxruntime_qnn")
    if qnn is None or not (qnn / "libQnnHtp.so").is_file():
        return None, f"Qualcomm's QNN libraries are not installed: {INSTALL}"
    return {"tool": tool, "plugin": plugin, "qnn": qnn}, None


def why_not_available() -> str | None:
    """None when the QNN compiler can run here, else the reason and the command that fixes it."""
    return toolchain()[1]


def compile_model(path: str | Path, soc: str, *, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """AOT-compile ``path`` for ``soc`` with Qualcomm's compiler in its own process; the parsed verdict.

    Returns:
        ``status`` (``compiled``, ``finalize_failed``, ``crashed``, ``timeout``, ``setup_error``, ``bad_model``,
        ``error``), ``seconds``, ``subgraphs`` ([{index, offloaded, total, partitions}]), ``refused``
        ([{subgraph, op_index, op, qnn_op, reasons}]), ``compiled_bytes`` (when compiled), ``errors``
        (the compiler's error lines when it failed) and ``returncode``.
    """
    tools, reason = toolchain()
    if tools is None:
        return {"status": "setup_error", "seconds": 0.0, "errors": [reason], "subgraphs": [], "refused": []}
    with tempfile.TemporaryDirectory(prefix="litegate-qnn-") as tmp:
        shim = Path(tmp) / "lib"
        shim.mkdir()
        (shim / "libQnnLpai.so").symlink_to(tools["qnn"] / "libQnnSaver.so")  # NEEDED by the plugin, never called
        out = Path(tmp) / "compiled.tflite"
        argv = [str(tools["tool"]), "--cmd=apply", f"--model={Path(path).resolve()}", f"--o={out}", "--err=--",
                "--soc_manufacturer=Qualcomm", f"--soc_model={soc}", f"--libs={tools['plugin']}"]
        env = {**os.environ, "LD_LIBRARY_PATH": f"{tools['qnn']}:{shim}", "TMPDIR": tmp}
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"status": "timeout", "seconds": round(time.monotonic() - t0, 3), "subgraphs": [], "refused": [],
                    "errors": [f"the compiler ran past {timeout_s:g} s"]}
        seconds = round(time.monotonic() - t0, 3)
        verdict = parse_log(stderr, stdout)
        verdict.update(seconds=seconds, returncode=proc.returncode)
        compiled = out.stat().st_size if out.is_file() else 0
        if proc.returncode == 0 and compiled > 0:
            return {**verdict, "status": "compiled", "compiled_bytes": compiled}
    errors = [e for e in _error_lines(stdout) if _FINAL.search(e)] or _error_lines(stderr)[-3:]
    if proc.returncode < 0:
        status = "crashed"
        errors = [f"the compiler died with {signal.Signals(-proc.returncode).name}"] + errors
    elif "Could not load shared library" in stderr or "Loaded 0 plugins" in stderr:
        status = "setup_error"
    elif "Failed to load model" in stderr:
        status = "bad_model"
    else:
        status = "finalize_failed" if verdict["subgraphs"] else "error"
    return {**verdict, "status": status, "errors": errors[:5]}


def _records(text: str) -> list[str]:
    """The compiler's log records, one per item (QNN glues some records onto one line)."""
    return re.split(r"\n|\s+(?=\d+\.\d+ms \[)", text)


def _error_lines(text: str) -> list[str]:
    out = []
    for line in _records(text):
        if ("[ ERROR ]" in line or line.startswith("ERROR:")) and not _NOISE.search(line):
            text_ = line.split("]", 1)[1] if "]" in line else line
            text_ = text_.replace("<E>", "").strip()
            if text_:
                out.append(text_)
    return list(dict.fromkeys(out))


def parse_log(stderr: str, stdout: str) -> dict[str, Any]:
    """The verdict in the compiler's log: per subgraph what it offloaded, and each refused op with QNN's reasons.

    Refused ops are listed on stderr before their subgraph's ``Partitioned subgraph<k>`` line; QNN's validator
    writes each op's reasons on stdout, ending with ``Failed to validate op NAME``.
    """
    reasons: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in _records(stdout):
        if "validateOpConfig started" in line:
            pending = []
        if "[ ERROR ]" not in line or _NOISE.search(line):
            continue
        m = re.search(r"Failed to validate op (\S+) with", line)
        if m:
            reasons[m.group(1)], pending = list(dict.fromkeys(pending)), []
        else:
            pending.append(line.split("]", 1)[1].replace("<E>", "").strip())
    subgraphs: list[dict[str, int]] = []
    refused: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    qnn_op = ""
    for line in stderr.splitlines():
        if m := _QNN_REFUSED.search(line):
            qnn_op = m.group(1)
        elif m := _LITERT_REFUSED.search(line):
            waiting.append({"op_index": int(m.group(1)), "op": m.group(2), "qnn_op": qnn_op,
                            "reasons": reasons.get(qnn_op, [])})
            qnn_op = ""
        elif m := _PART.search(line):
            index, offloaded, total, parts = map(int, m.groups())
            subgraphs.append({"index": index, "offloaded": offloaded, "total": total, "partitions": parts})
            refused.extend({"subgraph": index, **r} for r in waiting)
            waiting = []
    return {"subgraphs": subgraphs, "refused": refused}


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
    verdict = compile_model(path, soc, timeout_s=timeout_s)
    base: dict[str, Any] = {"delegate": name, "title": title, "model": model_name, "source": SOURCE}
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
    return _summed(ops, partitions, model_reason=model_reason, extra=extra, **base)


def _glossed(reason: str) -> str:
    """QNN's reason, with what its numbers mean where that is known (the HTP architecture version check)."""
    m = _HTP_VERSION.search(reason)
    if m:
        return f"{reason} (this SoC's HTP is v{m.group(1)}; QNN needs v{m.group(2)} or newer for this op)"
    return reason


def _summed(ops: Sequence[OpCompat], partitions: Sequence[CompatPartition], *, status: Status = Status.OK,
            reason: str = "", model_reason: str = "", extra: Mapping[str, Any] | None = None,
            **base: Any) -> CompatReport:
    total_macs = sum(o.macs for o in ops)
    delegated_macs = sum(o.macs for o in ops if o.delegated)
    fallback = Counter(o.op for o in ops if not o.delegated)
    return CompatReport(
        ops=tuple(ops), partitions=tuple(partitions),
        delegated_fraction=(sum(1 for o in ops if o.delegated) / len(ops)) if ops else 0.0,
        delegated_mac_fraction=(delegated_macs / total_macs) if total_macs else None,
        fallback_ops=dict(sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0]))), total_macs=total_macs,
        delegated_macs=delegated_macs, model_reason=model_reason, status=status, reason=reason,
        extra=dict(extra or {}), delegate=base["delegate"], title=base["title"], model=base["model"],
        notes=(f"verdict of {base['source']}",))


def _empty(*, status: Status, reason: str, extra: Mapping[str, Any] | None = None,
           **base: Any) -> CompatReport:
    """A cell with no verdict (not run, failed, timed out): no op counts as delegated or refused."""
    return _summed((), (), status=status, reason=reason, extra=extra, **base)

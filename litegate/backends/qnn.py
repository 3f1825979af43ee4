"""Qualcomm's HTP toolchain on this machine: the AOT compiler (QNN through LiteRT's Qualcomm plugin) and the HTP
emulator (QNN's x86_64 HTP backend through ONNX Runtime's QNN execution provider).

**Compiler.** LiteRT's AOT tool (``ai_edge_litert/tools/apply_plugin_main``, the binary
``ai_edge_litert.aot.aot_compile`` runs) with the Qualcomm compiler plugin shipped in ``ai-edge-litert``
partitions the model, validates every op with QNN's HTP validator and prepares the graph for the SoC's HTP.
Per-op validation is not enough: a graph whose ops all validate can still fail at graph finalize (measured:
the embedded default's fp32 on SM8350), so only the full compile decides. It runs as its own process (native
code: a crash or a hang is a classified failure) with a timeout, in a scratch folder removed afterwards. Its
log is parsed: LiteRT's lines on stderr (``Partitioned subgraph<0>, selected 175 ops, from a total of 176 ops.
resulted in 2 partitions.``, ``LiteRT Op #3 'StridedSlice' (code=45) is not supported in Qualcomm
Compiler.``) and QNN's validator on stdout (the reason for each refused op, e.g. ``Output[0] has incorrect
Rank 1.``).

**Emulator.** The compiled model holds one HTP context binary per partition, in the custom options of its
``DISPATCH_OP`` nodes. QNN's x86_64 ``libQnnHtp.so`` executes such a context in a simulation of the SoC's HTP
(its fixed-point and fp16 arithmetic, not its speed). ONNX Runtime's QNN execution provider is the host that
loads it: :func:`emulate_job` wraps each context in a one-node ONNX ``EPContext`` model and runs the real
evaluation inputs through it, with CPU fallback disabled, so every output comes from the emulated HTP. Only
fully offloaded models run (one partition, nothing left on the CPU); emulated timings are never reported.

The QNN x86_64 host libraries (QAIRT 2.51: ``libQnnHtp.so``, ``libQnnSystem.so``, ``libQnnIr.so``,
``libQnnSaver.so``) and ONNX Runtime's QNN provider come from the ``onnxruntime-qnn`` 2.7.0 wheel under
Qualcomm's licence: installed by ``pip install 'litegate[qualcomm]'``, never copied into this repository. The
plugin lists ``libQnnLpai.so`` as needed without using a symbol from it; a symlink of that name to
``libQnnSaver.so`` in a private folder satisfies the loader. Tested pair: ai-edge-litert 2.3.0 with
onnxruntime-qnn 2.7.0 (onnxruntime 1.32).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INSTALL = "pip install 'litegate[qualcomm]' (onnxruntime-qnn 2.7.0: Qualcomm's QAIRT 2.51 x86_64 libraries)"
TIMEOUT_S = 600.0

_PART = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. "
                   r"resulted in (\d+) partitions\.")
_QNN_REFUSED = re.compile(r"QNN op validation failed: '([^']+)'")
_LITERT_REFUSED = re.compile(r"LiteRT Op #(\d+) '([^']+)' \(code=(\d+)\) is not supported")
_NOISE = re.compile(r"Op specific validation failed|master op validator|validateOpConfig failed|GraphHtpSettings option")
_FINAL = re.compile(r"could not create op|prepare failed|[Ff]inalize")


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


def compile_model(path: str | Path, soc: str, *, timeout_s: float = TIMEOUT_S,
                  keep: str | Path | None = None) -> dict[str, Any]:
    """AOT-compile ``path`` for ``soc`` with Qualcomm's compiler in its own process; the parsed verdict.

    Returns:
        ``status`` (``compiled``, ``finalize_failed``, ``crashed``, ``timeout``, ``setup_error``, ``bad_model``,
        ``error``), ``seconds``, ``subgraphs`` ([{index, offloaded, total, partitions}]), ``refused``
        ([{subgraph, op_index, op, qnn_op, reasons}]), ``compiled_bytes`` (when compiled), ``errors``
        (the compiler's error lines when it failed) and ``returncode``. With ``keep``, the compiled model (the
        TFLite file whose ``DISPATCH_OP`` nodes carry the HTP context binaries) is moved there.
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
        try:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", start_new_session=True)
        except OSError as exc:  # e.g. the binary lost its exec bit, or a noexec mount
            return {"status": "setup_error", "seconds": 0.0, "subgraphs": [], "refused": [],
                    "errors": [f"cannot start {tools['tool']}: {exc}"]}
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
            if keep is not None:
                shutil.move(out, keep)
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


# The emulator's SoC settings, from ONNX Runtime's QNN provider (onnxruntime/core/providers/qnn/qnn_soc.h):
# SoC -> (QNN soc_model id, HTP architecture). SoCs the compiler knows but this table does not are not emulated.
HTP_SOCS: dict[str, tuple[int, int]] = {
    "SM8350": (30, 68), "SM8450": (36, 69), "SM8475": (42, 69), "SM8550": (43, 73), "SM8650": (57, 75),
    "SM8750": (69, 79), "SM8850": (87, 81),
}
_DISPATCH = "DISPATCH_OP"


def emulator_why_not() -> str | None:
    """None when the HTP emulator's host (ONNX Runtime with its QNN provider, and onnx) is installed, else why not."""
    missing = [m for m in ("onnxruntime", "onnxruntime_qnn", "onnx") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed: {INSTALL}" if missing else None


def emulation_refusal(soc: str, verdict: dict[str, Any]) -> str | None:
    """Why a compiled model cannot run on the emulated HTP (None: it can): it must be one HTP partition."""
    if soc not in HTP_SOCS:
        return f"no HTP emulator settings for {soc} (emulated: {', '.join(HTP_SOCS)})"
    subs = verdict.get("subgraphs", [])
    if not subs:
        return "the compiler's log names no partitioned subgraph, so what it offloaded is unknown"
    left = sum(s["total"] - s["offloaded"] for s in subs)
    whole = "the HTP emulator runs whole-HTP models only (one subgraph in one partition)"
    if left:
        ops = sorted({r["op"] for r in verdict.get("refused", [])})
        return (f"{whole}; {left} op(s) stay on the CPU" + (f" ({', '.join(ops)})" if ops else "")
                + " and would need LiteRT's CPU runtime beside it")
    if len(subs) != 1 or subs[0]["partitions"] != 1:
        return f"{whole}; this one compiled into {len(subs)} subgraph(s), {sum(s['partitions'] for s in subs)} partitions"
    return None


def htp_context(compiled: bytes) -> dict[str, Any]:
    """The HTP context binary of a one-partition compiled model and its I/O tensors (name, TFLite type, shape).

    The compiled model's ``DISPATCH_OP`` carries, in its custom options (a flexbuffer map), where the context
    lies in the file (``bytecode_offset``, ``bytecode_size``) and the partition's ``name``.
    """
    from ai_edge_litert import schema_py_generated as schema  # LiteRT's flatbuffer schema: only where it runs
    from flatbuffers import flexbuffers  # the custom options' encoding (a dependency of LiteRT)

    model = schema.ModelT.InitFromPackedBuf(compiled, 0)
    dispatch = [(sg, op) for sg in model.subgraphs for op in sg.operators
                if (model.operatorCodes[op.opcodeIndex].customCode or b"").decode() == _DISPATCH]
    if len(dispatch) != 1:
        raise ValueError(f"expected one {_DISPATCH} node in the compiled model, found {len(dispatch)}")
    sg, op = dispatch[0]
    opts = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
    start, size = int(opts["bytecode_offset"]), int(opts["bytecode_size"])
    if start < 0 or size <= 0 or start + size > len(compiled):
        raise ValueError(f"the {_DISPATCH} context ({size} bytes at {start}) lies outside the compiled model")

    def tensors(indices: Any) -> list[tuple[str, int, list[int]]]:
        return [(sg.tensors[i].name.decode(), int(sg.tensors[i].type), [int(d) for d in sg.tensors[i].shape])
                for i in indices]

    name = opts["name"]
    return {"context": compiled[start:start + size], "name": name.decode() if isinstance(name, bytes) else str(name),
            "inputs": tensors(op.inputs), "outputs": tensors(op.outputs)}


def emulate_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: every sample of ``inputs_npz`` through the compiled model's HTP context on QNN's
    HTP emulator (ONNX Runtime's QNN provider, CPU fallback disabled); outputs saved to ``out_npz``.

    The original model (``path``) gives the signature: input/output names, dtypes and (de)quantization.
    """
    import numpy as np

    from litegate.artifacts import save_npz
    from litegate.backends.runtime import Runner

    soc_id, arch = HTP_SOCS[payload["soc"]]
    ctx = htp_context(Path(payload["compiled"]).read_bytes())
    session = _ort_session(ctx, soc_id, arch)
    runner = Runner(payload["path"], backend="cpu")
    onnx_name = {det["name"]: det["name"].replace(":", "_") for det in (*runner.inputs.values(),
                                                                          *runner.outputs.values())}
    ins = {k: onnx_name[d["name"]] for k, d in runner.inputs.items()}
    outs = {k: onnx_name[d["name"]] for k, d in runner.outputs.items()}
    known = {n.name for n in (*session.get_inputs(), *session.get_outputs())}
    if not set(ins.values()) | set(outs.values()) <= known:
        raise ValueError(f"the HTP context's tensors {sorted(known)} are not the model's signature {ins} -> {outs}")
    order = list(outs)

    def invoke(prepared: Mapping[str, Any]) -> dict[str, Any]:
        got = session.run([outs[k] for k in order], {ins[k]: v for k, v in prepared.items()})
        return dict(zip(order, got, strict=True))

    runner.invoke = invoke  # type: ignore[method-assign]  # the same prepare/dequantize around the HTP
    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    results = runner.run_batch(arrays)
    save_npz(payload["out_npz"], results)
    return {"n": len(next(iter(arrays.values()))), "outputs": sorted(results)}


def _ort_session(ctx: dict[str, Any], soc_id: int, arch: int) -> Any:
    """An ONNX Runtime session of one ``EPContext`` node holding the HTP context, on QNN's HTP backend only."""
    import onnxruntime as ort  # ONNX Runtime and its QNN provider (litegate[qualcomm]): only in this child
    import onnxruntime_qnn
    from onnx import TensorProto, helper  # the one-node model's encoding

    types = {0: TensorProto.FLOAT, 1: TensorProto.FLOAT16, 2: TensorProto.INT32, 3: TensorProto.UINT8,
             4: TensorProto.INT64, 7: TensorProto.INT16, 9: TensorProto.INT8, 6: TensorProto.BOOL}

    def info(t: tuple[str, int, list[int]]) -> Any:
        if t[1] not in types:
            raise ValueError(f"tensor {t[0]} has a TFLite type ({t[1]}) the emulator host does not map")
        return helper.make_tensor_value_info(t[0].replace(":", "_"), types[t[1]], t[2])

    ins, outs = [info(t) for t in ctx["inputs"]], [info(t) for t in ctx["outputs"]]
    node = helper.make_node("EPContext", [i.name for i in ins], [o.name for o in outs], domain="com.microsoft",
                            main_context=1, embed_mode=1, ep_cache_context=ctx["context"], source="QNN",
                            partition_name=ctx["name"])
    model = helper.make_model(helper.make_graph([node], "htp", ins, outs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    if not any(d.ep_name == onnxruntime_qnn.get_ep_name() for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(onnxruntime_qnn.get_ep_name(), onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == onnxruntime_qnn.get_ep_name()]
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                          "soc_model": str(soc_id), "htp_arch": str(arch)})
    return ort.InferenceSession(model.SerializeToString(), so)


@dataclasses.dataclass(frozen=True)
class Emulation:
    """A model's outputs on the emulated HTP of one SoC, or why there are none.

    ``status`` is ``ok``, ``not_run`` (the emulator cannot take this model here), ``failed`` (the compile failed,
    or the emulator crashed or raised) or ``timeout``; ``compile`` is the compiler's verdict.
    """

    status: str
    reason: str = ""
    outputs: dict[str, Any] | None = None
    compile: dict[str, Any] = dataclasses.field(default_factory=dict)


def emulate(path: str | Path, soc: str, inputs_npz: str | Path, *, timeout_s: float = TIMEOUT_S,
            mem_mb: int | None = None) -> Emulation:
    """Compile ``path`` for ``soc`` and run every sample of ``inputs_npz`` on the emulated HTP, in a child process.

    A compile failure, an emulator crash, hang or error is that model's classified failure, never an exception.
    """
    import numpy as np

    from litegate.errors import IsolationError, LitegateError
    from litegate.isolation import run_isolated

    if missing := emulator_why_not():
        return Emulation("not_run", missing)
    with tempfile.TemporaryDirectory(prefix="litegate-htp-") as tmp:
        compiled = Path(tmp) / "compiled.tflite"
        verdict = compile_model(path, soc, timeout_s=timeout_s, keep=compiled)
        if verdict["status"] == "setup_error":
            return Emulation("not_run", "; ".join(verdict["errors"]) or INSTALL, compile=verdict)
        if verdict["status"] != "compiled":
            why = "; ".join(verdict.get("errors", [])) or verdict["status"]
            return Emulation("timeout" if verdict["status"] == "timeout" else "failed",
                             f"compiler {verdict['status']}: {why}", compile=verdict)
        refusal = emulation_refusal(soc, verdict)
        if refusal:
            return Emulation("not_run", refusal, compile=verdict)
        scratch = Path(tmp) / "tmp"  # ONNX Runtime writes its scratch files under TMPDIR
        scratch.mkdir()
        out_npz = Path(tmp) / "outputs.npz"
        try:
            run_isolated("litegate.backends.qnn:emulate_job",
                         {"path": str(path), "compiled": str(compiled), "soc": soc, "inputs_npz": str(inputs_npz),
                          "out_npz": str(out_npz)},
                         timeout_s=timeout_s, mem_mb=mem_mb, env={"TMPDIR": str(scratch)})
        except IsolationError as exc:
            what = exc.message.split(": ", 1)[-1]  # the message without the child's target name
            return Emulation("timeout" if exc.kind == "timeout" else "failed", f"the HTP emulator {what}",
                             compile=verdict)
        except (LitegateError, ValueError) as exc:
            return Emulation("failed", f"the HTP emulator failed: {exc}", compile=verdict)
        with np.load(out_npz) as arrays:
            return Emulation("ok", outputs={k: arrays[k] for k in arrays.files}, compile=verdict)


"""A deterministic fuzz corpus for the .tflite verifier (issue 20), in CI's lane.

Small real models made here (three built with LiteRT's schema, one converted by TensorFlow) are mutated with a
fixed seed in these classes: header and identifier, vtables, vector lengths, indices (tensor, opcode, buffer,
subgraph), signatures, buffer sizes and offsets, operator codes, graph bombs (shared vectors, huge tensor
declarations) and random byte flips. Every case goes through the verifier and, when accepted, through the static
compatibility check and the graph summary, in this process under a per-case time limit; a subset goes through the
real ``litegate check`` and ``litegate bench``. No case may crash litegate (a Python exception other than a
litegate error, a signal, exit 10), hang, leave a file behind or exit with an undocumented code.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tflite_craft as craft
from ai_edge_litert import schema_py_generated as s
from conftest import DEMO, ROOT

from litegate.errors import LitegateError, ModelLoadError

SEED = 20
CASE_LIMIT_S = 10.0
DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 130}  # litegate/cli.py; 10 is an internal error
TOKENIZER = ROOT / "examples" / "textgen" / "char-gpt2" / "tokenizer.json"

# vtable slots of the vector fields, per table (schema.fbs field order)
_VECTOR_SLOTS = {"model": (1, 2, 4, 5, 6, 7), "subgraph": (0, 1, 2, 3), "tensor": (0, 7), "operator": (1, 2, 5, 7, 8),
                 "buffer": (0,), "signature": (0, 1)}

_KERAS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, tf_keras as keras
keras.utils.set_random_seed(0)
ids = keras.layers.Input((8,), batch_size=1, dtype="int32", name="input_ids")
x = keras.layers.Embedding(64, 8)(ids)
x = keras.layers.LayerNormalization()(x)
x = keras.layers.GlobalAveragePooling1D()(x)
out = keras.layers.Dense(2, name="logits")(x)
open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(keras.Model(ids, out)).convert())
"""


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("fuzz-seeds") / "keras.tflite"
    r = subprocess.run([sys.executable, "-c", _KERAS, str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"add": craft.add_model(), "mlp": craft.mlp_model(), "step": craft.step_model(), "keras": out.read_bytes()}


# --- where things are in a flatbuffer ---------------------------------------------------------------------------


def _tables(data: bytes) -> list[tuple[str, int]]:
    """(kind, position) of the model's tables, walked with the generated accessors of the sound seed model."""
    m = s.Model.GetRootAs(data, 0)
    out = [("model", m._tab.Pos)]
    out += [("buffer", m.Buffers(j)._tab.Pos) for j in range(m.BuffersLength())]
    out += [("opcode", m.OperatorCodes(j)._tab.Pos) for j in range(m.OperatorCodesLength())]
    for k in range(m.SignatureDefsLength()):
        sig = m.SignatureDefs(k)
        out.append(("signature", sig._tab.Pos))
        out += [("tensormap", sig.Inputs(j)._tab.Pos) for j in range(sig.InputsLength())]
    for i in range(m.SubgraphsLength()):
        sg = m.Subgraphs(i)
        out.append(("subgraph", sg._tab.Pos))
        out += [("tensor", sg.Tensors(j)._tab.Pos) for j in range(sg.TensorsLength())]
        out += [("operator", sg.Operators(j)._tab.Pos) for j in range(sg.OperatorsLength())]
    return out


def _vtable(data: bytes, pos: int) -> int:
    return pos - struct.unpack_from("<i", data, pos)[0]


def _field(data: bytes, pos: int, slot: int) -> int | None:
    vt = _vtable(data, pos)
    vt_len = struct.unpack_from("<H", data, vt)[0]
    if 4 + 2 * slot + 2 > vt_len:
        return None
    off = struct.unpack_from("<H", data, vt + 4 + 2 * slot)[0]
    return pos + off if off else None


def _vector_lengths(data: bytes) -> list[int]:
    """Positions of the uint32 length words of the model's vectors."""
    out = []
    for kind, pos in _tables(data):
        for slot in _VECTOR_SLOTS.get(kind, ()):
            f = _field(data, pos, slot)
            if f is not None:
                out.append(f + struct.unpack_from("<I", data, f)[0])
    return out


def _patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


# --- the mutations ------------------------------------------------------------------------------------------------

Case = tuple[str, str, bytes]
_EDGE = (-(2**31), -2, -1, 0, 1, 2, 3, 7, 127, 255, 65535, 2**31 - 1)
_EDGE_U = (0, 1, 7, 2**16, 2**31 - 1, 2**31, 2**32 - 1)


def _header(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    yield "header", f"{name}:no-identifier", data[:4] + b"TFL2" + data[8:]
    yield "header", f"{name}:truncated-8", data[:8]
    yield "header", f"{name}:truncated-half", data[: len(data) // 2]
    yield "header", f"{name}:truncated-1", data[:-1]
    yield "header", f"{name}:garbage-tail", data + bytes(rng.randrange(256) for _ in range(64))
    for v in (0, 2, 4, 2**31 - 1, 2**32 - 1, len(data), len(data) - 4):
        yield "header", f"{name}:root={v}", _patch(data, 0, "<I", v)
    yield "header", f"{name}:version=4", craft.mutate(data, lambda m: setattr(m, "version", 4))


def _vtables(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    tables = _tables(data)
    for kind, pos in rng.sample(tables, min(6, len(tables))):
        yield "vtable", f"{name}:{kind}@{pos}:soffset", _patch(data, pos, "<i", rng.choice((-(2**31), -4, 0, 4, 2**31 - 1,
                                                                                              len(data))))
        vt = _vtable(data, pos)
        yield "vtable", f"{name}:{kind}@{pos}:vt_len", _patch(data, vt, "<H", rng.choice((0, 2, 0xFFFF)))
        yield "vtable", f"{name}:{kind}@{pos}:obj_len", _patch(data, vt + 2, "<H", 0xFFFF)
        vt_len = struct.unpack_from("<H", data, vt)[0]
        if vt_len > 4:
            slot = vt + 4 + 2 * rng.randrange((vt_len - 4) // 2)
            yield "vtable", f"{name}:{kind}@{pos}:field", _patch(data, slot, "<H", rng.choice((1, 0x7FFF, 0xFFFF)))


def _vectors(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    lengths = _vector_lengths(data)
    for pos in rng.sample(lengths, min(10, len(lengths))):
        value = rng.choice(_EDGE_U + (struct.unpack_from("<I", data, pos)[0] + 1,))
        yield "vector-length", f"{name}:len@{pos}={value}", _patch(data, pos, "<I", value)


def _indices(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    def setter(path: str, value: int) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            sg = m.subgraphs[0]
            if path == "op-input" and sg.operators and len(sg.operators[0].inputs):
                sg.operators[0].inputs = [value, *list(sg.operators[0].inputs)[1:]]
            elif path == "op-output" and sg.operators and len(sg.operators[0].outputs):
                sg.operators[0].outputs = [value, *list(sg.operators[0].outputs)[1:]]
            elif path == "op-intermediate" and sg.operators:
                sg.operators[0].intermediates = [value]
            elif path == "opcode" and sg.operators:
                sg.operators[0].opcodeIndex = value % 2**32
            elif path == "tensor-buffer":
                sg.tensors[rng.randrange(len(sg.tensors))].buffer = value % 2**32
            elif path == "sg-input":
                sg.inputs = [value]
            elif path == "sg-output":
                sg.outputs = [value]
            elif path == "sig-subgraph" and m.signatureDefs:
                m.signatureDefs[0].subgraphIndex = value % 2**32
        return fn

    for path in ("op-input", "op-output", "op-intermediate", "opcode", "tensor-buffer", "sg-input", "sg-output",
                 "sig-subgraph"):
        for value in rng.sample(_EDGE, 3):
            yield "index", f"{name}:{path}={value}", craft.mutate(data, setter(path, value))


def _signatures(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    def sig_fn(what: str) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            if not m.signatureDefs:
                return
            sig = m.signatureDefs[rng.randrange(len(m.signatureDefs))]
            if what == "no-inputs":
                sig.inputs = []
            elif what == "no-outputs":
                sig.outputs = []
            elif what == "no-key":
                sig.signatureKey = None
            elif what == "no-name":
                sig.outputs[0].name = b""
            elif what == "input-index":
                sig.inputs[0].tensorIndex = rng.choice(_EDGE_U)
            elif what == "output-index":
                sig.outputs[-1].tensorIndex = 2**32 - 1
            elif what == "duplicate":
                m.signatureDefs.append(sig)
            elif what == "none":
                m.signatureDefs = None
            elif what == "subgraph":
                sig.subgraphIndex = rng.choice((1, 2, 7, 2**32 - 1))
        return fn

    for what in ("no-inputs", "no-outputs", "no-key", "no-name", "input-index", "output-index", "duplicate", "none",
                 "subgraph"):
        yield "signature", f"{name}:{what}", craft.mutate(data, sig_fn(what))


def _buffers(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    m = craft.unpack(data)
    with_data = [j for j, b in enumerate(m.buffers or []) if b.data is not None and len(b.data)]
    for j in rng.sample(with_data, min(3, len(with_data))):
        def external(mm: Any, j: int = j) -> None:
            mm.buffers[j].data = None
            mm.buffers[j].offset, mm.buffers[j].size = rng.choice(((2**63, 16), (16, 2**63), (8, len(data)),
                                                                   (len(data) - 4, 64)))

        def shrink(mm: Any, j: int = j) -> None:
            mm.buffers[j].data = mm.buffers[j].data[: len(mm.buffers[j].data) // 2]

        def grow(mm: Any, j: int = j) -> None:
            mm.buffers[j].data = list(mm.buffers[j].data) + [0] * 4

        yield "buffer", f"{name}:buffer{j}:external", craft.mutate(data, external)
        yield "buffer", f"{name}:buffer{j}:shrink", craft.mutate(data, shrink)
        yield "buffer", f"{name}:buffer{j}:grow", craft.mutate(data, grow)


def _opcodes(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    def code_fn(what: str) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            c = m.operatorCodes[rng.randrange(len(m.operatorCodes))]
            if what == "builtin":
                c.builtinCode = c.deprecatedBuiltinCode = rng.choice((127, 2**31 - 1, -1 % 2**31))
                c.deprecatedBuiltinCode = 127
            elif what == "custom":
                c.builtinCode = c.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
                c.customCode = rng.choice((b"FlexAddV2", b"", b"\xff\xfe"))
            elif what == "version":
                c.version = rng.choice((0, -1, 2**31 - 1))
            elif what == "none":
                m.operatorCodes = []
        return fn

    for what in ("builtin", "custom", "version", "none"):
        yield "opcode", f"{name}:{what}", craft.mutate(data, code_fn(what))


def _bombs(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    if name != "add":
        yield "bomb", f"{name}:huge-tensors-8x15", craft.huge_tensors(data, n=8, gib=15.0)
        return
    yield "bomb", "shared-vector-20000", craft.shared_vector_bomb()
    yield "bomb", "shared-vector-3000-own-ops", craft.shared_vector_bomb(3000, 3000, share_op=False)
    yield "bomb", "huge-tensor-1gib", craft.huge_tensors(data, n=1, gib=1.0)
    yield "bomb", "huge-tensors-8x15", craft.huge_tensors(data, n=8, gib=15.0)
    yield "bomb", "huge-dims", craft.mutate(data, lambda m: setattr(m.subgraphs[0].tensors[1], "shape",
                                                                    [2**31 - 1] * 8))

    def shared_tensors(m: Any) -> None:  # ObjectAPI packing writes copies: 400 subgraphs of the same graph
        m.subgraphs = m.subgraphs * 400

    yield "bomb", "many-subgraphs", craft.mutate(data, shared_tensors)


def _flips(name: str, data: bytes, rng: random.Random) -> Iterator[Case]:
    for k in range(8):
        b = bytearray(data)
        for _ in range(rng.choice((1, 4, 16))):
            b[rng.randrange(8, len(b))] = rng.randrange(256)
        yield "byte-flip", f"{name}:flip{k}", bytes(b)


_CLASSES = (_header, _vtables, _vectors, _indices, _signatures, _buffers, _opcodes, _bombs, _flips)


def corpus(seeds: dict[str, bytes]) -> list[Case]:
    rng = random.Random(SEED)
    return [case for name, data in seeds.items() for cls in _CLASSES for case in cls(name, data, rng)]


# --- running the cases ----------------------------------------------------------------------------------------------


_LITERT_LOAD = """
import sys
from ai_edge_litert.interpreter import Interpreter
for i, path in enumerate(sys.argv[1:]):
    try:
        it = Interpreter(model_path=path)
        it.allocate_tensors()
        for key in it.get_signature_list():
            it.get_signature_runner(key)
    except Exception:
        pass
    print(i, flush=True)
"""


def _litert_crashes(paths: list[Path]) -> list[int]:
    """Indices of ``paths`` that LiteRT itself dies on (load, allocate, signature runners), one child for all of
    them, restarted after each death. A verifier gap, not a crash of litegate (its LiteRT runs in children)."""
    crashed, start = [], 0
    while start < len(paths):
        r = subprocess.run([sys.executable, "-c", _LITERT_LOAD, *map(str, paths[start:])], capture_output=True,
                           text=True, timeout=300)
        done = [int(x) for x in r.stdout.split()]
        if r.returncode == 0:
            break
        bad = start + (done[-1] + 1 if done else 0)
        crashed.append(bad)
        start = bad + 1
    return crashed


class _Hang(Exception):
    pass


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _Hang


def _in_process(data: bytes, tmp: Path) -> str:
    """``refused``, ``accepted``, ``crash: ...`` or ``hang`` for one case: verify, then check and summarise."""
    from litegate.compat.check import check_target
    from litegate.compat.ruleset import DELEGATES
    from litegate.tflite.summary import graph_summary
    from litegate.tflite.verify import verify_bytes

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        model = verify_bytes(data, source="case.tflite")
        path = tmp / "case.tflite"
        path.write_bytes(data)
        for d in DELEGATES:
            check_target(model, path, d, model_name="case")
        graph_summary(model)
        path.unlink()
        return "accepted"
    except ModelLoadError as exc:
        return "refused" if exc.message.count("\n") == 0 else f"crash: multi-line error {exc.message!r}"
    except LitegateError as exc:
        return f"crash: {type(exc).__name__} (exit {exc.exit_code}) for a model: {exc.message}"
    except _Hang:
        return "hang"
    except Exception as exc:  # noqa: BLE001 - a crash of litegate is what this test counts
        return f"crash: {type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _cli(args: list[str], tmp: Path) -> tuple[str, int]:
    env = {**os.environ, "TMPDIR": str(tmp / "tmp")}
    try:
        r = subprocess.run([sys.executable, "-m", "litegate", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return "hang", -1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if r.returncode < 0 or r.returncode not in DOCUMENTED_EXITS or "Traceback" in r.stderr:
        return f"crash: exit {r.returncode}: {r.stderr[-300:]}", r.returncode
    if r.returncode not in (0, 8) and (len(lines) != 1 or not lines[0].startswith("litegate: error: ")):
        return f"crash: not one line: {r.stderr[-300:]}", r.returncode
    return ("accepted" if r.returncode in (0, 8) else "refused"), r.returncode


def test_fuzz_corpus_never_crashes_hangs_or_leaves_files(seeds, tmp_path, capsys):
    cases = corpus(seeds)
    assert len(cases) >= 300, len(cases)
    outcomes: dict[str, str] = {}
    t0 = time.monotonic()
    for cls, label, data in cases:
        outcomes[f"{cls}/{label}"] = _in_process(data, tmp_path)
    in_process_s = time.monotonic() - t0
    # the accepted cases through LiteRT itself (a child): what the verifier let through that LiteRT dies on
    accepted = [c for c in cases if outcomes[f"{c[0]}/{c[1]}"] == "accepted"]
    (tmp_path / "accepted").mkdir()
    paths = []
    for n, (_cls, _label, data) in enumerate(accepted):
        paths.append(tmp_path / "accepted" / f"{n}.tflite")
        paths[-1].write_bytes(data)
    litert_dies = [f"{accepted[i][0]}/{accepted[i][1]}" for i in _litert_crashes(paths)]
    # a subset through the real CLI, each in its own TMPDIR and output folder: refusals through check, and every
    # accepted add-model case (and a sample of the others) through bench, whose cells run LiteRT in children
    rng = random.Random(SEED)
    accepted_add = [c for c in cases if c[1].startswith("add:") and outcomes[f"{c[0]}/{c[1]}"] == "accepted"]
    refused = [c for c in cases if outcomes[f"{c[0]}/{c[1]}"] == "refused"]
    by_class: dict[str, list[Case]] = {}
    for c in refused:
        by_class.setdefault(c[0], []).append(c)
    subset = [("check", c) for cls in sorted(by_class) for c in rng.sample(by_class[cls], min(2, len(by_class[cls])))]
    subset += [("bench", c) for c in rng.sample(accepted_add, min(8, len(accepted_add)))]
    subset += [("bench", c) for c in rng.sample(refused, 4)]
    cli_outcomes: dict[str, str] = {}
    leftovers: list[str] = []
    for n, (cmd, (cls, label, data)) in enumerate(subset):
        case_dir = tmp_path / f"cli{n}"
        (case_dir / "tmp").mkdir(parents=True)
        model = case_dir / "m.tflite"
        model.write_bytes(data)
        (case_dir / "m.tokenizer.json").write_text(TOKENIZER.read_text())
        args = (["check", str(model)] if cmd == "check" else
                ["bench", str(model), "--text", str(DEMO / "calibration.txt"), "--min-runs", "2", "--min-seconds",
                 "0", "--timeout", "60"])
        outcome, _rc = _cli(args, case_dir)
        cli_outcomes[f"{cmd} {cls}/{label}"] = outcome
        left = sorted(p.name for p in case_dir.rglob("*") if p.name not in ("m.tflite", "m.tokenizer.json", "tmp"))
        leftovers += [f"{cmd} {label}: {x}" for x in left]
    everything = {**outcomes, **cli_outcomes}
    crashes = {k: v for k, v in everything.items() if v.startswith("crash")}
    hangs = [k for k, v in everything.items() if v == "hang"]
    counts = {v: sum(1 for x in outcomes.values() if x == v) for v in ("refused", "accepted")}
    line = (f"fuzz corpus: {len(cases)} cases ({len(subset)} also through the CLI), refusals={counts['refused']}, "
            f"accepted={counts['accepted']}, crashes={len(crashes)}, hangs={len(hangs)}, leftovers={len(leftovers)}"
            f", accepted-but-LiteRT-dies={len(litert_dies)} (in-process {in_process_s:.1f} s)")
    with capsys.disabled():
        print("\n" + line + "".join(f"\n  LiteRT dies on accepted case {k}" for k in litert_dies))
    assert not crashes, crashes
    assert not hangs, hangs
    assert not leftovers, leftovers
    # every class of mutation was refused at least once: the corpus exercises what it says it does
    assert {c[0] for c in refused} >= {"header", "vtable", "vector-length", "index", "signature", "buffer", "opcode",
                                       "bomb", "byte-flip"} - {"opcode"}, sorted({c[0] for c in refused})

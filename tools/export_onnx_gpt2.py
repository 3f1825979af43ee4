"""ONNX Runtime as a peer: litegate's GPT-2 prefill exported to ONNX, optimized, quantized and measured.

The GPT-2 counterpart of ``scripts/export_onnx.py`` (same variants, timing, CLI and JSON contract;
its helpers are reused). ONNX Runtime is something to measure litegate against, never a runtime
litegate ships. This script builds the prefill forward of litegate's GPT-2 (``converter/gpt2.py``:
``tokens`` int32 ``[1, P]`` -> ``logits`` float32 ``[1, P, V]``, causal attention, tied LM head, no
KV-cache outputs) as an ONNX graph from the same safetensors tensors, then measures four ONNX
Runtime variants:

* ``onnxruntime fp32``: the exported graph; ONNX Runtime applies its own online graph optimizations;
* ``onnxruntime optimized fp32``: after ``onnxruntime.transformers.optimizer.optimize_model`` with
  ``model_type="gpt2"`` (the fusions are reported);
* ``onnxruntime optimized int8`` / ``... int8 per-channel``: ``quantize_dynamic`` (QInt8 weights)
  of the optimized graph, per-tensor and ``per_channel=True``.

Timing is export_onnx.py's: every variant at every ``--threads`` count, all sessions in one process,
interleaved blocks, medians. Each variant's logits are compared, position by position, to the
float TensorFlow model's (litegate's own ``prefill`` signature, run in an isolated child, or read
from ``--reference``): mean / min cosine of the logits rows and the fraction of positions whose
argmax agrees. The exported fp32 graph must match TensorFlow within ``--tolerance`` max abs on the
logits or the script fails.

How the graph is spelled, and why. Numerically it is litegate's model: the same weights, layer norm
with the config's epsilon, tanh GELU (``gelu_new``) or erf GELU (``gelu``) per
``activation_function``, logits ``ln_f(x) @ wte^T``, and litegate's *additive* causal bias: a masked
score is ``score - MASK_PENALTY`` (40.0, not -inf and not replaced by a constant). The ops are laid
out the way a PyTorch ``GPT2LMHeadModel`` export (transformers 2.x, no past) is, because that is the
layout ONNX Runtime's ``FusionGptAttentionNoPast`` matches: ``c_attn`` / ``c_proj`` as
``Reshape -> Gemm -> Reshape`` (HF ``Conv1D``'s ``addmm``), ``Split`` into q, k, v, ``Div`` by
sqrt(head size), the ``Shape/Slice/Squeeze/Sub/Unsqueeze/Slice/Slice`` cut of the causal buffer and
``Sub(Mul(w, .), Mul(Sub(1, b), penalty))``. Where PyTorch multiplies the scores by the causal
buffer (``w * b``), this graph multiplies them by one, so a masked score stays ``w - 40`` as in
litegate. The fused ``Attention`` node (``unidirectional=1``) gets ``mask_filter_value`` from the
penalty constant with the wrong sign for this spelling (+40: PyTorch's ``- 1e4 * (1 - b)``), so the
script sets it to ``-MASK_PENALTY`` on every fused node. ONNX Runtime 1.31's CPU kernel does not read
it for the causal mask (bit-identical logits with +40, -40 or none): it masks completely, where
litegate leaves ``exp(-40)``-sized weights; the optimized fp32 row shows that difference (none visible
at 1e-4). The MLP is ``MatMul + Add`` and ``gelu_new`` is spelled as PyTorch's ``NewGELUActivation``
(FastGelu, then its bias folded in).

``--json`` prints one final line, a flat JSON object: ``"<variant> x<threads>"`` -> median ms (or
``"not run: reason"``), ``"cosine <variant>"`` / ``"cosine min <variant>"`` -> mean / min cosine
of each position's logits row to TensorFlow fp32, ``"top1 <variant>"`` -> the fraction of positions
whose argmax equals TensorFlow fp32's, and ``"max abs onnxruntime fp32 vs tf"``. Details (fusions,
sizes, per-run samples) go to ``OUT/export.json``; the TensorFlow logits to ``OUT/reference_tf.npz``
(usable as ``--reference`` later).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent


def _load_export_onnx() -> ModuleType:
    """``scripts/export_onnx.py`` as a module (its graph builder, optimizer, session and timing helpers)."""
    name = "litegate_export_onnx"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / "export_onnx.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


base = _load_export_onnx()

# litegate's additive attention bias: (causal - 1) * MASK_PENALTY (converter/bert.py, used by
# converter/gpt2.py; importing it would import TensorFlow into the timing process).
MASK_PENALTY: float = base.MASK_PENALTY
OPSET: int = base.OPSET
VARIANTS: tuple[str, ...] = base.VARIANTS
FILES: dict[str, str] = base.FILES
INPUT_NAME = "tokens"
OUTPUT_NAME = "logits"
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "LayerNormalization", "Gelu", "FastGelu", "BiasGelu")
REFERENCE_FILE = "reference_tf.npz"
_INT64_MAX = np.iinfo(np.int64).max


def build_onnx(model_dir: str | Path, seq_len: int, *, mask_penalty: float = MASK_PENALTY) -> Any:
    """litegate's GPT-2 prefill forward as an ONNX ``ModelProto`` (static batch 1, ``seq_len`` tokens).

    Input ``tokens`` (int32 ``[1, seq_len]``); output ``logits`` (float32 ``[1, seq_len, vocab]``).
    See the module docstring for the numerics and the layout.

    Raises:
        litegate.errors.ModelLoadError: unreadable checkpoint, a missing or misshapen tensor, or
            ``seq_len`` above ``n_positions``.
    """
    from litegate.converter.hf import read_gpt2
    from onnx import TensorProto, checker, helper

    from litegate.errors import ModelLoadError

    cfg, tensors, prefix = read_gpt2(model_dir)
    if seq_len > cfg.n_positions:
        raise ModelLoadError(f"seq_len {seq_len} is larger than n_positions {cfg.n_positions}")
    E, heads, d, V = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size
    g = base._Graph()

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = prefix + name
        if key not in tensors:
            raise ModelLoadError(f"{model_dir}: checkpoint is missing tensor {key!r}")
        arr = np.asarray(tensors[key], np.float32)
        if tuple(arr.shape) != shape:
            raise ModelLoadError(f"{model_dir}: tensor {key!r} has shape {tuple(arr.shape)}, expected {shape}")
        return arr

    def i64(name: str, value: Any) -> str:
        return g.const(name, value, np.int64)

    def conv1d_gemm(x: str, hf: str, n_in: int, n_out: int) -> str:
        """HF ``Conv1D`` as PyTorch exported it: ``addmm`` on the 2-D view, then back to ``[1, P, n_out]``."""
        w = g.const(f"{hf}.weight", tensor(hf + ".weight", (n_in, n_out)))
        b = g.const(f"{hf}.bias", tensor(hf + ".bias", (n_out,)))
        flat = g.op("Reshape", [x, i64(f"{hf}.flat_shape", [-1, n_in])])
        return g.op("Reshape", [g.op("Gemm", [flat, w, b]), i64(f"{hf}.out_shape", [1, -1, n_out])])

    def linear(x: str, hf: str, n_in: int, n_out: int) -> str:
        w = g.const(f"{hf}.weight", tensor(hf + ".weight", (n_in, n_out)))
        b = g.const(f"{hf}.bias", tensor(hf + ".bias", (n_out,)))
        return g.op("Add", [g.op("MatMul", [x, w]), b])

    def layer_norm(x: str, hf: str) -> str:
        gamma = g.const(f"{hf}.weight", tensor(hf + ".weight", (E,)))
        beta = g.const(f"{hf}.bias", tensor(hf + ".bias", (E,)))
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=float(cfg.layer_norm_epsilon))

    # Embeddings: wte[tokens] + wpe[arange(P)] (position ids from the input's shape, as PyTorch spells it).
    wte = tensor("wte.weight", (V, E))
    word = g.op("Gather", [g.const("wte.weight", wte), INPUT_NAME])
    seq = g.op("Gather", [g.op("Shape", [INPUT_NAME]), i64("one_i64", 1)])
    pos_ids = g.op("Unsqueeze", [g.op("Range", [i64("zero_i64", 0), seq, i64("step_i64", 1)]), i64("axes_0", [0])])
    pos = g.op("Gather", [g.const("wpe.weight", tensor("wpe.weight", (cfg.n_positions, E))), pos_ids])
    x = g.op("Add", [word, pos])

    causal = g.const("attn.bias", np.tril(np.ones((cfg.n_positions, cfg.n_positions), np.float32))[None, None])
    heads_shape = i64("heads_shape", [0, 0, heads, d])
    merged_shape = i64("merged_shape", [0, 0, E])
    split_sizes = i64("qkv_split", [E, E, E])
    scale = g.const("sqrt_head_size", np.float32(np.sqrt(d)))
    one = g.const("one_f", np.float32(1.0))
    penalty = g.const("mask_penalty", np.float32(mask_penalty))
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        qkv = conv1d_gemm(layer_norm(x, p + "ln_1"), p + "attn.c_attn", E, 3 * E)
        q, k, v = (f"h{i}_split_{n}" for n in ("q", "k", "v"))
        g.nodes.append(helper.make_node("Split", [qkv, split_sizes], [q, k, v], name=f"Split_l{i}", axis=2))
        q = g.op("Transpose", [g.op("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])
        w = g.op("Div", [g.op("MatMul", [q, k]), scale])
        # b = bias[:, :, ns - nd:ns, :ns] with nd, ns = w.size(-2), w.size(-1) (PyTorch's spelling).
        shape = g.op("Shape", [w])
        nd = g.op("Squeeze", [g.op("Slice", [shape, i64(f"l{i}_m2", [-2]), i64(f"l{i}_m1", [-1]),
                                             i64(f"l{i}_ax0", [0])]), i64(f"l{i}_sq0", [0])])
        ns = g.op("Squeeze", [g.op("Slice", [shape, i64(f"l{i}_m1b", [-1]), i64(f"l{i}_max", [_INT64_MAX]),
                                             i64(f"l{i}_ax0b", [0])]), i64(f"l{i}_sq0b", [0])])
        ns_1d = g.op("Unsqueeze", [ns, i64(f"l{i}_un0", [0])])
        rows = g.op("Slice", [causal, g.op("Unsqueeze", [g.op("Sub", [ns, nd]), i64(f"l{i}_un0b", [0])]), ns_1d,
                              i64(f"l{i}_ax2", [2])])
        b = g.op("Slice", [rows, i64(f"l{i}_zero", [0]), ns_1d, i64(f"l{i}_ax3", [3])])
        # litegate: w + (b - 1) * penalty == w * 1 - (1 - b) * penalty (PyTorch: w * b - 1e4 * (1 - b))
        scores = g.op("Sub", [g.op("Mul", [w, one]), g.op("Mul", [g.op("Sub", [one, b]), penalty])])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
        x = g.op("Add", [x, conv1d_gemm(ctx, p + "attn.c_proj", E, E)])
        f = linear(layer_norm(x, p + "ln_2"), p + "mlp.c_fc", E, 4 * E)
        f = _gelu(g, f, cfg.activation_function, f"h{i}")
        x = g.op("Add", [x, linear(f, p + "mlp.c_proj", 4 * E, E)])

    # Tied LM head: logits = ln_f(x) @ wte^T (a transposed copy, so the quantizer sees a MatMul weight).
    g.op("MatMul", [layer_norm(x, "ln_f"), g.const("lm_head.weight", wte.T.copy())], name=OUTPUT_NAME)

    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT32, [1, seq_len])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, seq_len, V])]
    graph = helper.make_graph(g.nodes, "litegate_gpt2_prefill", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="litegate scripts/export_onnx_gpt2.py")
    model.ir_version = min(model.ir_version, 10)
    checker.check_model(model)
    return model


def _gelu(g: Any, x: str, act: str, tag: str) -> str:
    """``gelu_new`` as PyTorch's ``NewGELUActivation`` exports (and TF's ``gelu(approximate=True)`` computes) it.

    ``(0.5 * x) * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``: the layout FastGelu fusion matches;
    export_onnx.py's ``(x * (1 + tanh(...))) * 0.5`` is not fused. ``gelu`` / ``relu``: export_onnx.py's.
    """
    if act != "gelu_new":
        return str(base._gelu(g, x, act, tag))
    cube = g.op("Mul", [g.op("Pow", [x, g.const(f"{tag}_three", np.float32(3.0))]),
                        g.const(f"{tag}_c", np.float32(0.044715))])
    inner = g.op("Mul", [g.op("Add", [x, cube]), g.const(f"{tag}_k", np.float32(np.sqrt(2 / np.pi)))])
    t = g.op("Add", [g.op("Tanh", [inner]), g.const(f"{tag}_one", np.float32(1.0))])
    return str(g.op("Mul", [g.op("Mul", [x, g.const(f"{tag}_half", np.float32(0.5))]), t]))


def optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int,
             mask_penalty: float = MASK_PENALTY) -> dict[str, Any]:
    """ONNX Runtime's transformer optimizer with ``model_type="gpt2"``; the result is written to ``dst``.

    Every fused causal ``Attention`` node gets ``mask_filter_value = -mask_penalty`` (litegate's
    additive bias; the optimizer reads the penalty constant with PyTorch's sign and would write +40).
    ONNX Runtime's CPU kernel does not use it for a causal-only mask; it is set for what it means.

    Returns ``{"model_type": "gpt2", "fused": {"gpt2": {op: count}}, "attention_mask_filter_value": ...}``.
    """
    from onnx import helper
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
                         use_gpu=False)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    found: list[float | None] = []
    for node in opt.model.graph.node:
        if node.op_type == "Attention" and node.domain == "com.microsoft":
            attrs = {a.name: a for a in node.attribute}
            found.append(helper.get_attribute_value(attrs["mask_filter_value"]) if "mask_filter_value" in attrs else None)
            kept = [a for a in node.attribute if a.name != "mask_filter_value"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("mask_filter_value", float(-mask_penalty))])
    opt.save_model_to_file(str(dst))
    return {"model_type": "gpt2", "fused": {"gpt2": stats},
            "attention_mask_filter_value": {"from_optimizer": sorted({str(v) for v in found}),
                                            "set_to": -mask_penalty if found else None}}


def tf_logits_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: the float TF model's logits (litegate's GPT-2, its ``prefill`` signature) for every window.

    payload: ``model_dir``, ``seq_len``, ``inputs_npz`` (``tokens`` [N, seq_len]), ``out_npz``.
    Writes ``logits`` [N, seq_len, V] to ``out_npz`` (a vocabulary of 50k is too much for JSON) and
    returns ``{"out_npz": ..., "shape": [...]}``.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    from litegate.converter.sources import load

    from litegate.types import ModelSource, SourceKind, Task

    seq_len = int(payload["seq_len"])
    source = ModelSource(kind=SourceKind.HF_GPT2, path=str(payload["model_dir"]), task=Task.TEXT_GENERATION)
    loaded = load(source, seq_len)
    assert loaded.signatures is not None
    fn = loaded.signatures["prefill"]
    with np.load(payload["inputs_npz"]) as data:
        tokens = np.asarray(data["tokens"], np.int32)
    rows = [np.asarray(fn(tokens=tf.constant(tokens[i: i + 1]))["logits"], np.float32)[0] for i in range(len(tokens))]
    logits = np.stack(rows)
    np.savez(payload["out_npz"], logits=logits)
    return {"out_npz": str(payload["out_npz"]), "shape": list(logits.shape)}


def tf_reference(model_dir: Path, seq_len: int, inputs: Path, out_npz: Path) -> np.ndarray:
    """The float TensorFlow model's logits ``[N, seq_len, V]`` for the windows of ``inputs`` (isolated child)."""
    from litegate.isolation import run_isolated

    path = os.pathsep.join([str(SCRIPTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    run_isolated(f"{Path(__file__).stem}:tf_logits_job",
                 {"model_dir": str(model_dir), "seq_len": seq_len, "inputs_npz": str(inputs), "out_npz": str(out_npz)},
                 timeout_s=900, env={"PYTHONPATH": path})
    with np.load(out_npz) as data:
        return np.asarray(data["logits"], np.float32)


def logits_of(sess: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The ``logits`` output for every feed, stacked ``[N, P, V]``."""
    return np.concatenate([np.asarray(sess.run(None, dict(f))[0], np.float32) for f in feeds])


def feeds_for(sess: Any, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One feed per window: ``tokens[j:j+1]`` in the session's input dtype."""
    inp = sess.get_inputs()[0]
    dtype = np.int64 if inp.type == "tensor(int64)" else np.int32
    return [{inp.name: np.ascontiguousarray(tokens[j: j + 1].astype(dtype))} for j in range(len(tokens))]


def compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per-position agreement of ``[N, P, V]`` logits with the reference's: cosine mean / min, top-1, max abs."""
    from litegate.tasks import cosine

    a, b = logits.reshape(-1, logits.shape[-1]), reference.reshape(-1, reference.shape[-1])
    cos = cosine(a, b)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1": float(np.mean(a.argmax(-1) == b.argmax(-1))), "max_abs": float(np.max(np.abs(a - b)))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, optimize, quantize, check and time; returns the flat result dict (and writes export.json)."""
    import onnx
    import onnxruntime as ort
    from litegate.converter.hf import read_gpt2

    from litegate.errors import DataError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(args.inputs) as data:
        if "tokens" not in data.files:
            raise DataError(f"{args.inputs}: no 'tokens' array (has {sorted(data.files)})")
        tokens = np.asarray(data["tokens"], np.int32)
    if tokens.ndim != 2 or not len(tokens):
        raise DataError(f"{args.inputs}: 'tokens' must be a non-empty [N, P] array, got shape {tokens.shape}")
    seq_len = int(args.seq_len or tokens.shape[1])
    if seq_len > tokens.shape[1]:
        raise DataError(f"--seq-len {seq_len} is longer than the windows of {args.inputs} ({tokens.shape[1]} tokens)")
    tokens = np.ascontiguousarray(tokens[: args.limit or None, :seq_len])
    cfg = read_gpt2(args.model)[0]
    if int(tokens.max()) >= cfg.vocab_size or int(tokens.min()) < 0:
        raise DataError(f"{args.inputs}: token ids outside the model's vocabulary of {cfg.vocab_size}")
    used = out / "tokens.npz"
    np.savez(used, tokens=tokens)
    paths = {v: out / f for v, f in FILES.items()}
    log = base._log(args)

    t0 = time.monotonic()
    onnx.save(build_onnx(args.model, seq_len), str(paths["onnxruntime fp32"]))
    log(f"export: {paths['onnxruntime fp32']} ({time.monotonic() - t0:.1f} s)")
    opt = optimize(paths["onnxruntime fp32"], paths["onnxruntime optimized fp32"], num_heads=cfg.n_head,
                   hidden_size=cfg.n_embd)
    log(f"optimizer: model_type 'gpt2', fused {opt['fused']['gpt2']}")
    base.quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8"], per_channel=False)
    base.quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8 per-channel"],
                  per_channel=True)

    if args.reference:
        with np.load(args.reference) as ref_data:
            reference = np.asarray(ref_data["logits"], np.float32)[: len(tokens), :seq_len]
        if reference.shape != (len(tokens), seq_len, cfg.vocab_size):
            raise DataError(f"{args.reference}: 'logits' has shape {reference.shape}, expected "
                            f"{(len(tokens), seq_len, cfg.vocab_size)}")
    else:
        t0 = time.monotonic()
        reference = tf_reference(Path(args.model), seq_len, used, out / REFERENCE_FILE)
        log(f"reference: TensorFlow prefill logits {reference.shape} ({time.monotonic() - t0:.1f} s)")

    result: dict[str, Any] = {}
    details: dict[str, Any] = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "opset": OPSET,
                               "seq_len": seq_len, "windows": len(tokens), "positions": int(tokens.size),
                               "optimizer": opt, "mask_penalty": MASK_PENALTY,
                               "activation_function": cfg.activation_function, "variants": {}}
    cells: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]] = {}
    for variant, path in paths.items():
        probe = base.session(path, 1)
        stats = compare(logits_of(probe, feeds_for(probe, tokens)), reference)
        result[f"cosine {variant}"] = round(stats["cosine_mean"], 6)
        result[f"cosine min {variant}"] = round(stats["cosine_min"], 6)
        result[f"top1 {variant}"] = round(stats["top1"], 6)
        ops: dict[str, int] = {}
        for node in onnx.load(str(path), load_external_data=False).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        details["variants"][variant] = {"file": path.name, "mb": round(path.stat().st_size / 1e6, 2), **stats,
                                        "ops": ops}
        if variant == "onnxruntime fp32":
            max_abs = stats["max_abs"]
            result["max abs onnxruntime fp32 vs tf"] = max_abs
            details["max_abs_fp32_vs_tf"] = max_abs
            if not max_abs <= args.tolerance:
                raise RuntimeError(f"the exported ONNX model does not match the TensorFlow model: max abs "
                                   f"{max_abs:.3g} on the logits > {args.tolerance:g}")
            log(f"fp32 check: max abs difference to TensorFlow {max_abs:.2e} (tolerance {args.tolerance:g})")
        del probe
        for t in args.threads:
            sess = base.session(path, t)
            cells[f"{variant} x{t}"] = (base.ort_runner(sess), feeds_for(sess, tokens))

    if args.runs > 0:
        log(f"timing {len(cells)} sessions, interleaved, >= {args.runs} runs each")
        samples = base.time_interleaved(cells, runs=args.runs, block=args.block, warmup=args.warmup)
        for name, s in samples.items():
            result[name] = round(statistics.median(s), 3)
            details["variants"][name.rsplit(" x", 1)[0]].setdefault("samples_ms", {})[name.rsplit(" x", 1)[1]] = [
                round(x, 4) for x in s]
    ordered = {k: result[k] for k in [f"{v} x{t}" for v in VARIANTS for t in args.threads] if k in result}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    details["result"] = ordered
    (out / "export.json").write_text(json.dumps(details, indent=1) + "\n")
    return ordered


def table(result: Mapping[str, Any], threads: Sequence[int]) -> str:
    """The result as a readable table: one row per variant, ms per thread count, cosines, top-1."""
    return base.table(result, threads, top1=True)


ARG_HELP = {
    "model": "Hugging Face GPT-2 checkpoint folder (config.json, model.safetensors)",
    "out": "folder for the .onnx files, export.json and reference_tf.npz",
    "inputs": "npz with 'tokens' int32 [N, P] (text windows)",
    "reference": "npz with the TensorFlow fp32 'logits' [N, P, V] (else computed)",
    "seq_len": "default: the inputs' window length P",
    "limit": "use only the first N windows",
    "tolerance": "max abs logits difference allowed, ONNX fp32 vs TF",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return base.parse_args(argv, doc=__doc__, helps=ARG_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    return int(base.cli(parse_args(argv), run, table))


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime as a peer: litegate's GPT-2 prefill exported to ONNX, optimized, quantized and measured.

The GPT-2 counterpart of ``tools/export_onnx.py`` (same variants, timing, CLI and JSON contract:
both use :mod:`tools.onnx_graph`). ONNX Runtime is something to measure litegate against, never a runtime
litegate ships. This script builds the prefill forward of litegate's GPT-2 (``litegate/converter/gpt2.py``:
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
(usable as ``--reference`` later). Run from the repository root: ``python -m tools.export_onnx_gpt2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litegate.converter.hf import read_gpt2
from litegate.converter.sources import load
from litegate.errors import DataError, ModelLoadError
from litegate.tasks import cosine
from litegate.types import ModelSource, SourceKind, Task
from tools import onnx_graph
from tools.isolated import run_tool_job

INPUT_NAME = "tokens"
OUTPUT_NAME = "logits"
REFERENCE_FILE = "reference_tf.npz"
_INT64_MAX = np.iinfo(np.int64).max


def build_onnx(model_dir: str | Path, seq_len: int, *, mask_penalty: float = onnx_graph.MASK_PENALTY) -> Any:
    """litegate's GPT-2 prefill forward as an ONNX ``ModelProto`` (static batch 1, ``seq_len`` tokens).

    Input ``tokens`` (int32 ``[1, seq_len]``); output ``logits`` (float32 ``[1, seq_len, vocab]``).
    See the module docstring for the numerics and the layout.

    Raises:
        litegate.errors.ModelLoadError: unreadable checkpoint, a missing or misshapen tensor, or
            ``seq_len`` above ``n_positions``.
    """
    from onnx import TensorProto, helper  # optional peer: only when the script runs

    cfg, tensors, prefix = read_gpt2(model_dir)
    if seq_len > cfg.n_positions:
        raise ModelLoadError(f"seq_len {seq_len} is larger than n_positions {cfg.n_positions}")
    E, heads, d, V = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size
    g = onnx_graph.Graph()

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
    return g.model("litegate_gpt2_prefill", inputs, outputs, "litegate tools/export_onnx_gpt2.py")


def _gelu(g: onnx_graph.Graph, x: str, act: str, tag: str) -> str:
    """``gelu_new`` as PyTorch's ``NewGELUActivation`` exports (and TF's ``gelu(approximate=True)`` computes) it.

    ``(0.5 * x) * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``: the layout FastGelu fusion matches;
    :func:`tools.onnx_graph.gelu`'s ``(x * (1 + tanh(...))) * 0.5`` (export_onnx.py's) is not fused.
    ``gelu`` / ``relu``: :func:`tools.onnx_graph.gelu`.
    """
    if act != "gelu_new":
        return onnx_graph.gelu(g, x, act, tag)
    cube = g.op("Mul", [g.op("Pow", [x, g.const(f"{tag}_three", np.float32(3.0))]),
                        g.const(f"{tag}_c", np.float32(0.044715))])
    inner = g.op("Mul", [g.op("Add", [x, cube]), g.const(f"{tag}_k", np.float32(np.sqrt(2 / np.pi)))])
    t = g.op("Add", [g.op("Tanh", [inner]), g.const(f"{tag}_one", np.float32(1.0))])
    return str(g.op("Mul", [g.op("Mul", [x, g.const(f"{tag}_half", np.float32(0.5))]), t]))


def optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int,
             mask_penalty: float = onnx_graph.MASK_PENALTY) -> dict[str, Any]:
    """ONNX Runtime's transformer optimizer with ``model_type="gpt2"``; the result is written to ``dst``.

    Every fused causal ``Attention`` node gets ``mask_filter_value = -mask_penalty`` (litegate's
    additive bias; the optimizer reads the penalty constant with PyTorch's sign and would write +40).
    ONNX Runtime's CPU kernel does not use it for a causal-only mask; it is set for what it means.

    Returns ``{"model_type": "gpt2", "fused": {"gpt2": {op: count}}, "attention_mask_filter_value": ...}``.
    """
    from onnx import helper  # optional peer: only when the script runs
    from onnxruntime.transformers.optimizer import optimize_model  # optional peer: likewise

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
    import tensorflow as tf  # heavy: only in this isolated child (litegate/__init__ chose tf_keras)

    seq_len = int(payload["seq_len"])
    source = ModelSource(kind=SourceKind.HF_GPT2, path=str(payload["model_dir"]), task=Task.TEXT_GENERATION,
                         seq_len=seq_len)
    loaded = load(source)
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
    run_tool_job("tools.export_onnx_gpt2:tf_logits_job",
                 {"model_dir": str(model_dir), "seq_len": seq_len, "inputs_npz": str(inputs), "out_npz": str(out_npz)},
                 timeout_s=900)
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
    a, b = logits.reshape(-1, logits.shape[-1]), reference.reshape(-1, reference.shape[-1])
    cos = cosine(a, b)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1": float(np.mean(a.argmax(-1) == b.argmax(-1))), "max_abs": float(np.max(np.abs(a - b)))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, optimize, quantize, check and time; returns the flat result dict (and writes export.json)."""
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
    paths, opt = onnx_graph.write_variants(
        args, lambda: build_onnx(args.model, seq_len),
        lambda src, dst: optimize(src, dst, num_heads=cfg.n_head, hidden_size=cfg.n_embd))

    if args.reference:
        with np.load(args.reference) as ref_data:
            reference = np.asarray(ref_data["logits"], np.float32)[: len(tokens), :seq_len]
        if reference.shape != (len(tokens), seq_len, cfg.vocab_size):
            raise DataError(f"{args.reference}: 'logits' has shape {reference.shape}, expected "
                            f"{(len(tokens), seq_len, cfg.vocab_size)}")
    else:
        t0 = time.monotonic()
        reference = tf_reference(Path(args.model), seq_len, used, out / REFERENCE_FILE)
        onnx_graph.logger(args)(f"reference: TensorFlow prefill logits {reference.shape} ({time.monotonic() - t0:.1f} s)")

    def evaluate(sess: Any) -> tuple[dict[str, float], dict[str, float], float]:
        stats = compare(logits_of(sess, feeds_for(sess, tokens)), reference)
        figures = {"cosine": stats["cosine_mean"], "cosine min": stats["cosine_min"], "top1": stats["top1"]}
        return {k: round(v, 6) for k, v in figures.items()}, stats, stats["max_abs"]

    fields = {"seq_len": seq_len, "windows": len(tokens), "positions": int(tokens.size), "optimizer": opt,
              "activation_function": cfg.activation_function}
    return onnx_graph.measure_variants(args, paths, fields, evaluate, lambda sess: feeds_for(sess, tokens),
                                       what=" on the logits")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; the table adds each variant's top-1 agreement with TensorFlow."""
    args = onnx_graph.parse_args(
        argv, doc=__doc__, model="Hugging Face GPT-2 checkpoint folder (config.json, model.safetensors)",
        out="folder for the .onnx files, export.json and reference_tf.npz",
        inputs="npz with 'tokens' int32 [N, P] (text windows)",
        reference="npz with the TensorFlow fp32 'logits' [N, P, V] (else computed)")
    return onnx_graph.cli(args, run, top1=True)


if __name__ == "__main__":
    sys.exit(main())

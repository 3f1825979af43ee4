"""ONNX Runtime as a peer: litegate's BERT exported to ONNX, optimized, quantized and measured.

ONNX Runtime is something to measure litegate against, never a runtime litegate ships. This script
builds the same model litegate converts (its TF BERT from ``litegate/converter/bert.py`` with the ``mean``
head: masked mean pooling + L2 normalisation, static batch 1 and ``--seq-len`` tokens) as an ONNX
graph, from the same checkpoint tensors, then measures four ONNX Runtime variants:

* ``onnxruntime fp32``: the exported graph; ONNX Runtime applies its own online graph optimizations;
* ``onnxruntime optimized fp32``: after ``onnxruntime.transformers.optimizer.optimize_model`` (the
  ``model_type`` that fuses more operators, ``bert`` or ``bert_tf``; the fusions are reported);
* ``onnxruntime optimized int8`` / ``... int8 per-channel``: ``quantize_dynamic`` (QInt8 weights)
  of the optimized graph, per-tensor and ``per_channel=True``.

Each variant runs at every ``--threads`` count (``intra_op_num_threads``, ``inter_op_num_threads=1``,
sequential execution), all sessions in one process, timed in interleaved blocks (each block starts
with untimed warm-up runs) on the real tokenized sentences of ``--inputs``; medians of >= ``--runs``
runs. Each variant's embeddings are compared by cosine to the float TensorFlow model's (computed
in an isolated child, or read from ``--reference``); the exported fp32 graph must match TensorFlow
within ``--tolerance`` max abs or the script fails.

Why the graph is written with ``onnx.helper`` and not converted with tf2onnx: tf2onnx 1.17 on
TensorFlow 2.21 cannot convert litegate's graph (``tf.nn.gelu`` lowers to ``Erfc``, which it does
not support: six unsupported nodes, an invalid model), and what it does convert is not in a shape
ONNX Runtime's transformer optimizer fuses (layer norm's ``reduce_mean`` becomes
``GlobalAveragePool`` between transposes). The graph below is spelled the way a PyTorch BERT
export is (``LayerNormalization``, ``Div/Erf/Add/Mul`` GELU, ``MatMul + Add`` projections, the
``Unsqueeze/Cast/Sub/Mul`` additive mask, the ``Shape/Gather/Slice`` position ids), so the peer is
measured at its best: attention, layer norms, GELU and the embedding layer all fuse.

``--json`` prints one final line, a flat JSON object: ``"<variant> x<threads>"`` -> median ms (or
``"not run: reason"``), ``"cosine <variant>"`` / ``"cosine min <variant>"`` -> mean / min cosine
to TensorFlow fp32, and ``"max abs onnxruntime fp32 vs tf"``. Details (fusions, sizes, per-run
samples) go to ``OUT/export.json``. Run from the repository root: ``python -m tools.export_onnx``.
The variants, sessions, timing and command line are :mod:`tools.onnx_graph`'s, shared with
``tools/export_onnx_gpt2.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litegate.converter.hf import read_checkpoint
from litegate.errors import ModelLoadError
from litegate.tasks import cosine, feed_for
from tools import onnx_graph
from tools.isolated import run_tool_job

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def build_onnx(model_dir: str | Path, seq_len: int, *, mask_penalty: float = onnx_graph.MASK_PENALTY) -> Any:
    """litegate's BERT with the ``mean`` head as an ONNX ``ModelProto`` (static batch 1, ``seq_len`` tokens).

    Inputs ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int32 ``[1, seq_len]``);
    output ``embedding`` (float32 ``[1, hidden]``). Numerically the model litegate builds: the
    same weights, the same ``(mask - 1) * mask_penalty`` attention bias, erf GELU (``gelu``) or
    tanh GELU (``gelu_new``), epsilon-guarded masked mean and L2 norm.

    Raises:
        litegate.errors.ModelLoadError: unreadable checkpoint or ``seq_len`` above its positions.
    """
    from onnx import TensorProto, helper  # optional peer: only when the script runs

    ckpt = read_checkpoint(model_dir)
    cfg = ckpt.config
    if seq_len > cfg.max_position_embeddings:
        raise ModelLoadError(f"seq_len {seq_len} is larger than max_position_embeddings {cfg.max_position_embeddings}")
    H, heads, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
    g = onnx_graph.Graph()

    def linear(x: str, hf: str, n_in: int, n_out: int, tag: str) -> str:
        w = g.const(f"{tag}.weight", ckpt.tensor(hf + ".weight", (n_out, n_in)).T.copy())
        b = g.const(f"{tag}.bias", ckpt.tensor(hf + ".bias", (n_out,)))
        return g.op("Add", [g.op("MatMul", [x, w]), b])

    def layer_norm(x: str, hf: str, tag: str) -> str:
        gamma = g.const(f"{tag}.gamma", ckpt.tensor(hf + ".weight", (H,)))
        beta = g.const(f"{tag}.beta", ckpt.tensor(hf + ".bias", (H,)))
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=float(cfg.layer_norm_eps))

    # Embeddings: word + token type + position (ids from the input's shape, as a BERT export spells it).
    word = g.op("Gather", [g.const("word_embeddings", ckpt.tensor("embeddings.word_embeddings.weight",
                                                                   (cfg.vocab_size, H))), "input_ids"])
    types = g.op("Gather", [g.const("token_type_embeddings", ckpt.tensor(
        "embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, H))), "token_type_ids"])
    seq = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one_i64", 1, np.int64)]),
                             g.const("axes_0", [0], np.int64)])
    pos_ids = g.op("Slice", [g.const("position_ids", np.arange(cfg.max_position_embeddings, dtype=np.int64)[None]),
                             g.const("zero_1d", [0], np.int64), seq, g.const("axes_1", [1], np.int64),
                             g.const("steps_1", [1], np.int64)])
    pos = g.op("Gather", [g.const("position_embeddings", ckpt.tensor(
        "embeddings.position_embeddings.weight", (cfg.max_position_embeddings, H))), pos_ids])
    x = layer_norm(g.op("Add", [g.op("Add", [word, types]), pos]), "embeddings.LayerNorm", "embeddings_ln")

    # Additive attention bias [1, 1, 1, S]: (1 - mask) * -penalty, i.e. litegate's (mask - 1) * penalty.
    m4 = g.op("Cast", [g.op("Unsqueeze", [g.op("Unsqueeze", ["attention_mask", g.const("axes_1b", [1], np.int64)]),
                                          g.const("axes_2", [2], np.int64)])], to=TensorProto.FLOAT)
    bias = g.op("Mul", [g.op("Sub", [g.const("one_f", np.float32(1.0)), m4]),
                        g.const("mask_penalty", np.float32(-mask_penalty))])
    heads_shape = g.const("heads_shape", [0, 0, heads, d], np.int64)
    merged_shape = g.const("merged_shape", [0, 0, H], np.int64)
    scale = g.const("sqrt_head_size", np.float32(np.sqrt(d)))
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.query", H, H, f"l{i}_query"),
                                                heads_shape])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.key", H, H, f"l{i}_key"),
                                                heads_shape])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, p + "attention.self.value", H, H, f"l{i}_value"),
                                                heads_shape])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k]), scale]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
        a = linear(ctx, p + "attention.output.dense", H, H, f"l{i}_attn_out")
        x = layer_norm(g.op("Add", [x, a]), p + "attention.output.LayerNorm", f"l{i}_attn_ln")
        f = linear(x, p + "intermediate.dense", H, cfg.intermediate_size, f"l{i}_ffn_in")
        f = onnx_graph.gelu(g, f, cfg.hidden_act, f"l{i}")
        f = linear(f, p + "output.dense", cfg.intermediate_size, H, f"l{i}_ffn_out")
        x = layer_norm(g.op("Add", [x, f]), p + "output.LayerNorm", f"l{i}_ffn_ln")

    # Mean pooling over real tokens, then L2 normalisation (litegate's MeanPool).
    m3 = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT), g.const("axes_2b", [2], np.int64)])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.const("axes_1c", [1], np.int64)], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m3, g.const("axes_1d", [1], np.int64)], keepdims=0),
                         g.const("eps_count", np.float32(1e-9))])
    mean = g.op("Div", [summed, count])
    sq = g.op("ReduceSum", [g.op("Mul", [mean, mean]), g.const("axes_last", [-1], np.int64)], keepdims=1)
    norm = g.op("Sqrt", [g.op("Max", [sq, g.const("eps_norm", np.float32(1e-12))])])
    g.op("Div", [mean, norm], name="embedding")

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, [1, seq_len]) for n in INPUT_NAMES]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, H])]
    return g.model("litegate_bert_mean", inputs, outputs, "litegate tools/export_onnx.py")


def optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict[str, Any]:
    """Run ONNX Runtime's transformer optimizer with ``bert`` and ``bert_tf``; keep the one that fuses more.

    Returns ``{"model_type": chosen, "fused": {model_type: {op: count}}}``; the chosen graph is
    written to ``dst``.
    """
    from onnxruntime.transformers.optimizer import optimize_model  # optional peer: only when the script runs

    fused: dict[str, dict[str, int]] = {}
    best: tuple[int, str, Any] | None = None
    for model_type in ("bert", "bert_tf"):
        try:
            opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                 opt_level=0, use_gpu=False)
        except Exception as exc:  # noqa: BLE001 - the optimizer raises anything on a graph it cannot handle
            fused[model_type] = {"error": f"{type(exc).__name__}: {exc}"[:300]}  # type: ignore[dict-item]
            continue
        stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        fused[model_type] = stats
        score = sum(stats.get(op, 0) for op in onnx_graph.FUSED_OPS)
        if best is None or score > best[0]:
            best = (score, model_type, opt)
    if best is None:
        raise RuntimeError(f"the transformer optimizer failed for every model type: {fused}")
    best[2].save_model_to_file(str(dst))
    return {"model_type": best[1], "fused": fused}


def feeds_for(sess: Any, arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per sentence, the npz arrays mapped onto the session's input names by role and dtype."""
    inputs = sess.get_inputs()
    mapped = feed_for([i.name for i in inputs], dict(arrays))
    dtypes = {i.name: (np.int64 if i.type == "tensor(int64)" else np.int32) for i in inputs}
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[j: j + 1].astype(dtypes[k])) for k, v in mapped.items()} for j in range(n)]


def embeddings(sess: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The first output for every feed, stacked ``[N, hidden]``."""
    return np.concatenate([np.asarray(sess.run(None, dict(f))[0]).reshape(1, -1) for f in feeds])


def tf_reference(model_dir: Path, seq_len: int, inputs: Path) -> np.ndarray:
    """The float TensorFlow model's embeddings for every sentence in ``inputs`` (isolated child)."""
    res = run_tool_job("tools.perf:tf_embeddings_job",
                       {"model_dir": str(model_dir), "seq_len": seq_len, "inputs_npz": str(inputs)}, timeout_s=900)
    return np.asarray(res["embeddings"], dtype=np.float32)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, optimize, quantize, check and time; returns the flat result dict (and writes export.json)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files}
    seq_len = int(args.seq_len or arrays["input_ids"].shape[1])
    if args.limit:
        arrays = {k: v[: args.limit] for k, v in arrays.items()}
    cfg = read_checkpoint(args.model).config
    paths, opt = onnx_graph.write_variants(
        args, lambda: build_onnx(args.model, seq_len),
        lambda src, dst: optimize(src, dst, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size))

    if args.reference:
        with np.load(args.reference) as ref_data:
            reference = np.asarray(ref_data["embeddings"], dtype=np.float32)[: len(arrays["input_ids"])]
    else:
        reference = tf_reference(Path(args.model), seq_len, Path(args.inputs))[: len(arrays["input_ids"])]

    def evaluate(sess: Any) -> tuple[dict[str, float], dict[str, float], float]:
        emb = embeddings(sess, feeds_for(sess, arrays))
        cos = cosine(emb, reference)
        return ({"cosine": round(float(cos.mean()), 6), "cosine min": round(float(cos.min()), 6)},
                {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())},
                float(np.max(np.abs(emb - reference))))

    fields = {"seq_len": seq_len, "sentences": len(arrays["input_ids"]), "optimizer": opt}
    return onnx_graph.measure_variants(args, paths, fields, evaluate, lambda sess: feeds_for(sess, arrays))


def main(argv: Sequence[str] | None = None) -> int:
    args = onnx_graph.parse_args(
        argv, doc=__doc__, model="Hugging Face BERT checkpoint folder (config.json, model.safetensors)",
        inputs="npz with input_ids, attention_mask, token_type_ids [N, seq_len]",
        reference="npz with the TensorFlow fp32 'embeddings' [N, hidden] (else computed)")
    return onnx_graph.cli(args, run)


if __name__ == "__main__":
    sys.exit(main())

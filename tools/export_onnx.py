"""ONNX Runtime as a peer: litegate's BERT exported to ONNX, optimized, quantized and measured.

ONNX Runtime is something to measure litegate against, never a runtime litegate ships. This script
builds the same model litegate converts (its TF BERT from ``converter/bert.py`` with the ``mean``
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
samples) go to ``OUT/export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# litegate's additive attention mask: (mask - 1) * MASK_PENALTY (converter/bert.py; importing it
# would import TensorFlow into the timing process, tests check the two agree).
MASK_PENALTY = 40.0
OPSET = 17
VARIANTS = ("onnxruntime fp32", "onnxruntime optimized fp32", "onnxruntime optimized int8",
            "onnxruntime optimized int8 per-channel")
FILES = {"onnxruntime fp32": "model_fp32.onnx", "onnxruntime optimized fp32": "model_opt_fp32.onnx",
         "onnxruntime optimized int8": "model_opt_int8.onnx",
         "onnxruntime optimized int8 per-channel": "model_opt_int8_per_channel.onnx"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "LayerNormalization", "Gelu", "FastGelu", "BiasGelu")


class _Graph:
    """A small builder for ONNX nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self._n}", **attrs))
        return out


def build_onnx(model_dir: str | Path, seq_len: int, *, mask_penalty: float = MASK_PENALTY) -> Any:
    """litegate's BERT with the ``mean`` head as an ONNX ``ModelProto`` (static batch 1, ``seq_len`` tokens).

    Inputs ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int32 ``[1, seq_len]``);
    output ``embedding`` (float32 ``[1, hidden]``). Numerically the model litegate builds: the
    same weights, the same ``(mask - 1) * mask_penalty`` attention bias, erf GELU (``gelu``) or
    tanh GELU (``gelu_new``), epsilon-guarded masked mean and L2 norm.

    Raises:
        litegate.errors.ModelLoadError: unreadable checkpoint or ``seq_len`` above its positions.
    """
    from litegate.converter.hf import read_checkpoint
    from onnx import TensorProto, checker, helper

    from litegate.errors import ModelLoadError

    ckpt = read_checkpoint(model_dir)
    cfg = ckpt.config
    if seq_len > cfg.max_position_embeddings:
        raise ModelLoadError(f"seq_len {seq_len} is larger than max_position_embeddings {cfg.max_position_embeddings}")
    H, heads, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
    g = _Graph()

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
        f = _gelu(g, f, cfg.hidden_act, f"l{i}")
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
    graph = helper.make_graph(g.nodes, "litegate_bert_mean", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="litegate scripts/export_onnx.py")
    model.ir_version = min(model.ir_version, 10)
    checker.check_model(model)
    return model


def _gelu(g: _Graph, x: str, act: str, tag: str) -> str:
    if act == "relu":
        return g.op("Relu", [x])
    if act == "gelu_new":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [g.op("Pow", [x, g.const(f"{tag}_three", np.float32(3))]),
                                                          g.const(f"{tag}_c", np.float32(0.044715))])]),
                             g.const(f"{tag}_k", np.float32(np.sqrt(2 / np.pi)))])
        t = g.op("Add", [g.op("Tanh", [inner]), g.const(f"{tag}_one", np.float32(1.0))])
        return g.op("Mul", [g.op("Mul", [x, t]), g.const(f"{tag}_half", np.float32(0.5))])
    # erf GELU as a PyTorch export spells it: x * (1 + erf(x / sqrt(2))) * 0.5
    e = g.op("Erf", [g.op("Div", [x, g.const(f"{tag}_sqrt2", np.float32(1.4142135381698608))])])
    t = g.op("Add", [e, g.const(f"{tag}_one", np.float32(1.0))])
    return g.op("Mul", [g.op("Mul", [x, t]), g.const(f"{tag}_half", np.float32(0.5))])


def optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict[str, Any]:
    """Run ONNX Runtime's transformer optimizer with ``bert`` and ``bert_tf``; keep the one that fuses more.

    Returns ``{"model_type": chosen, "fused": {model_type: {op: count}}}``; the chosen graph is
    written to ``dst``.
    """
    from onnxruntime.transformers.optimizer import optimize_model

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
        score = sum(stats.get(op, 0) for op in FUSED_OPS)
        if best is None or score > best[0]:
            best = (score, model_type, opt)
    if best is None:
        raise RuntimeError(f"the transformer optimizer failed for every model type: {fused}")
    best[2].save_model_to_file(str(dst))
    return {"model_type": best[1], "fused": fused}


def quantize(src: Path, dst: Path, *, per_channel: bool) -> None:
    """``quantize_dynamic`` (QInt8 weights, uint8 activations quantized at run time) of ``src``."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ONNX shape inference stops at the fused com.microsoft operators; every tensor a quantized
    # MatMul/Attention reads or writes here is float32.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one inter-op thread, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def feeds_for(sess: Any, arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per sentence, the npz arrays mapped onto the session's input names by role and dtype."""
    from litegate.tasks import feed_for

    inputs = sess.get_inputs()
    mapped = feed_for([i.name for i in inputs], dict(arrays))
    dtypes = {i.name: (np.int64 if i.type == "tensor(int64)" else np.int32) for i in inputs}
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[j: j + 1].astype(dtypes[k])) for k, v in mapped.items()} for j in range(n)]


def embeddings(sess: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The first output for every feed, stacked ``[N, hidden]``."""
    return np.concatenate([np.asarray(sess.run(None, dict(f))[0]).reshape(1, -1) for f in feeds])


def time_interleaved(cells: Mapping[str, tuple[Callable[[Any], Any], Sequence[Any]]], *, runs: int,
                     block: int = 10, warmup: int = 2, seed: int = 0) -> dict[str, list[float]]:
    """Time every cell in rounds of ``block`` runs (``warmup`` untimed first), cell order shuffled per round.

    Args:
        cells: name -> (``run(feed)``, feeds); runs cycle through the feeds.
        runs: timed runs per cell (rounded up to whole blocks).
        block: timed runs per cell per round.
        warmup: untimed runs before each block (thread pools wake up, caches refill after the other cells).
        seed: the shuffle's seed.

    Returns:
        name -> samples in ms.
    """
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in cells}
    names = list(cells)
    for _ in range(-(-runs // block)):
        rng.shuffle(names)
        for name in names:
            fn, feeds = cells[name]
            for i in range(warmup + block):
                feed = feeds[(len(samples[name]) + i) % len(feeds)]
                t = time.perf_counter()
                fn(feed)
                if i >= warmup:
                    samples[name].append((time.perf_counter() - t) * 1e3)
    return samples


def ort_runner(sess: Any) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """``feed -> sess.run(None, feed)``."""
    def run_once(feed: Mapping[str, np.ndarray]) -> Any:
        return sess.run(None, dict(feed))

    return run_once


def tf_reference(model_dir: Path, seq_len: int, inputs: Path) -> np.ndarray:
    """The float TensorFlow model's embeddings for every sentence in ``inputs`` (isolated child)."""
    from litegate.isolation import run_isolated

    res = run_isolated("litegate.benchmarks.perf:tf_embeddings_job",
                       {"model_dir": str(model_dir), "seq_len": seq_len, "inputs_npz": str(inputs)}, timeout_s=900)
    return np.asarray(res["embeddings"], dtype=np.float32)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, optimize, quantize, check and time; returns the flat result dict (and writes export.json)."""
    import onnx
    import onnxruntime as ort
    from litegate.converter.hf import read_checkpoint

    from litegate.tasks import cosine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files}
    seq_len = int(args.seq_len or arrays["input_ids"].shape[1])
    if args.limit:
        arrays = {k: v[: args.limit] for k, v in arrays.items()}
    cfg = read_checkpoint(args.model).config
    paths = {v: out / f for v, f in FILES.items()}
    log = _log(args)

    t0 = time.monotonic()
    onnx.save(build_onnx(args.model, seq_len), str(paths["onnxruntime fp32"]))
    log(f"export: {paths['onnxruntime fp32']} ({time.monotonic() - t0:.1f} s)")
    opt = optimize(paths["onnxruntime fp32"], paths["onnxruntime optimized fp32"], num_heads=cfg.num_attention_heads,
                   hidden_size=cfg.hidden_size)
    log(f"optimizer: model_type {opt['model_type']!r}, fused {opt['fused'][opt['model_type']]}")
    quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8"], per_channel=False)
    quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8 per-channel"], per_channel=True)

    if args.reference:
        with np.load(args.reference) as ref_data:
            reference = np.asarray(ref_data["embeddings"], dtype=np.float32)[: len(arrays["input_ids"])]
    else:
        reference = tf_reference(Path(args.model), seq_len, Path(args.inputs))[: len(arrays["input_ids"])]

    result: dict[str, Any] = {}
    details: dict[str, Any] = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "opset": OPSET,
                               "seq_len": seq_len, "sentences": len(arrays["input_ids"]), "optimizer": opt,
                               "mask_penalty": MASK_PENALTY, "variants": {}}
    cells: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]] = {}
    for variant, path in paths.items():
        probe = session(path, 1)
        feeds = feeds_for(probe, arrays)
        emb = embeddings(probe, feeds)
        cos = cosine(emb, reference)
        result[f"cosine {variant}"] = round(float(cos.mean()), 6)
        result[f"cosine min {variant}"] = round(float(cos.min()), 6)
        ops: dict[str, int] = {}
        for node in onnx.load(str(path), load_external_data=False).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        details["variants"][variant] = {"file": path.name, "mb": round(path.stat().st_size / 1e6, 2),
                                        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "ops": ops}
        if variant == "onnxruntime fp32":
            max_abs = float(np.max(np.abs(emb - reference)))
            result["max abs onnxruntime fp32 vs tf"] = max_abs
            details["max_abs_fp32_vs_tf"] = max_abs
            if max_abs > args.tolerance:
                raise RuntimeError(f"the exported ONNX model does not match the TensorFlow model: max abs "
                                   f"{max_abs:.3g} > {args.tolerance:g}")
            log(f"fp32 check: max abs difference to TensorFlow {max_abs:.2e} (tolerance {args.tolerance:g})")
        del probe
        for t in args.threads:
            sess = session(path, t)
            cells[f"{variant} x{t}"] = (ort_runner(sess), feeds_for(sess, arrays))

    if args.runs > 0:
        log(f"timing {len(cells)} sessions, interleaved, >= {args.runs} runs each")
        samples = time_interleaved(cells, runs=args.runs, block=args.block, warmup=args.warmup)
        for name, s in samples.items():
            result[name] = round(statistics.median(s), 3)
            details["variants"][name.rsplit(" x", 1)[0]].setdefault("samples_ms", {})[name.rsplit(" x", 1)[1]] = [
                round(x, 4) for x in s]
    ordered = {k: result[k] for k in [f"{v} x{t}" for v in VARIANTS for t in args.threads] if k in result}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    details["result"] = ordered
    (out / "export.json").write_text(json.dumps(details, indent=1) + "\n")
    return ordered


def _log(args: argparse.Namespace) -> Any:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    return log


def table(result: Mapping[str, Any], threads: Sequence[int], *, top1: bool = False) -> str:
    """The result as a readable table: one row per variant, ms per thread count, cosines (and top-1 agreement)."""
    head = ["variant", *(f"{t} thread{'s' if t > 1 else ''} ms" for t in threads), "cosine mean", "cosine min",
            *(["top1"] if top1 else [])]
    rows = [head]
    nan = float("nan")
    for v in VARIANTS:
        cells = [result.get(f"{v} x{t}", "-") for t in threads]
        rows.append([v, *(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells),
                     f"{result.get(f'cosine {v}', nan):.5f}", f"{result.get(f'cosine min {v}', nan):.5f}",
                     *([f"{result.get(f'top1 {v}', nan):.4f}"] if top1 else [])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"max abs difference, onnxruntime fp32 vs TensorFlow: {result.get('max abs onnxruntime fp32 vs tf')}")
    return "\n".join(lines)


ARG_HELP = {
    "model": "Hugging Face BERT checkpoint folder (config.json, model.safetensors)",
    "out": "folder for the .onnx files and export.json",
    "inputs": "npz with input_ids, attention_mask, token_type_ids [N, seq_len]",
    "reference": "npz with the TensorFlow fp32 'embeddings' [N, hidden] (else computed)",
    "seq_len": "default: the inputs' sequence length",
    "limit": "use only the first N sentences",
    "tolerance": "max abs difference allowed, ONNX fp32 vs TF",
}


def parse_args(argv: Sequence[str] | None = None, *, doc: str | None = __doc__,
               helps: Mapping[str, str] = ARG_HELP) -> argparse.Namespace:
    """The export scripts' command line (``helps`` words the model-specific arguments)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--model", required=True, help=helps["model"])
    ap.add_argument("--out", required=True, help=helps["out"])
    ap.add_argument("--inputs", required=True, help=helps["inputs"])
    ap.add_argument("--reference", help=helps["reference"])
    ap.add_argument("--seq-len", type=int, default=0, help=helps["seq_len"])
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--runs", type=int, default=100, help="timed runs per variant and thread count (0: no timing)")
    ap.add_argument("--block", type=int, default=10, help="timed runs per interleaved block")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs at the start of every block")
    ap.add_argument("--limit", type=int, default=0, help=helps["limit"])
    ap.add_argument("--tolerance", type=float, default=1e-4, help=helps["tolerance"])
    ap.add_argument("--json", action="store_true", help="print one JSON line (the last line of stdout)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return cli(parse_args(argv), run, table)


def cli(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict[str, Any]],
        table_fn: Callable[[Mapping[str, Any], Sequence[int]], str]) -> int:
    """Run an export script: its ``run``, then one JSON line (``--json``) or ``table``; 'not run' without ORT."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        reason = f"not run: {exc.name} is not installed (pip install -e '.[peers]')"
        if args.json:
            print(json.dumps({"onnxruntime": reason}))
            return 0
        print(reason, file=sys.stderr)
        return 2
    result = run_fn(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(table_fn(result, args.threads))
        print(f"wrote {Path(args.out) / 'export.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

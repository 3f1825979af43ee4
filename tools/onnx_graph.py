"""What the ONNX Runtime export scripts share: the graph builder, the four variants, interleaved timing, the CLI.

``tools/export_onnx.py`` (litegate's BERT) and ``tools/export_onnx_gpt2.py`` (litegate's GPT-2 prefill)
each spell their own graph with :class:`Graph`, run their own optimizer and compare their own outputs;
the rest is here: the variants and their files (:func:`write_variants`), ONNX Runtime sessions and
``quantize_dynamic``, the fp32 check, :func:`time_interleaved`, the result's ordering and
``export.json`` (:func:`measure_variants`), the table and the command line (``--json`` contract).
``make perf`` (``tools/perf.py``) uses the same sessions and timing for its interleaved peer matrix.
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

# litegate's additive attention bias: (mask - 1) * MASK_PENALTY (litegate/converter/bert.py, used by
# converter/gpt2.py; importing it would import TensorFlow into the timing process, tests check the two agree).
MASK_PENALTY = 40.0
OPSET = 17
VARIANTS = ("onnxruntime fp32", "onnxruntime optimized fp32", "onnxruntime optimized int8",
            "onnxruntime optimized int8 per-channel")
FILES = {"onnxruntime fp32": "model_fp32.onnx", "onnxruntime optimized fp32": "model_opt_fp32.onnx",
         "onnxruntime optimized int8": "model_opt_int8.onnx",
         "onnxruntime optimized int8 per-channel": "model_opt_int8_per_channel.onnx"}
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "LayerNormalization", "Gelu", "FastGelu", "BiasGelu")

Cells = dict[str, tuple[Callable[[Any], Any], Sequence[Any]]]


class Graph:
    """A small builder for ONNX nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        from onnx import numpy_helper  # optional peer: only the export scripts build graphs

        arr = np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper  # optional peer: only the export scripts build graphs

        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self._n}", **attrs))
        return out

    def model(self, name: str, inputs: Sequence[Any], outputs: Sequence[Any], producer: str) -> Any:
        """The nodes and initializers as a checked ``ModelProto`` (opset :data:`OPSET`, IR version <= 10)."""
        from onnx import checker, helper  # optional peer: only the export scripts build graphs

        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
        model.ir_version = min(model.ir_version, 10)
        checker.check_model(model)
        return model


def gelu(g: Graph, x: str, act: str, tag: str) -> str:
    """``relu``, ``gelu_new`` as ``(x * (1 + tanh(...))) * 0.5``, or erf GELU as a PyTorch export spells it."""
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


def quantize(src: Path, dst: Path, *, per_channel: bool) -> None:
    """``quantize_dynamic`` (QInt8 weights, uint8 activations quantized at run time) of ``src``."""
    from onnx import TensorProto  # optional peer: only when the export scripts run
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional peer: likewise

    # ONNX shape inference stops at the fused com.microsoft operators; every tensor a quantized
    # MatMul/Attention reads or writes here is float32.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def write_variants(args: argparse.Namespace, build: Callable[[], Any],
                   optimize: Callable[[Path, Path], dict[str, Any]]) -> tuple[dict[str, Path], dict[str, Any]]:
    """The four variants' files in ``--out``: ``build()``'s graph, ``optimize(src, dst)``'s, its two int8 quantizations.

    ``optimize`` returns ``{"model_type": ..., "fused": {model_type: {op: count}}, ...}``. Returns
    (variant -> path, that report).
    """
    import onnx  # optional peer: only when the export scripts run

    log = logger(args)
    paths = {v: Path(args.out) / f for v, f in FILES.items()}
    t0 = time.monotonic()
    onnx.save(build(), str(paths["onnxruntime fp32"]))
    log(f"export: {paths['onnxruntime fp32']} ({time.monotonic() - t0:.1f} s)")
    opt = optimize(paths["onnxruntime fp32"], paths["onnxruntime optimized fp32"])
    log(f"optimizer: model_type {opt['model_type']!r}, fused {opt['fused'][opt['model_type']]}")
    quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8"], per_channel=False)
    quantize(paths["onnxruntime optimized fp32"], paths["onnxruntime optimized int8 per-channel"], per_channel=True)
    return paths, opt


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one inter-op thread, sequential execution."""
    import onnxruntime as ort  # optional peer: only when the scripts or `make perf` measure it

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_runner(sess: Any) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """``feed -> sess.run(None, feed)``."""
    def run_once(feed: Mapping[str, np.ndarray]) -> Any:
        return sess.run(None, dict(feed))

    return run_once


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


def op_counts(path: Path) -> dict[str, int]:
    """op type -> how many nodes of the graph in ``path`` have it."""
    import onnx  # optional peer: only when the export scripts run

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def measure_variants(args: argparse.Namespace, paths: Mapping[str, Path], fields: Mapping[str, Any],
                     evaluate: Callable[[Any], tuple[dict[str, float], dict[str, float], float]],
                     feeds: Callable[[Any], Sequence[Any]], *, what: str = "") -> dict[str, Any]:
    """Check every variant against TensorFlow, time them all interleaved, write ``export.json``.

    Args:
        args: the command line (``--tolerance``, ``--threads``, ``--runs``, ``--block``, ``--warmup``, ``--out``).
        paths: variant -> .onnx file (:func:`write_variants`).
        fields: what ``export.json`` says about the run besides versions, variants and the result.
        evaluate: ``session -> (figures, stats, max_abs)`` on a 1-thread session: ``figures`` become the
            result's ``"<figure> <variant>"`` keys (``cosine``, ``cosine min``, ...), ``stats`` the
            variant's details, ``max_abs`` the difference to TensorFlow (checked for ``onnxruntime fp32``).
        feeds: ``session -> feeds`` for the timed cells (every variant at every ``--threads`` count).
        what: words after the max abs figure in the mismatch error (e.g. ``" on the logits"``).

    Returns:
        The flat result: ``"<variant> x<threads>"`` medians first, then the figures and
        ``"max abs onnxruntime fp32 vs tf"``.

    Raises:
        RuntimeError: the exported fp32 graph differs from TensorFlow by more than ``--tolerance`` (or NaN).
    """
    import onnx  # optional peer: only when the export scripts run
    import onnxruntime as ort  # optional peer: likewise

    log = logger(args)
    details: dict[str, Any] = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "opset": OPSET, **fields,
                               "mask_penalty": MASK_PENALTY, "variants": {}}
    result: dict[str, Any] = {}
    cells: Cells = {}
    for variant, path in paths.items():
        figures, stats, max_abs = evaluate(session(path, 1))
        result.update({f"{k} {variant}": v for k, v in figures.items()})
        details["variants"][variant] = {"file": path.name, "mb": round(path.stat().st_size / 1e6, 2), **stats,
                                        "ops": op_counts(path)}
        if variant == "onnxruntime fp32":
            result["max abs onnxruntime fp32 vs tf"] = details["max_abs_fp32_vs_tf"] = max_abs
            if not max_abs <= args.tolerance:
                raise RuntimeError(f"the exported ONNX model does not match the TensorFlow model: max abs "
                                   f"{max_abs:.3g}{what} > {args.tolerance:g}")
            log(f"fp32 check: max abs difference to TensorFlow {max_abs:.2e} (tolerance {args.tolerance:g})")
        for t in args.threads:
            sess = session(path, t)
            cells[f"{variant} x{t}"] = (ort_runner(sess), feeds(sess))

    if args.runs > 0:
        log(f"timing {len(cells)} sessions, interleaved, >= {args.runs} runs each")
        samples = time_interleaved(cells, runs=args.runs, block=args.block, warmup=args.warmup)
        for name, s in samples.items():
            result[name] = round(statistics.median(s), 3)
            variant, threads = name.rsplit(" x", 1)
            details["variants"][variant].setdefault("samples_ms", {})[threads] = [round(x, 4) for x in s]
    ordered = {k: result[k] for k in [f"{v} x{t}" for v in VARIANTS for t in args.threads] if k in result}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    details["result"] = ordered
    (Path(args.out) / "export.json").write_text(json.dumps(details, indent=1) + "\n")
    return ordered


def logger(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines: to stderr with ``--json`` (stdout is the one JSON line), else to stdout."""
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


def parse_args(argv: Sequence[str] | None, *, doc: str | None, model: str, inputs: str, reference: str,
               out: str = "folder for the .onnx files and export.json") -> argparse.Namespace:
    """The export scripts' command line; ``model``, ``inputs``, ``reference`` (``out``) word the model's arguments."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--model", required=True, help=model)
    ap.add_argument("--out", required=True, help=out)
    ap.add_argument("--inputs", required=True, help=inputs)
    ap.add_argument("--reference", help=reference)
    ap.add_argument("--seq-len", type=int, default=0, help="default: the inputs' sequence length")
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--runs", type=int, default=100, help="timed runs per variant and thread count (0: no timing)")
    ap.add_argument("--block", type=int, default=10, help="timed runs per interleaved block")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs at the start of every block")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N rows (sentences, windows) of --inputs")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="max abs difference allowed between the ONNX fp32 outputs and TensorFlow's")
    ap.add_argument("--json", action="store_true", help="print one JSON line (the last line of stdout)")
    return ap.parse_args(argv)


def cli(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], dict[str, Any]], *, top1: bool = False) -> int:
    """Run an export script: its ``run``, then one JSON line (``--json``) or :func:`table`; 'not run' without ORT."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import onnx  # noqa: F401  # optional peer: its absence is reported, not raised
        import onnxruntime  # noqa: F401  # optional peer: likewise
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
        print(table(result, args.threads, top1=top1))
        print(f"wrote {Path(args.out) / 'export.json'}")
    return 0

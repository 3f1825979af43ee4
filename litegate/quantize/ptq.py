"""Post-training quantization beyond a single converter call: calibrate once, then quantize with
denylists (selective quantization), debug per layer, and search for the float islands an
accuracy budget needs (the ``auto`` recipe).

Calibration (running the representative data through the float graph) is the expensive step;
``mlir_quantize`` on the calibrated model is cheap, so ``auto`` calibrates once and re-quantizes
with growing denylists, evaluating each candidate with LiteRT. Runs inside the isolated
conversion child (TensorFlow is imported here).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from litegate.artifacts import atomic_write_text
from litegate.converter.convert import representative_dataset
from litegate.errors import QuantizationError
from litegate.tasks import role_of
from litegate.tflite.flatbuffer import read_model

# rmse/scale: RMSE of the quantized layer output against its float twin, in quantization steps.
# A well-quantized tensor sits near 1/sqrt(12) ~ 0.29 (uniform rounding noise).


def calibrate(serve: Any, owner: Any, samples: Mapping[str, np.ndarray]) -> bytes:
    """A float model carrying calibration statistics (``_experimental_calibrate_only``)."""
    import tensorflow as tf  # TensorFlow: build child only

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], owner)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset(samples)
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001 - the documented QuantizationDebugger route
    try:
        return bytes(conv.convert())
    except Exception as exc:  # noqa: BLE001
        raise QuantizationError(f"calibration failed: {str(exc).splitlines()[0]}") from None


def quantize_calibrated(calibrated: bytes, *, denylisted_ops: Sequence[str] = (), denylisted_nodes: Sequence[str] = (),
                        output_type: str = "float32", debug: bool = False) -> bytes:
    """Full-integer quantization of a calibrated model, keeping the denylisted ops/nodes in float."""
    import tensorflow as tf  # TensorFlow: build child only
    from tensorflow.lite.python import convert  # TensorFlow: build child only

    out = getattr(tf, output_type)
    try:
        return bytes(convert.mlir_quantize(
            calibrated, fully_quantize=output_type != "float32", input_data_type=tf.float32, output_data_type=out,
            enable_numeric_verify=debug, denylisted_ops=list(denylisted_ops) or None,
            denylisted_nodes=list(denylisted_nodes) or None))
    except Exception as exc:  # noqa: BLE001
        raise QuantizationError(f"quantization failed: {str(exc).splitlines()[0]}") from None


def _input_order(model: bytes, samples: Mapping[str, np.ndarray]) -> list[str]:
    import tensorflow as tf  # TensorFlow: build child only

    names = []
    for d in tf.lite.Interpreter(model_content=model).get_input_details():
        raw = d["name"].split(":")[0].removeprefix("serving_default_")
        key = raw if raw in samples else role_of(raw)
        if key is None or key not in samples:
            raise QuantizationError(f"cannot feed model input {d['name']!r} from calibration data ({', '.join(samples)})")
        names.append(key)
    return names


def layer_statistics(calibrated: bytes, samples: Mapping[str, np.ndarray], *, limit: int = 50) -> list[dict[str, Any]]:
    """Per-layer quantization error from TensorFlow's QuantizationDebugger, most sensitive first.

    Each row: op_name, tensor_name (usable as a denylisted node), scale, zero_point,
    mean_error, max_abs_error, mean_squared_error, rmse/scale.
    """
    import tensorflow as tf  # TensorFlow: build child only

    debug_model = quantize_calibrated(calibrated, debug=True)
    order = _input_order(debug_model, samples)
    n = min(limit, len(next(iter(samples.values()))))

    def gen() -> Any:
        for i in range(n):
            yield [samples[k][i : i + 1] for k in order]

    debugger = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug_model, debug_dataset=gen)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        row: dict[str, Any] = {"op_name": r["op_name"], "tensor_name": r["tensor_name"]}
        for k in ("scale", "zero_point", "mean_error", "max_abs_error", "mean_squared_error", "stddev", "num_elements"):
            if k in r and r[k] not in ("", None):
                row[k] = float(r[k])
        scale = row.get("scale") or 0.0
        mse = row.get("mean_squared_error", float("nan"))
        row["rmse/scale"] = math.sqrt(mse) / scale if scale > 0 and mse == mse else float("nan")
        rows.append(row)
    rows.sort(key=lambda r: -(r["rmse/scale"] if r["rmse/scale"] == r["rmse/scale"] else -1))
    return rows


def write_layer_csv(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    fields = ["rank", "op_name", "tensor_name", "rmse/scale", "scale", "zero_point", "mean_error", "max_abs_error",
              "mean_squared_error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore")
    w.writeheader()
    for i, r in enumerate(rows, start=1):
        w.writerow({"rank": i, **r})
    atomic_write_text(path, buf.getvalue())


def op_groups(model: bytes) -> dict[str, list[str]]:
    """The model's ops grouped by type and layer scope with layer indices erased, in graph order.

    Each op is named by its first output tensor (the name ``denylisted_nodes`` takes). The group key
    is ``"<OP> <scope>"`` where the scope is the op's name path without its last component and with
    digits replaced by ``#``, so the six ``l0_ffn_out`` ... ``l5_ffn_out`` FULLY_CONNECTEDs of a BERT
    form one group: ``FULLY_CONNECTED bert/l#_ffn_out``.
    """
    groups: dict[str, list[str]] = {}
    for op in read_model(model, source="calibrated model").subgraph_ops(0):
        if not op.outputs:
            continue
        node = op.outputs[0].name
        first = node.split(";")[0]
        scope = first.rsplit("/", 1)[0] if "/" in first else first.split(":")[0]
        groups.setdefault(f"{op.op} {re.sub(r'[0-9]+', '#', scope)}", []).append(node)
    return groups


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """Squared error of ``out`` relative to the energy of ``ref`` (0 = identical)."""
    ref = np.asarray(ref, np.float64)
    return float(np.sum((np.asarray(out, np.float64) - ref) ** 2) / max(float(np.sum(ref**2)), 1e-30))


def group_impact(quantize: Callable[[Sequence[str]], bytes], groups: Mapping[str, Sequence[str]],
                 outputs: Callable[[bytes], np.ndarray], reference: np.ndarray, *,
                 raise_alone: bool = False) -> list[dict[str, Any]]:
    """The op groups ranked for the search, most deserving of the high precision first.

    ``quantize(nodes)`` is the model with ``nodes`` kept at the high precision (float, or 16-bit activations) and
    every other op in int8. By default each group alone is quantized to int8 (everything else high) and the groups
    that move the outputs most rank first. With ``raise_alone`` each group alone is kept high (everything else int8)
    and the groups whose rise leaves the least error rank first: for 16-bit islands, whose mostly-16-bit candidates
    run on the CPU's slow reference int16 kernels. One quantization and one run per group; ``impact`` is :func:`nmse`
    of the outputs to the float ``reference``. Interactions are ignored, which is what keeps this linear in the number
    of groups; the search that uses the ranking measures every candidate end to end. A group whose model cannot be
    built has ``impact`` None and its reason, and ranks first (last with ``raise_alone``).
    """
    every = [n for nodes in groups.values() for n in nodes]
    rows: list[dict[str, Any]] = []
    for i, (key, nodes) in enumerate(groups.items()):
        own = set(nodes)
        try:
            model = quantize(list(nodes) if raise_alone else [n for n in every if n not in own])
            rows.append({"group": key, "ops": len(nodes), "impact": nmse(outputs(model), reference), "order": i})
        except QuantizationError as exc:
            rows.append({"group": key, "ops": len(nodes), "impact": None, "order": i, "error": exc.message})
    def rank(r: Mapping[str, Any]) -> tuple[float, int]:
        if r["impact"] is None:  # unbuilt: first when ranking harm, last when ranking a rise
            return (math.inf if raise_alone else -math.inf, int(r["order"]))
        return (float(r["impact"]) if raise_alone else -float(r["impact"]), int(r["order"]))

    rows.sort(key=rank)
    return rows


def auto_search(quantize: Callable[[Sequence[str]], bytes], ranked: Sequence[tuple[str, Sequence[str]]],
                score: Callable[[bytes], float], *, target: float, max_steps: int = 8, refine_steps: int = 5,
                islands: str = "float") -> dict[str, Any]:
    """Keep the most harmful op groups at the high precision (``islands``: float, or int16 activations) until
    ``score(model) >= target``; ``quantize(nodes)`` is the model with ``nodes`` at that precision, the rest int8.

    ``ranked`` holds ``(group, nodes)`` pairs, most harmful first (see :func:`group_impact`). Tries
    full int8, then the top 1, 2, 4, 8 ... groups as islands (doubling keeps the number of trials
    logarithmic), then every group; once a prefix meets the target, bisects between it and the last
    prefix that failed for the fewest islands that still meet it. Returns that model, or the
    best one seen with ``met = False`` and the reason; the islands are listed as ``<islands>_groups`` and
    ``<islands>_nodes``.
    """
    groups_key, nodes_key = f"{islands}_groups", f"{islands}_nodes"
    trials: list[dict[str, Any]] = []
    seen: dict[int, tuple[float, bytes] | None] = {}

    def attempt(c: int) -> float | None:
        if c in seen:
            hit = seen[c]
            return None if hit is None else hit[0]
        nodes = [n for _, group in ranked[:c] for n in group]
        try:
            model = quantize(nodes)
        except QuantizationError as exc:
            trials.append({groups_key: c, nodes_key: len(nodes), "error": exc.message})
            seen[c] = None
            return None
        s = float(score(model))
        trials.append({groups_key: c, nodes_key: len(nodes), "score": s, "bytes": len(model)})
        seen[c] = (s, model)
        return s

    counts = [0]
    k = 1
    while k < len(ranked) and len(counts) < max_steps:
        counts.append(k)
        k *= 2
    if len(ranked) not in counts:
        counts.append(len(ranked))
    met, failed = None, -1
    for c in counts:
        s = attempt(c)
        if s is not None and s >= target:
            met = c
            break
        failed = c
    if met is not None:
        for _ in range(refine_steps):
            if met - failed <= 1:
                break
            mid = (met + failed) // 2
            s = attempt(mid)
            if s is not None and s >= target:
                met = mid
            else:
                failed = mid
        hit = seen[met]
        assert hit is not None
        return {"model": hit[1], groups_key: [g for g, _ in ranked[:met]],
                nodes_key: [n for _, group in ranked[:met] for n in group], "score": hit[0], "met": True,
                "trials": trials}
    scored = [(v[0], c) for c, v in seen.items() if v is not None]
    if not scored:
        errors = [str(t["error"]) for t in trials if "error" in t]
        raise QuantizationError("auto: no candidate could be quantized" + (f" ({errors[-1]})" if errors else ""))
    best_score, best_c = max(scored)
    return {"model": seen[best_c][1], groups_key: [g for g, _ in ranked[:best_c]],  # type: ignore[index]
            nodes_key: [n for _, group in ranked[:best_c] for n in group], "score": best_score, "met": False,
            "trials": trials,
            "reason": f"no candidate reached the target {target:g} (best {best_score:.4g} with {best_c} {islands} groups)"}


# Google's litert-quantizer (module ``litert_quantizer``) rewrites a float .tflite's weights where TFLiteConverter
# cannot: int4, and blockwise scales. Its 0.11 policy allows int4/int8 blockwise weights only with integer compute
# (``dynamic``: the kernel quantizes the float activations to int8 on the fly; the model's activations stay float),
# and weight-only (an explicit DEQUANTIZE, float compute) only channelwise.
LITERT_QUANTIZER_EXTRA = "pip install 'litegate[quantizer]'"


def litert_quantize(model: bytes, spec: Mapping[str, Any], recipe_name: str) -> tuple[bytes, dict[str, Any]]:
    """``model`` (a float .tflite) with its weights quantized by litert-quantizer as ``spec`` says.

    ``spec`` (checked by :func:`litegate.quantize.recipes.validate`): ``mode`` (``dynamic`` | ``weight-only``),
    ``bits`` (4 or 8), ``block_size`` (0: channelwise; 32, 64, 128 or 256: blockwise along the input dimension)
    and ``ops`` (TFLite op names, e.g. ``["FULLY_CONNECTED"]``). Every signature of the model is quantized alike.

    Raises:
        QuantizationError: litert-quantizer is not installed, or it refused or failed (one line).
    """
    qtyping, quantizer, recipe_manager = _litert_quantizer(f"recipe {recipe_name!r}")
    block = int(spec.get("block_size", 0))
    granularity = qtyping.QuantGranularity.CHANNELWISE if block == 0 else qtyping.QuantGranularity(f"BLOCKWISE_{block}")
    mode = str(spec.get("mode", "dynamic"))
    ops = list(spec.get("ops", ["FULLY_CONNECTED"]))
    manager = recipe_manager.RecipeManager()
    add = manager.add_dynamic_config if mode == "dynamic" else manager.add_weight_only_config
    uneven = _uneven_blocks(model, ops, block) if block else []
    try:
        for op in ops:
            add(regex=".*", operation_name=qtyping.TFLOperationName(op), num_bits=int(spec["bits"]),
                granularity=granularity)
        for op, scope in uneven:  # the latest matching config wins: these ops get one scale per output channel
            add(regex="^" + re.escape(scope) + "$", operation_name=qtyping.TFLOperationName(op),
                num_bits=int(spec["bits"]), granularity=qtyping.QuantGranularity.CHANNELWISE)
        q = quantizer.Quantizer(bytearray(model), manager.get_quantization_recipe())
        out = q.quantize(None, enable_progress_report=False)
    except Exception as exc:  # litert-quantizer raises ValueError, RuntimeError and its own types
        raise QuantizationError(f"recipe {recipe_name!r}: litert-quantizer failed: {_first_line(exc)}") from None
    data = bytes(out.quantized_model)
    info = {"tool": "litert-quantizer", "version": _litert_quantizer_version(), "mode": mode, "bits": int(spec["bits"]),
            "granularity": granularity.value.lower(), "ops": ops, "float_bytes": len(model), "bytes": len(data)}
    if uneven:
        info["channelwise_fallback"] = {"ops": len(uneven), "why": f"input dimension not a multiple of {block}"}
    return data, info


def _litert_quantizer(needed_by: str) -> Any:
    """litert-quantizer's modules ``(qtyping, quantizer, recipe_manager)``, or a QuantizationError saying that
    ``needed_by`` needs it and naming the extra that installs it."""
    try:
        from litert_quantizer import qtyping, quantizer, recipe_manager
    except ImportError:
        raise QuantizationError(f"{needed_by} needs litert-quantizer, which is not installed ({LITERT_QUANTIZER_EXTRA})"
                                ) from None
    return qtyping, quantizer, recipe_manager


def _mixed_recipe(high_nodes: Sequence[str]) -> Any:
    """litert-quantizer's recipe: int8 weights everywhere, int8 activations except on the ops whose first output is in
    ``high_nodes`` (int16 activations, symmetric, as LiteRT's 16x8 kernels take them)."""
    qtyping, _, recipe_manager = _litert_quantizer("16-bit islands")
    manager = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    manager.add_static_config(regex=".*", operation_name=every, activation_num_bits=8, weight_num_bits=8)
    if high_nodes:  # an op's scope is its output tensor names, each followed by ";" (the latest matching config wins)
        regex = "^(?:" + "|".join(re.escape(n) + ";" for n in high_nodes) + ")"
        manager.add_static_config(regex=regex, operation_name=every, activation_num_bits=16, weight_num_bits=8)
    return manager.get_quantization_recipe()


def mixed_calibrate(float_model: bytes, samples: Mapping[str, np.ndarray], signature: str = "serving_default") -> Any:
    """litert-quantizer's calibration of ``float_model`` (min/max of every tensor) on ``samples``' rows, once: every
    mix of 8- and 16-bit activations (:func:`mixed_quantize`) reuses it."""
    _, quantizer, _ = _litert_quantizer("16-bit islands")
    n = len(next(iter(samples.values())))
    rows = [{k: v[i : i + 1] for k, v in samples.items()} for i in range(n)]
    try:
        q = quantizer.Quantizer(bytearray(float_model), _mixed_recipe(()))
        return q.calibrate({signature: rows}, num_threads=2)
    except Exception as exc:  # litert-quantizer raises ValueError, RuntimeError and its own types
        raise QuantizationError(f"litert-quantizer calibration failed: {_first_line(exc)}") from None


def mixed_quantize(float_model: bytes, calibration: Any, high_nodes: Sequence[str]) -> bytes:
    """``float_model`` fully integer: int8 weights, int16 activations on the ops named by their first output in
    ``high_nodes``, int8 activations elsewhere; litert-quantizer inserts the requantizing QUANTIZE ops between them."""
    _, quantizer, _ = _litert_quantizer("16-bit islands")
    try:
        q = quantizer.Quantizer(bytearray(float_model), _mixed_recipe(high_nodes))
        return bytes(q.quantize(calibration, enable_progress_report=False).quantized_model)
    except Exception as exc:  # litert-quantizer raises ValueError, RuntimeError and its own types
        raise QuantizationError(f"litert-quantizer failed: {_first_line(exc)}") from None


def quantize_signatures(model: bytes, samples: Sequence[tuple[str, Mapping[str, np.ndarray]]], activation_bits: int,
                        recipe_name: str) -> tuple[bytes, dict[str, Any]]:
    """``model`` (a float .tflite with several signatures: a generator's ``prefill`` and ``decode``) fully integer by
    litert-quantizer: int8 weights, one scale per output channel; ``activation_bits`` (8 or 16) activations; every
    signature calibrated on its own calls in ``samples`` (``(signature, inputs)`` pairs, as
    :func:`litegate.quantize.calibration.generator_samples` records them); float inputs and outputs, so the KV
    cache ``prefill`` returns goes into ``decode`` as it is.

    TFLiteConverter's 16x8 quantizer cannot do this: it quantizes a constant the signatures share (the token table,
    ``ln_f``'s bias) once per signature, the second time from the first one's integers, and the file it writes aborts
    LiteRT (``QuantizeMultiplierSmallerThanOneExp`` in ADD's Prepare; docs/quantization.md).

    Raises:
        QuantizationError: litert-quantizer is not installed, or it refused or failed (one line).
    """
    qtyping, quantizer, recipe_manager = _litert_quantizer(f"recipe {recipe_name!r}")
    calibration: dict[str, list[dict[str, np.ndarray]]] = {}
    for signature, feed in samples:
        calibration.setdefault(signature, []).append(dict(feed))
    manager = recipe_manager.RecipeManager()
    try:
        manager.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                  activation_num_bits=int(activation_bits), weight_num_bits=8)
        for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float I/O
            manager.add_quantization_config(regex=".*", operation_name=io,
                                            algorithm_key=recipe_manager.AlgorithmName.NO_QUANTIZE)
        q = quantizer.Quantizer(bytearray(model), manager.get_quantization_recipe())
        ranges = q.calibrate(calibration, num_threads=2)
        tied = tie_ranges(ranges, model, list(calibration))
        out = q.quantize(ranges, enable_progress_report=False)
    except Exception as exc:  # litert-quantizer raises ValueError, RuntimeError and its own types
        raise QuantizationError(f"recipe {recipe_name!r}: litert-quantizer failed: {_first_line(exc)}") from None
    data = bytes(out.quantized_model)
    _check_signatures_run(data, calibration, recipe_name)
    info = {"tool": "litert-quantizer", "version": _litert_quantizer_version(), "mode": "static",
            "activation_bits": int(activation_bits), "weight_bits": 8, "granularity": "channelwise",
            "calibration_calls": {k: len(v) for k, v in calibration.items()}, "tied_ranges": tied,
            "float_bytes": len(model), "bytes": len(data)}
    return data, info


def tie_ranges(ranges: dict[str, Any], model: bytes, signatures: Sequence[str]) -> dict[str, int]:
    """Calibration ranges of a generator's signatures made to agree where they hold the same values; ``ranges``
    (litert-quantizer's calibration result: tensor name -> ``{"min", "max"}``) changed in place.

    ``decode`` computes one token per call, so its own ranges are the extremes of a few thousand tokens where
    ``prefill``'s cover every position of every window. Left alone, int16 clipped decode's embedding sum, its
    attention output, the new k and v rows and the logits (at 6.5 where held-out text reaches 10): on the char GPT-2
    its next-token agreement with fp32 was 71% on held-out text, prefill's 98% (docs/quantization.md). Three ties,
    each only ever widening a range:

    * ``layer_ops`` (:func:`share_layer_ranges`): the same op of the same block, by name;
    * ``signature_io``: the tensors an app passes between signatures under one name (prefill's ``k_cache_0`` output,
      decode's input and output; both ``logits``), with the tensor each output only reshapes;
    * ``masked_products`` (:func:`widen_masked_products`): ``k * hot`` at least as wide as k.

    Returns how many tensors each tie widened.
    """
    info = read_model(model)
    return {"layer_ops": share_layer_ranges(ranges, signatures), "signature_io": _share_io_ranges(ranges, info),
            "masked_products": widen_masked_products(ranges, info)}


def share_layer_ranges(ranges: dict[str, Any], signatures: Sequence[str]) -> int:
    """Give every op that several signatures compute in the same block one range, the union of theirs.

    A generator's signatures are traced under name scopes of their own names, each block in a scope of its own
    (:func:`litegate.converter.gpt2.traced_signatures`), so the same op is ``prefill/h0/MatMul_1`` in one and
    ``decode/h0/MatMul_1`` in the other (a fused tensor joins such names with ``;``); decode's cache write is nested
    apart (``decode/h0/cache/...``) and names nothing prefill has. Only names nested below the signature's scope are
    matched: an op directly in it is numbered in tracing order, which differs between signatures. Returns the number
    of tensors widened.
    """
    groups: dict[str, list[str]] = {}
    for name in ranges:
        for sig in signatures:
            parts = [p for p in name.split(";") if p]
            if parts and all(p.startswith(f"{sig}/") and "/" in p[len(sig) + 1:] for p in parts):
                groups.setdefault(";".join(p[len(sig) + 1:] for p in parts), []).append(name)
    return sum(_union(ranges, names) for names in groups.values() if len(names) > 1)


def _share_io_ranges(ranges: dict[str, Any], info: Any) -> int:
    """The ``signature_io`` tie of :func:`tie_ranges`."""
    groups: dict[str, list[str]] = {}
    for sig in info.signatures:
        tensors = info.subgraph_tensors[sig.subgraph]
        producer = _producers(info.subgraph_ops(sig.subgraph))
        for key, index in (*sig.inputs, *sig.outputs):
            t = tensors[index]
            groups.setdefault(key, []).extend({t.name, _source(t, producer).name})
    return sum(_union(ranges, [n for n in names if n in ranges]) for names in groups.values())


_SHAPE_OPS = frozenset({"RESHAPE", "STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "BROADCAST_TO"})


def widen_masked_products(ranges: dict[str, Any], info: Any) -> int:
    """Give every product of a tensor and a 0/1 mask at least the range of that tensor (``info``: the float model,
    :func:`litegate.tflite.flatbuffer.read_model`).

    A mask here is a comparison cast to float (``CAST`` of a ``BOOL``), or one minus it, seen through ops that only
    move elements; the tensor's range is its own and, where it only moves another's elements (a head of a SPLIT of
    the fused q/k/v projection, transposed), that tensor's. A generator's decode writes the step's k and v into the
    KV cache as ``cache * (1 - hot) + k * hot``: ``k * hot`` holds one token's k per call, while k's range is shared
    with prefill's; int16 clipped the char GPT-2's new v rows at 2.4 where they reach 3.1. The product can never
    leave its operand's range, so widening it to that range costs no saturation anywhere. Returns the number of
    products widened.
    """
    widened = 0
    for s in range(len(info.subgraph_tensors)):
        ops = info.subgraph_ops(s)
        producer = _producers(ops)

        def is_mask(t: Any, producer: dict[int, Any] = producer) -> bool:
            op = producer.get(t.index)
            while op is not None and (op.op in _SHAPE_OPS or (op.op == "SUB" and op.inputs[0] is not None
                                                              and op.inputs[0].is_const)):
                t = op.inputs[1] if op.op == "SUB" else op.inputs[0]
                op = producer.get(t.index) if t is not None else None
            return op is not None and op.op == "CAST" and op.inputs[0] is not None and op.inputs[0].type == "BOOL"

        for op in ops:
            if op.op != "MUL" or len(op.inputs) != 2 or None in op.inputs:
                continue
            a, b = op.inputs
            operand = a if is_mask(b) else b if is_mask(a) else None
            out = op.outputs[0].name
            if operand is None or out not in ranges:
                continue
            names = [n for n in (operand.name, _source(operand, producer).name) if n in ranges]
            if names:
                lo = min(np.min(ranges[n]["min"]) for n in (out, *names))
                hi = max(np.max(ranges[n]["max"]) for n in (out, *names))
                widened += _set_range(ranges, out, lo, hi)
    return widened


def _producers(ops: Sequence[Any]) -> dict[int, Any]:
    """Tensor index -> the op of ``ops`` that writes it."""
    return {t.index: op for op in ops for t in op.outputs}


def _source(t: Any, producer: Mapping[int, Any]) -> Any:
    """``t`` followed back through ops that only move elements (SPLIT too): the tensor whose range the quantized ops
    between keep (litert-quantizer gives their outputs their input's scale)."""
    op = producer.get(t.index)
    while op is not None and op.op in _SHAPE_OPS | {"SPLIT"}:
        nxt = op.inputs[1] if op.op == "SPLIT" else op.inputs[0]
        if nxt is None:
            break
        t, op = nxt, producer.get(nxt.index)
    return t


def _union(ranges: dict[str, Any], names: Sequence[str]) -> int:
    """Set every one of ``names`` to the union of their ranges; return how many changed."""
    if len(names) < 2:
        return 0
    lo = min(np.min(ranges[n]["min"]) for n in names)
    hi = max(np.max(ranges[n]["max"]) for n in names)
    return sum(_set_range(ranges, n, lo, hi) for n in names)


def _set_range(ranges: dict[str, Any], name: str, lo: float, hi: float) -> int:
    """Set ``name``'s range to ``[lo, hi]`` (arrays keep their shape); 1 if it changed, else 0."""
    before = (np.min(ranges[name]["min"]), np.max(ranges[name]["max"]))
    ranges[name]["min"] = np.full_like(np.asarray(ranges[name]["min"]), lo)
    ranges[name]["max"] = np.full_like(np.asarray(ranges[name]["max"]), hi)
    return int(before != (lo, hi))


def _check_signatures_run(model: bytes, calibration: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                          recipe_name: str) -> None:
    """Run every signature of ``model`` once, on its first calibration call, in LiteRT.

    litert-quantizer 0.11 can write a model one signature of which no kernel prepares: the char LSTM's ``step`` got a
    FULLY_CONNECTED with a float input and an int16 output ("output->type != kTfLiteFloat32"), while ``prefill``
    ran. Such a model fails here, as this variant's reason, instead of in the benchmarks or on a phone.
    """
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: build child only

    for signature, calls in calibration.items():
        try:
            Interpreter(model_content=model).get_signature_runner(signature)(**calls[0])
        except (RuntimeError, ValueError) as exc:
            raise QuantizationError(f"recipe {recipe_name!r}: litert-quantizer wrote a model whose {signature!r} "
                                    f"signature LiteRT cannot run: {_first_line(exc)}") from None


def _litert_quantizer_version() -> str:
    try:
        return importlib.metadata.version("litert-quantizer")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree
        return "unknown"


def _first_line(exc: Exception) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:300]


def _uneven_blocks(model: bytes, ops: Sequence[str], block: int) -> list[tuple[str, str]]:
    """(op, litert-quantizer scope) of every ``ops`` op whose weight's input dimension (the last) is no multiple of
    ``block``: litert-quantizer cannot quantize those blockwise. The scope is the op's output tensor names, each
    followed by ``;`` (``tfl_flatbuffer_utils.get_op_scope``)."""
    out = []
    for op in read_model(model).ops:
        weight = op.inputs[1] if op.op in ops and len(op.inputs) > 1 else None
        if weight is not None and weight.shape and weight.shape[-1] % block:
            names = [t.name for t in op.outputs if t is not None and t.name]
            if names:
                out.append((op.op, "".join(f"{n};" for n in names)))
    return out

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
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from litegate.errors import QuantizationError

# rmse/scale: RMSE of the quantized layer output against its float twin, in quantization steps.
# A well-quantized tensor sits near 1/sqrt(12) ~ 0.29 (uniform rounding noise).


def calibrate(serve: Any, owner: Any, samples: Mapping[str, np.ndarray]) -> bytes:
    """A float model carrying calibration statistics (``_experimental_calibrate_only``)."""
    import tensorflow as tf
    from litegate.converter.tflite import _representative

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], owner)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(samples)
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001 - the documented QuantizationDebugger route
    try:
        return bytes(conv.convert())
    except Exception as exc:  # noqa: BLE001
        raise QuantizationError(f"calibration failed: {str(exc).splitlines()[0]}") from None


def quantize_calibrated(calibrated: bytes, *, denylisted_ops: Sequence[str] = (), denylisted_nodes: Sequence[str] = (),
                        output_type: str = "float32", debug: bool = False) -> bytes:
    """Full-integer quantization of a calibrated model, keeping the denylisted ops/nodes in float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    out = getattr(tf, output_type)
    try:
        return bytes(convert.mlir_quantize(
            calibrated, fully_quantize=output_type != "float32", input_data_type=tf.float32, output_data_type=out,
            enable_numeric_verify=debug, denylisted_ops=list(denylisted_ops) or None,
            denylisted_nodes=list(denylisted_nodes) or None))
    except Exception as exc:  # noqa: BLE001
        raise QuantizationError(f"quantization failed: {str(exc).splitlines()[0]}") from None


def _input_order(model: bytes, samples: Mapping[str, np.ndarray]) -> list[str]:
    import tensorflow as tf

    from litegate.tasks import role_of

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
    import tensorflow as tf

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
    from litegate.artifacts import atomic_write_text

    fields = ["rank", "op_name", "tensor_name", "rmse/scale", "scale", "zero_point", "mean_error", "max_abs_error",
              "mean_squared_error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore")
    w.writeheader()
    for i, r in enumerate(rows, start=1):
        w.writerow({"rank": i, **r})
    atomic_write_text(path, buf.getvalue())


def auto_search(calibrated: bytes, ranked_nodes: Sequence[str], score: Callable[[bytes], float], *,
                target: float, max_steps: int = 8) -> dict[str, Any]:
    """Keep the most sensitive layers in float until ``score(model) >= target``.

    Tries full int8 first, then denylists the top 1, 2, 4, 8 ... ranked nodes (doubling keeps the
    number of trials logarithmic), then every ranked node. Returns the first model that reaches
    the target, or the best one seen with ``met = False`` and the reason.
    """
    trials: list[dict[str, Any]] = []
    best: tuple[float, bytes, list[str]] | None = None
    counts = [0]
    k = 1
    while k < len(ranked_nodes) and len(counts) < max_steps:
        counts.append(k)
        k *= 2
    if len(ranked_nodes) not in counts:
        counts.append(len(ranked_nodes))
    for c in counts:
        nodes = list(ranked_nodes[:c])
        try:
            model = quantize_calibrated(calibrated, denylisted_nodes=nodes)
        except QuantizationError as exc:
            trials.append({"float_nodes": c, "error": exc.message})
            continue
        s = float(score(model))
        trials.append({"float_nodes": c, "score": s, "bytes": len(model)})
        if best is None or s > best[0]:
            best = (s, model, nodes)
        if s >= target:
            return {"model": model, "float_nodes": nodes, "score": s, "met": True, "trials": trials}
    if best is None:
        raise QuantizationError("auto: no candidate could be quantized")
    return {"model": best[1], "float_nodes": best[2], "score": best[0], "met": False, "trials": trials,
            "reason": f"no candidate reached the target {target:g} (best {best[0]:.4g} with {len(best[2])} float nodes)"}

"""Calibration data for calibrated recipes: checked samples, and generator rollouts per signature.

Runs in the build child (TensorFlow is imported inside the functions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from litegate.converter.convert import input_names
from litegate.errors import QuantizationError
from litegate.tasks import feed_for


def model_samples(serve: Any, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calibration samples (keyed by role) re-keyed to the serving function's input names."""
    return feed_for(input_names(serve), dict(samples)) if samples else {}


def check_calibration(serve: Any, samples: Mapping[str, np.ndarray]) -> None:
    """Refuse calibration data that is empty or drives the float model to NaN/Inf."""
    n = len(next(iter(samples.values()))) if samples else 0
    if n == 0:
        raise QuantizationError("calibration set is empty: a calibrated recipe needs at least one sample")
    for i in range(n):
        outs = serve(**{k: v[i : i + 1] for k, v in samples.items()})
        for name, value in outs.items():
            if not np.all(np.isfinite(value.numpy())):
                raise QuantizationError(f"calibration sample {i} gives non-finite values in output {name!r}")


def generator_samples(signatures: Mapping[str, Any], windows: np.ndarray, prefill_len: int,
                      ) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Calibration samples for every signature of a text generator, from the float model itself.

    Per token window ``[prefill_len + k]``: ``prefill`` on the first ``prefill_len`` tokens (zero
    initial state where it takes one), then ``k`` calls of ``decode`` (GPT-2: continuing from the
    prefill's KV cache at ``pos = prefill_len``) or ``step`` (recurrent: from zero state, walking the
    window's first ``k`` tokens). Each call's inputs are recorded as ``(signature, inputs)``, the
    form the converter's representative dataset takes for multi-signature models.

    Raises:
        QuantizationError: no window, or signatures this rollout does not know.
    """
    import tensorflow as tf  # TensorFlow: build child only

    if len(windows) == 0:
        raise QuantizationError("calibration set is empty: a calibrated recipe needs at least one token window")
    stepper = "decode" if "decode" in signatures else "step"
    if "prefill" not in signatures or stepper not in signatures:
        raise QuantizationError(f"cannot calibrate signatures {', '.join(signatures)} (expected prefill and decode/step)")

    def specs(name: str) -> dict[str, Any]:
        return dict(signatures[name].structured_input_signature[1])

    pre_specs, step_specs = specs("prefill"), specs(stepper)
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    for w in np.asarray(windows, np.int32):
        if len(w) <= prefill_len:
            raise QuantizationError(f"calibration windows of {len(w)} tokens leave none to decode after {prefill_len}")
        zeros = {k: np.zeros(v.shape, v.dtype.as_numpy_dtype) for k, v in pre_specs.items() if k != "tokens"}
        feed = {"tokens": w[None, :prefill_len], **zeros}
        out.append(("prefill", feed))
        res = signatures["prefill"](**{k: tf.constant(v) for k, v in feed.items()})
        state_keys = [k for k in step_specs if k not in ("token", "pos")]
        if "pos" in step_specs:  # KV cache: continue after the prompt
            state = {k: res[k].numpy() for k in state_keys}
            cache_len = min((int(step_specs[k].shape[2]) for k in state_keys), default=len(w))
            positions = range(prefill_len, min(len(w), cache_len))  # a full cache leaves no position to decode
        else:  # recurrent state: walk the window from the start
            state = {k: np.zeros(step_specs[k].shape, step_specs[k].dtype.as_numpy_dtype) for k in state_keys}
            positions = range(0, len(w) - prefill_len)
        for j in positions:
            feed = {"token": w[None, j : j + 1], **({"pos": np.array([j], np.int32)} if "pos" in step_specs else {}),
                    **state}
            out.append((stepper, feed))
            res = signatures[stepper](**{k: tf.constant(v) for k, v in feed.items()})
            state = {k: res[k].numpy() for k in state_keys}
        for name, value in ((k, v) for _, f in out[-len(positions) - 1 :] for k, v in f.items()):
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise QuantizationError(f"calibration drives the float generator to non-finite values in {name!r}")
    return out

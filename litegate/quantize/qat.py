"""Quantization-aware distillation: a full-integer recipe's ``qat`` param.

Before a full-integer conversion, the float tf_keras model is fine-tuned, label-free, to reproduce its own fp32
outputs (a release's recovery rows, else the calibration text) while the int8 graph's rounding is simulated in the
forward pass:

- every ``Dense`` rounds its input and output to 8 bits per tensor, its kernel to 8 bits per output channel
  (symmetric, as TFLite's FULLY_CONNECTED holds it), and a non-linear activation's input too (GELU, then
  ``ffn_out``, are separate int8 ops in TFLite);
- litegate's BERT ``LayerNorm`` rounds the tensors its int8 spelling holds in 8 bits: the residual sum it reads,
  the centred rows, their squares, the variance, its reciprocal square root and the output
  (:meth:`litegate.converter.bert.LayerNorm.quantization_point`).

Each point's range is the float model's min/max on the first training rows, observed once before training and then
fixed (:class:`_Ranges`), as calibration will take it: the student learns the rounding and the clipping the converter
will apply (per-batch ranges instead: SST-2 78.21% against 80.16%). Gradients pass the rounding straight through
(TensorFlow's ``fake_quant_with_min_max_vars``). Only the fine-tuned float weights leave this module: the recipe then
calibrates and converts them exactly as it converts the fp32 model, so what ships is still an ordinary
post-training-quantized model, of weights that tolerate its rounding.
The attention scores and the softmax are not simulated (8-bit attention matmuls cost MiniLM -0.0007 cosine).

TensorFlow is imported inside functions only; this runs in the build child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from litegate.converter.sources import Loaded
from litegate.errors import QuantizationError
from litegate.quantize import prune, recipes

QAT_DEFAULTS: dict[str, Any] = {"steps": 300, "batch_size": 8, "learning_rate": 3e-5, "seed": 0}
STATS_SAMPLES = 256  # the rows the report's before/after fidelity is measured on


@dataclasses.dataclass(frozen=True)
class QatSettings:
    """A recipe's ``qat`` table with the defaults filled in."""

    steps: int
    batch_size: int
    learning_rate: float
    seed: int

    @classmethod
    def from_params(cls, spec: Mapping[str, Any]) -> QatSettings:
        p = {**QAT_DEFAULTS, **recipes.check_qat_params(spec, "qat")}
        return cls(steps=int(p["steps"]), batch_size=int(p["batch_size"]), learning_rate=float(p["learning_rate"]),
                   seed=int(p["seed"]))


class _Ranges:
    """The range of every quantization point (layer name, its n-th point in one call). While ``observing`` (eager),
    the float values pass unchanged and their min/max is recorded, as the converter calibrates the float model; then
    the recorded ranges are fixed while the student trains, so it learns the rounding and the clipping that
    calibration will give it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[float, float]] = {}
        self.observing = False

    def point(self, layer: Any, x: Any) -> Any:
        import tensorflow as tf  # TensorFlow: build child only

        key = (layer.name, layer._q_next)
        layer._q_next += 1
        if self.observing:
            lo, hi = self.seen.get(key, (0.0, 0.0))
            self.seen[key] = (min(lo, float(tf.reduce_min(x))), max(hi, float(tf.reduce_max(x))))
            return x
        if key not in self.seen:
            return _fake_quant(x)
        lo, hi = self.seen[key]
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, max(hi, lo + 1e-6), num_bits=8)


_RANGES: list[_Ranges] = []  # the ranges of the apply_qat call in progress


def _point(layer: Any, x: Any) -> Any:
    """A quantization point of ``layer``: over the observed range during :func:`apply_qat`, else its own min/max."""
    return _RANGES[-1].point(layer, x) if _RANGES else _fake_quant(x)


def _fake_quant(x: Any) -> Any:
    """``x`` rounded to 8 bits over its own (zero-including) min/max, the gradient passed straight through."""
    import tensorflow as tf  # TensorFlow: build child only

    lo = tf.stop_gradient(tf.minimum(tf.reduce_min(x), 0.0))
    hi = tf.stop_gradient(tf.maximum(tf.reduce_max(x), lo + 1e-6))
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)


def _fake_quant_kernel(kernel: Any) -> Any:
    """A ``[in, out]`` kernel rounded to symmetric int8 per output channel (narrow range, as TFLite holds it)."""
    import tensorflow as tf  # TensorFlow: build child only

    m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=0), 1e-8))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -m, m, num_bits=8, narrow_range=True)


@functools.cache
def _layer_classes() -> tuple[Any, Any]:
    """The simulating subclasses of tf_keras' ``Dense`` and litegate's ``LayerNorm`` (made once TensorFlow is in)."""
    import tensorflow as tf  # TensorFlow: build child only
    import tf_keras  # TensorFlow: build child only

    from litegate.converter.bert import LayerNorm  # imports TensorFlow at module level

    class SimulatedDense(tf_keras.layers.Dense):  # type: ignore[misc]
        keep: Any = None  # a pruned kernel's non-zeros (1.0) mask: its zeros stay exactly zero while it trains

        def call(self, inputs: Any) -> Any:
            self._q_next = 0
            kernel = self.kernel if self.keep is None else self.kernel * self.keep
            y = tf.tensordot(_point(self, inputs), _fake_quant_kernel(kernel), [[inputs.shape.rank - 1], [0]])
            if self.use_bias:
                y = y + self.bias
            if self.activation not in (None, tf_keras.activations.linear):
                y = self.activation(_point(self, y))
            return _point(self, y)

    class SimulatedLayerNorm(LayerNorm):  # type: ignore[misc,valid-type]
        def call(self, x: Any) -> Any:
            self._q_next = 0
            return super().call(x)

        def quantization_point(self, x: Any) -> Any:
            return _point(self, x)

    return SimulatedDense, SimulatedLayerNorm


def _simulating_copy(layer: Any) -> Any:
    """``layer`` as a fresh layer; a ``Dense`` or a litegate ``LayerNorm`` as its simulating subclass."""
    import tf_keras  # TensorFlow: build child only

    from litegate.converter.bert import LayerNorm  # imports TensorFlow at module level

    dense, norm = _layer_classes()
    if type(layer) is tf_keras.layers.Dense:
        copy = dense.from_config({**layer.get_config(), "activation": "linear"})
        copy.activation = layer.activation  # BERT's GELU is a Python lambda, which a config cannot carry
        return copy
    if type(layer) is LayerNorm:
        return norm.from_config(layer.get_config())
    return prune.fresh_copy(layer)


@contextlib.contextmanager
def _observed(ranges: _Ranges) -> Iterator[None]:
    _RANGES.append(ranges)
    try:
        yield
    finally:
        _RANGES.pop()


def apply_qat(loaded: Loaded, spec: Mapping[str, Any], samples: Mapping[str, np.ndarray],
              spelled: Callable[[], Any]) -> tuple[Loaded, dict[str, Any]]:
    """Fine-tune ``loaded``'s tf_keras model under simulated int8 rounding to reproduce its fp32 outputs.

    Args:
        loaded: a functional tf_keras model (litegate's BERT; any functional model with ``Dense`` layers).
        spec: the recipe's ``qat`` table ({steps, batch_size, learning_rate, seed}).
        samples: the training inputs (by input role or name, ``[N, ...]``), which the fp32 teacher also reads.
        spelled: a context manager factory: the recipe's int8 spelling of litegate's BERT, active while the model
            is traced for training (so the simulated graph is the one the recipe converts).

    Returns:
        A new :class:`Loaded` with the fine-tuned float weights, and stats: ``steps``, ``loss_first``,
        ``loss_last``, ``loss_curve``, ``simulated_before`` / ``simulated_after`` (per output: cosine and max abs
        difference of the simulated-int8 model to fp32 on the first :data:`STATS_SAMPLES` training rows, before and
        after), ``float_after`` (the fine-tuned float model against fp32), ``samples``, ``stats_rows``,
        ``trained_variables``, the settings.

    Raises:
        QuantizationError: not a functional tf_keras model, or no sample.
    """
    import tensorflow as tf  # TensorFlow: build child only
    import tf_keras  # TensorFlow: build child only

    s = QatSettings.from_params(spec)
    src = loaded.keras_model
    if src is None or loaded.signatures or not getattr(src, "_is_graph_network", False):
        raise QuantizationError("quantization-aware distillation (qat) needs a functional tf_keras encoder; this "
                                "source is a SavedModel, a Keras 3 model, a subclassed model or a text generator")
    if not samples or not len(next(iter(samples.values()))):
        raise QuantizationError("quantization-aware distillation (qat) needs training rows: none were given")
    tf_keras.utils.set_random_seed(s.seed)
    in_names = [layer.name for layer in src._input_layers]
    out_names = list(src.output_names)
    x = prune.model_feed(in_names, samples)
    teacher = prune.float_outputs(src, x)
    ranges = _Ranges()
    with spelled(), _observed(ranges):
        model = prune.free_batch_copy(src, _simulating_copy)
        dense, _ = _layer_classes()
        for layer in model.layers:  # a pruned model stays pruned: Adam never moves a weight whose gradient is 0
            if isinstance(layer, dense) and not np.all(kernel := layer.kernel.numpy()):
                layer.keep = tf.constant((kernel != 0).astype(np.float32))

        def call(xb: Any, training: bool) -> dict[str, Any]:
            return prune.call_model(model, in_names, out_names, xb, training=training)

        probe = {k: v[:STATS_SAMPLES] for k, v in x.items()}  # fidelity before and after, on the first rows
        probe_teacher = {k: v[:STATS_SAMPLES] for k, v in teacher.items()}

        def simulated() -> dict[str, np.ndarray]:
            return prune.batched(lambda xb: prune.as_numpy(call(xb, False)), probe, prune.TEACHER_BATCH)

        ranges.observing = True  # the float model's ranges on the first rows, as calibration takes them
        simulated()
        ranges.observing = False
        before = prune.fidelity(simulated(), probe_teacher)
        # Everything but the embedding tables (training them too measured +0.0012 cosine on MiniLM: not worth 11.7M
        # more parameters' optimizer state).
        variables = [v for layer in model.layers if layer.trainable_weights and "embedding" not in
                     type(layer).__name__.lower() for v in layer.trainable_weights]
        losses = prune.fit(variables, x, teacher, call, prune.loss_fn("distill", None), steps=s.steps,
                           batch_size=s.batch_size, learning_rate=s.learning_rate, seed=s.seed)
        after = prune.fidelity(simulated(), probe_teacher)
    tuned = prune.free_batch_copy(src)  # the source's own layer classes ...
    for layer in model.layers:  # ... with the fine-tuned weights
        if layer.weights:
            tuned.get_layer(layer.name).set_weights(layer.get_weights())
    float_after = prune.fidelity(prune.float_outputs(tuned, probe), probe_teacher)
    stats = {"steps": s.steps, "batch_size": s.batch_size, "learning_rate": s.learning_rate, "seed": s.seed,
             "samples": len(next(iter(x.values()))), "stats_rows": len(next(iter(probe.values()))),
             "trained_variables": len(variables), "quantization_points": len(ranges.seen),
             "zeros_kept": sum(1 for layer in model.layers if getattr(layer, "keep", None) is not None),
             "loss_first": losses[0], "loss_last": losses[-1], "loss_curve": prune.loss_curve(losses),
             "simulated_before": before, "simulated_after": after, "float_after": float_after}
    note = (f"quantization-aware distillation: {s.steps} steps on {stats['samples']} rows, "
            f"loss {losses[0]:.3g} -> {losses[-1]:.3g}")
    return prune.trained_loaded(loaded, tuned, note), stats

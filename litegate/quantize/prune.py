"""Magnitude pruning with tensorflow-model-optimization, recovery fine-tuning, and sparsity reports.

What is pruned (decided here, measured in ``tests/test_prune.py``):

* ``tf_keras`` ``Dense`` kernels, and the ``kernel`` / ``recurrent_kernel`` of ``LSTM``, ``GRU`` and
  ``SimpleRNN`` layers (tfmot's registry supports them; 2:4 structured sparsity is applied to Dense
  only). Biases are never pruned (tfmot's registry prunes kernels only).
* Embedding tables (``Embedding`` and the word table of litegate's BERT ``Embeddings``) only with
  ``prune_embeddings``: a table lookup (GATHER) gains nothing at run time, only gzip size, which
  in a small encoder is mostly the table (the embedded default: 0.5 M of its 0.94 M int8 weights).
  Position and token-type tables are never pruned.
* Not pruned: layer norms and every other custom or TF-op layer (tfmot cannot wrap them). Their
  weights are copied through ``clone_model`` and checked to be bit-identical.

Recovery fine-tunes only the pruned layers' weights (kernels and biases; everything else stays
frozen, so unpruned weights leave the process exactly as they came in). Training runs
``end_step`` steps while the mask grows to ``target_sparsity`` (tfmot's schedule; its step counter
starts at 1), then ``recovery.steps`` more steps at the final mask. The loss is sparse categorical
cross-entropy on the model's logits when task labels are given (``mode`` ``labels``, or ``auto``
with labels), else label-free distillation to the float model's own outputs on the same inputs:
KL divergence for outputs named ``*logits*``, mean squared error for any other output (embeddings,
pooled or sequence outputs). Data order is a seeded permutation and every RNG is seeded, so a
fixed ``seed`` gives the same weights and the same .tflite bytes.

Model kinds: functional ``tf_keras`` models (litegate's BERT, Keras files, the char LSTM/GRU
generators) are cloned with ``tf_keras.models.clone_model`` and a ``clone_function`` that wraps
only prunable layers, then stripped with ``tfmot.sparsity.keras.strip_pruning``. litegate's
subclassed GPT-2, which ``clone_model`` cannot copy, is rebuilt from its config, its weights are
copied, and its Dense sublayers are wrapped and unwrapped in place.

On TFLite CPU kernels a pruned model is as large and as fast as the dense one: zeros are stored
and multiplied. The gain is the gzip (download) size; :func:`sparse_encoding_variants` converts
with ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` so a caller can measure what sparse encoding does.
Measured (TF 2.21 / LiteRT on x86, a 4-layer hidden-256 BERT at seq 128, 1 thread): unstructured
50% sparse-encodes float kernels plus DENSIFY ops (raw file -32%, same XNNPACK latency, +14 MB
RSS); TFLite-layout 1x4 blocks (``block_size`` [4, 1]) stay sparse at run time (raw -44%) but
XNNPACK leaves sparse FULLY_CONNECTED to the builtin kernel (19.8 ms vs 4.2 ms); with dynamic-range
int8 the sparse file is larger than the dense one and XNNPACK fails to prepare it.

TensorFlow is imported inside functions only, so the module is cheap to import; pruning runs in the
build child (:func:`litegate.quantize.build.build_job`), for ``litegate run`` and ``litegate prune`` alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from litegate.converter.sources import Loaded, serving_function
from litegate.errors import ConversionError, QuantizationError
from litegate.quantize import recipes
from litegate.tasks import feed_for
from litegate.tflite.flatbuffer import TYPE_NAMES, read_model
from litegate.types import Recipe, RecipeKind

__all__ = [
    "PruneSettings",
    "apply_pruning",
    "sparse_encoding_variants",
    "sparsity_report",
]

DEFAULTS: dict[str, Any] = {
    "target_sparsity": 0.5,
    "schedule": "polynomial",
    "begin_step": 0,
    "end_step": 100,
    "frequency": 10,
    "block_size": [1, 1],
    "structured_2_4": False,
    "prune_embeddings": False,
    "recovery": {"steps": 100, "batch_size": 8, "learning_rate": 1e-4, "mode": "auto"},
    "seed": 0,
}
PRUNABLE_TYPES = ("Dense", "LSTM", "GRU", "SimpleRNN")
TEACHER_BATCH = 32  # batch of the float (and pruned) model's outputs computed outside training
_CURVE_POINTS = 20


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """A pruning recipe's params with defaults filled in (see :func:`recipes.check_prune_params`)."""

    target_sparsity: float
    schedule: str
    begin_step: int
    end_step: int
    frequency: int
    block_size: tuple[int, int]
    structured_2_4: bool
    prune_embeddings: bool
    recovery_steps: int
    batch_size: int
    learning_rate: float
    mode: str
    seed: int

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> PruneSettings:
        """Validate ``recipe`` as a pruning recipe and fill the defaults.

        Raises:
            QuantizationError: the recipe is not of kind ``prune``.
            ConfigError: invalid params.
        """
        if recipe.kind is not RecipeKind.PRUNE:
            raise QuantizationError(f"recipe {recipe.name!r} is a {recipe.kind.value!r} recipe, not a pruning recipe")
        p = recipes.check_prune_params(recipe.params, f"recipe {recipe.name}")
        rec = {**DEFAULTS["recovery"], **p.get("recovery", {})}
        block = p.get("block_size", DEFAULTS["block_size"])
        return cls(
            target_sparsity=float(p.get("target_sparsity", DEFAULTS["target_sparsity"])),
            schedule=str(p.get("schedule", DEFAULTS["schedule"])),
            begin_step=int(p.get("begin_step", DEFAULTS["begin_step"])),
            end_step=int(p.get("end_step", p.get("steps", DEFAULTS["end_step"]))),
            frequency=int(p.get("frequency", DEFAULTS["frequency"])),
            block_size=(int(block[0]), int(block[1])),
            structured_2_4=bool(p.get("structured_2_4", False)),
            prune_embeddings=bool(p.get("prune_embeddings", False)),
            recovery_steps=int(rec["steps"]),
            batch_size=int(rec["batch_size"]),
            learning_rate=float(rec["learning_rate"]),
            mode=str(rec["mode"]),
            seed=int(p.get("seed", DEFAULTS["seed"])),
        )

    @property
    def total_steps(self) -> int:
        """Training steps: the schedule up to ``end_step`` (tfmot counts from 1), then recovery."""
        return self.end_step + self.recovery_steps


# --------------------------------------------------------------------------------------------
# apply_pruning: the TensorFlow part (runs in the conversion child)


def _wrapper_kwargs(s: PruneSettings) -> dict[str, Any]:
    import tensorflow_model_optimization as tfmot  # TensorFlow: build child only

    sched = tfmot.sparsity.keras
    if s.schedule == "constant":
        schedule = sched.ConstantSparsity(s.target_sparsity, begin_step=s.begin_step, end_step=s.end_step,
                                          frequency=s.frequency)
    else:
        schedule = sched.PolynomialDecay(initial_sparsity=0.0, final_sparsity=s.target_sparsity,
                                         begin_step=s.begin_step, end_step=s.end_step, frequency=s.frequency)
    return {"pruning_schedule": schedule, "block_size": s.block_size}


def _is_embedding(layer: Any) -> bool:
    kind, module = type(layer).__name__, type(layer).__module__
    return ((kind == "Embedding" and module.startswith("tf_keras"))
            or (kind.endswith("Embeddings") and module.startswith("litegate.")  # BERT's, MobileBERT's trigram ones
                and hasattr(layer, "get_prunable_weights")))


def _is_prunable(layer: Any, s: PruneSettings) -> bool:
    kind = type(layer).__name__
    if s.prune_embeddings and not s.structured_2_4 and _is_embedding(layer):
        return True
    if not type(layer).__module__.startswith("tf_keras"):
        return False
    return kind == "Dense" if s.structured_2_4 else kind in PRUNABLE_TYPES


def _block_misfit(layer: Any, s: PruneSettings) -> str | None:
    """Why a block size cannot apply to ``layer``'s kernels (tfmot's block pooling fails then), or None."""
    if s.block_size == (1, 1):
        return None
    for w in _prunable_weights(layer):
        rows, cols = (int(d) for d in w.shape)
        if rows % s.block_size[0] or cols % s.block_size[1]:
            return (f"kernel {rows}x{cols} is not a whole number of {s.block_size[0]}x{s.block_size[1]} blocks; "
                    "left dense")
    return None


def _wrap(layer: Any, s: PruneSettings) -> Any:
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,  # TensorFlow: build child only
    )

    kw = _wrapper_kwargs(s)
    if hasattr(layer, "get_prunable_weights"):  # litegate's Embeddings: tfmot takes any PrunableLayer
        from tensorflow_model_optimization.sparsity.keras import PrunableLayer  # TensorFlow: build child only

        PrunableLayer.register(type(layer))
    if s.structured_2_4:
        kw["sparsity_m_by_n"] = (2, 4)
    return PruneLowMagnitude(layer, **kw)


def _prunable_weights(layer: Any) -> list[Any]:
    """The weights tfmot masks in a (stripped) prunable layer: kernels, not biases; embedding tables."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    if type(layer).__name__ == "Embedding":
        return [layer.embeddings]
    if hasattr(layer, "cell"):
        return [layer.cell.kernel, layer.cell.recurrent_kernel]
    return [layer.kernel]


def _sparsity_stats(model: Any, pruned: Mapping[str, Any]) -> dict[str, Any]:
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for name, layer in pruned.items():
        arrays = [w.numpy() for w in _prunable_weights(layer)]
        z = sum(int(np.count_nonzero(a == 0)) for a in arrays)
        n = sum(a.size for a in arrays)
        per_layer[name] = z / n if n else 0.0
        zeros, total = zeros + z, total + n
    all_arrays = [w.numpy() for w in model.weights]
    all_zeros = sum(int(np.count_nonzero(a == 0)) for a in all_arrays)
    all_total = sum(a.size for a in all_arrays)
    return {"layers": per_layer, "pruned_sparsity": zeros / total if total else 0.0, "pruned_params": total,
            "all_weights_sparsity": all_zeros / all_total if all_total else 0.0, "total_params": all_total}


def _as_dict(out: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(out, Mapping):
        return dict(out)
    if isinstance(out, list | tuple):
        return dict(zip(names, out, strict=True))
    return {names[0]: out}


def call_model(model: Any, in_names: list[str], out_names: list[str], x: Mapping[str, Any],
          training: bool = False) -> dict[str, Any]:
    """Call a functional model with inputs by name, whatever its input structure; outputs by name."""
    if isinstance(model.input, Mapping):
        return _as_dict(model({n: x[n] for n in in_names}, training=training), out_names)
    args = [x[n] for n in in_names]
    return _as_dict(model(args[0] if len(args) == 1 else args, training=training), out_names)


def as_numpy(out: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in out.items()}


def batched(fn: Callable[[dict[str, np.ndarray]], dict[str, Any]], x: Mapping[str, np.ndarray],
             batch: int) -> dict[str, np.ndarray]:
    n = len(next(iter(x.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, n, batch):
        out = fn({k: v[i : i + batch] for k, v in x.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def fidelity(student: Mapping[str, np.ndarray], teacher: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for k, t in teacher.items():
        s = student[k].reshape(len(t), -1).astype(np.float64)
        r = t.reshape(len(t), -1).astype(np.float64)
        cos = np.sum(s * r, axis=1) / np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
        out[k] = {"max_abs": float(np.max(np.abs(s - r))), "cosine_mean": float(np.mean(cos)),
                  "cosine_min": float(np.min(cos))}
        if "logits" in k:  # KL distillation matches probabilities; logits may drift by a constant
            ps, pt = _softmax(student[k]), _softmax(t)
            out[k]["top1_agreement"] = float(np.mean(np.argmax(student[k], -1) == np.argmax(t, -1)))
            out[k]["prob_mean_abs"] = float(np.mean(np.abs(ps - pt)))
            out[k]["prob_max_abs"] = float(np.max(np.abs(ps - pt)))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def loss_fn(mode: str, label_key: str | None) -> Callable[[dict[str, Any], Any], Any]:
    import tensorflow as tf  # TensorFlow: build child only

    def loss(student: dict[str, Any], target: Any) -> Any:
        if mode == "labels":
            assert label_key is not None
            ce = tf.keras.losses.sparse_categorical_crossentropy(target, student[label_key], from_logits=True)
            return tf.reduce_mean(ce)
        total = tf.constant(0.0)
        for k, t in target.items():
            s = student[k]
            if "logits" in k:
                p = tf.nn.softmax(t, axis=-1)
                kl = tf.reduce_sum(p * (tf.nn.log_softmax(t, axis=-1) - tf.nn.log_softmax(s, axis=-1)), axis=-1)
                total += tf.reduce_mean(kl)
            else:
                total += tf.reduce_mean(tf.square(s - t))
        return total

    return loss


def _train(model: Any, wrappers: list[Any], s: PruneSettings, x: dict[str, np.ndarray], target: Any,
           call: Callable[[Any, bool], dict[str, Any]], loss: Callable[[dict[str, Any], Any], Any]) -> list[float]:
    """Fine-tune the wrapped layers for ``s.total_steps`` steps; return the loss of every step."""
    for w in wrappers:  # what UpdatePruningStep.on_train_begin does
        w.pruning_step.assign(0)
    # The wrapped layers' own weights; of an embeddings layer only the pruned table (positions stay).
    variables = [v for w in wrappers for v in (w.layer.get_prunable_weights() if hasattr(w.layer, "get_prunable_weights")
                                               else w.layer.trainable_weights)]
    losses = fit(variables, x, target, call, loss, steps=s.total_steps, batch_size=s.batch_size,
                 learning_rate=s.learning_rate, seed=s.seed)
    for w in wrappers:  # what UpdatePruningStep.on_epoch_end does: leave the weights masked
        w.pruning_obj.weight_mask_op()
    return losses


def fit(variables: list[Any], x: Mapping[str, np.ndarray], target: Any, call: Callable[[Any, bool], dict[str, Any]],
        loss: Callable[[dict[str, Any], Any], Any], *, steps: int, batch_size: int, learning_rate: float,
        seed: int) -> list[float]:
    """``steps`` Adam steps on ``variables`` over shuffled minibatches of ``x`` (and ``target``, a dict of
    per-sample arrays or one array); return the loss of every step. Pruning recovery and quantization-aware
    distillation (:mod:`litegate.quantize.qat`) share it."""
    import tensorflow as tf  # TensorFlow: build child only
    import tf_keras  # TensorFlow: build child only

    opt = tf_keras.optimizers.Adam(learning_rate=learning_rate)
    n = len(next(iter(x.values())))
    bs = min(batch_size, n)

    @tf.function
    def step(xb: Any, tb: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss(call(xb, True), tb)
        grads = tape.gradient(value, variables)
        opt.apply_gradients(zip(grads, variables, strict=True))
        return value

    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    losses: list[float] = []
    for _ in range(steps):
        if len(order) < bs:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:bs], order[bs:]
        xb = {k: tf.constant(v[idx]) for k, v in x.items()}
        tb = ({k: tf.constant(v[idx]) for k, v in target.items()} if isinstance(target, Mapping)
              else tf.constant(target[idx]))
        losses.append(float(step(xb, tb)))
    return losses


def loss_curve(losses: list[float]) -> list[list[float]]:
    if not losses:
        return []
    idx = sorted({int(round(i)) for i in np.linspace(0, len(losses) - 1, min(_CURVE_POINTS, len(losses)))})
    return [[i + 1, losses[i]] for i in idx]


def _serve_specs(loaded: Loaded) -> dict[str, Any]:
    return dict(loaded.serve.get_concrete_function().structured_input_signature[1])


def model_feed(names: list[str], texts_inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return feed_for(names, dict(texts_inputs))
    except Exception as exc:  # ModelLoadError: an input the text cannot feed
        raise QuantizationError(f"pruning recovery data does not fit the model: {exc}") from None


def _resolve_mode(s: PruneSettings, labels: np.ndarray | None) -> str:
    if s.mode == "labels" and labels is None:
        raise QuantizationError("pruning recipe asks for recovery with labels (mode 'labels') and no labels were given")
    if s.mode == "distill" or labels is None:
        return "distill"
    return "labels"


def apply_pruning(loaded: Loaded, recipe: Recipe, *, texts_inputs: dict[str, np.ndarray],
                  labels: np.ndarray | None = None) -> tuple[Loaded, dict[str, Any]]:
    """Prune the prunable layers of ``loaded``'s tf_keras model, fine-tune, strip the wrappers.

    Args:
        loaded: a functional tf_keras model (``loaded.prunable`` and ``loaded.keras_model``), or
            litegate's GPT-2. The input is not modified: the pruned model is a copy.
        recipe: a ``kind = "prune"`` recipe.
        texts_inputs: encoded recovery text keyed by input role or input name (``input_ids``,
            ``attention_mask``, ``tokens`` ...), each ``[N, ...]``.
        labels: optional task labels ``[N]`` (class ids for a classifier; next-token ids
            ``[N, T]`` for a generator) for ``mode`` ``labels`` / ``auto``.

    Returns:
        A new :class:`Loaded` (same input names and static shapes; ``keras_model`` and ``owner``
        the stripped model; generators get rebuilt ``signatures``), and stats: ``layers``
        (pruned layer -> fraction of zeros in its kernels), ``pruned_sparsity``,
        ``all_weights_sparsity``, ``pruned_params``, ``total_params``, ``mode``, ``steps``,
        ``loss_first``, ``loss_last``, ``loss_curve`` ([step, loss] pairs), ``fidelity`` (per
        output: max abs difference and cosine to the float model on the recovery inputs),
        ``seed``, ``recipe``.

    Raises:
        QuantizationError: the model cannot be pruned, or the data does not fit it.
    """
    import tf_keras  # TensorFlow: build child only

    s = PruneSettings.from_recipe(recipe)
    model = loaded.keras_model
    if model is None:
        raise QuantizationError("pruning needs a tf_keras model; this source is a SavedModel or a Keras 3 model "
                                "(tensorflow-model-optimization prunes tf_keras models only)")
    if not texts_inputs or not len(next(iter(texts_inputs.values()))):
        raise QuantizationError("pruning needs recovery text: no samples were given")
    mode = _resolve_mode(s, labels)
    if labels is not None and len(labels) != len(next(iter(texts_inputs.values()))):
        raise QuantizationError(f"{len(labels)} labels for {len(next(iter(texts_inputs.values())))} recovery samples")
    tf_keras.utils.set_random_seed(s.seed)
    from litegate.converter.gpt2 import GPT2  # imports TensorFlow: build child only

    if isinstance(model, GPT2):
        pruned, stats = _prune_gpt2(loaded, s, texts_inputs, labels, mode)
    elif not loaded.prunable or not getattr(model, "_is_graph_network", False):
        raise QuantizationError(f"model {getattr(model, 'name', '?')!r} is not a functional tf_keras model: "
                                "tensorflow-model-optimization cannot clone subclassed models")
    else:
        pruned, stats = _prune_functional(loaded, s, texts_inputs, labels, mode)
    stats.update({"seed": s.seed, "recipe": recipe.name, "target_sparsity": 0.5 if s.structured_2_4 else s.target_sparsity,
                  "structure": "2:4" if s.structured_2_4 else f"{s.block_size[0]}x{s.block_size[1]}"})
    return pruned, stats


def _prune_functional(loaded: Loaded, s: PruneSettings, texts_inputs: Mapping[str, np.ndarray],
                      labels: np.ndarray | None, mode: str) -> tuple[Loaded, dict[str, Any]]:
    import tensorflow_model_optimization as tfmot  # TensorFlow: build child only
    import tf_keras  # TensorFlow: build child only

    src = loaded.keras_model
    in_names = [layer.name for layer in src._input_layers]
    x = model_feed(in_names, texts_inputs)
    out_names = list(src.output_names)

    # The float model's outputs (distillation targets, fidelity), from a free-batch copy in batches of
    # TEACHER_BATCH: the batch-1 model one sample at a time took ~100 s of MiniLM's 2000 recovery samples.
    teacher = float_outputs(src, x)

    # Clone with a free batch dimension and fresh variables; prunable layers come back wrapped.
    fresh: dict[str, Any] = {}
    wrapped: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    def clone_fn(layer: Any) -> Any:
        copy = fresh_copy(layer)
        fresh[layer.name] = copy
        if _is_prunable(layer, s):
            misfit = _block_misfit(layer, s)
            if misfit:
                skipped[layer.name] = misfit
                return copy
            wrapped[layer.name] = _wrap(copy, s)
            return wrapped[layer.name]
        return copy

    try:
        with _quiet_lambda_warning():
            model = tf_keras.models.clone_model(src, input_tensors=_free_batch_inputs(src), clone_function=clone_fn)
    except ValueError as exc:
        raise QuantizationError(f"cannot wrap the model for pruning: {str(exc).splitlines()[0]}") from None
    if not wrapped:
        why = f" ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
        raise QuantizationError(f"model {src.name!r} has no prunable layer (supported: {', '.join(PRUNABLE_TYPES)}){why}")
    for layer in src.layers:
        if layer.weights and layer.name in fresh:
            fresh[layer.name].set_weights(layer.get_weights())
    _check_copied(src, fresh)

    def call_new(xb: Any, training: bool) -> dict[str, Any]:
        return call_model(model, in_names, out_names, xb, training=training)

    label_key = _label_key(out_names, teacher) if mode == "labels" else None
    if label_key is not None:
        _check_labels(labels, teacher[label_key].shape[-1])
    target: Any = np.asarray(labels) if mode == "labels" else teacher
    losses = _train(model, list(wrapped.values()), s, x, target, call_new, loss_fn(mode, label_key))
    with _quiet_lambda_warning():
        stripped = tfmot.sparsity.keras.strip_pruning(model)
    pruned_layers = {name: stripped.get_layer(name) for name in wrapped}
    stats = _sparsity_stats(stripped, pruned_layers)
    stats["skipped"] = skipped

    after = batched(lambda xb: as_numpy(call_model(stripped, in_names, out_names, xb)), x, TEACHER_BATCH)
    stats["fidelity"] = fidelity(after, teacher)
    stats.update(_loss_stats(losses, mode, s))
    note = (f"pruned {len(wrapped)} layers to {stats['pruned_sparsity']:.1%} zeros "
            f"({stats['all_weights_sparsity']:.1%} of all weights), recovery by {mode}, {s.total_steps} steps")
    return trained_loaded(loaded, stripped, note), stats


def trained_loaded(loaded: Loaded, model: Any, note: str) -> Loaded:
    """``loaded`` with its tf_keras model replaced by ``model`` (a free-batch functional copy with the same inputs and
    outputs, fine-tuned), served by a new serving function with ``loaded``'s static input specs (generators get
    rebuilt ``signatures``) and ``note`` added to its notes."""
    import tensorflow as tf  # TensorFlow: build child only

    result = Loaded(serve=None, owner=model, notes=[*loaded.notes, note], prunable=True, keras_model=model,
                    dynamic=loaded.dynamic)
    if loaded.signatures:
        from litegate.converter.textgen import rnn_signatures  # imports TensorFlow: build child only

        prefill = loaded.signatures["prefill"].structured_input_signature[1]["tokens"]
        result.signatures = rnn_signatures(model, int(prefill.shape[1]))
        return result
    in_names = [layer.name for layer in model._input_layers]
    out_names = list(model.output_names)
    specs = _serve_specs(loaded)
    # serving names -> model input names (the loaders use the same names, in the same order)
    rename = {k: k for k in specs} if set(specs) == set(in_names) else dict(zip(specs, in_names, strict=True))

    def serve_call(**kw: Any) -> Any:
        return call_model(model, in_names, out_names, {rename[k]: v for k, v in kw.items()})

    result.serve = serving_function(serve_call, {k: tf.TensorSpec(v.shape, v.dtype) for k, v in specs.items()})
    return result


def _free_batch_inputs(src: Any) -> list[Any]:
    """New inputs like ``src``'s with a free batch dimension (a conversion-built model has batch 1)."""
    import tf_keras  # TensorFlow: build child only

    return [tf_keras.Input(shape=layer._batch_input_shape[1:], dtype=layer.dtype, name=layer.name)
            for layer in src._input_layers]


def free_batch_copy(src: Any, clone_function: Callable[[Any], Any] | None = None) -> Any:
    """A functional copy of ``src`` with a free batch dimension, its layers made by ``clone_function`` (default: a new
    layer of the same class) and every layer's weights copied from ``src`` by name."""
    import tf_keras  # TensorFlow: build child only

    with _quiet_lambda_warning():
        copy = tf_keras.models.clone_model(src, input_tensors=_free_batch_inputs(src),
                                           clone_function=clone_function or fresh_copy)
    for layer in src.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def float_outputs(src: Any, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``src``'s outputs on ``x`` (inputs by name), by name, computed in batches of TEACHER_BATCH on a free-batch copy."""
    plain = free_batch_copy(src)
    in_names = [layer.name for layer in src._input_layers]
    return batched(lambda xb: as_numpy(call_model(plain, in_names, list(src.output_names), xb)), x, TEACHER_BATCH)


@contextlib.contextmanager
def _quiet_lambda_warning() -> Iterator[None]:
    """Silence tf_keras' warning that a layer config holds a lambda (BERT's GELU) while cloning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The object being serialized includes a `lambda`")
        yield


def fresh_copy(layer: Any) -> Any:
    """A new, unbuilt layer like ``layer``; Python-callable activations (a lambda) carried over."""
    config = layer.get_config()
    try:
        return layer.__class__.from_config(config)
    except (TypeError, ValueError):
        pass
    owner = getattr(layer, "cell", layer)  # an RNN layer keeps its activations on its cell
    fns = {k: getattr(owner, k) for k in ("activation", "recurrent_activation")
           if k in config and callable(getattr(owner, k, None))}
    try:
        copy = layer.__class__.from_config({**config, **{k: "linear" for k in fns}})
    except (TypeError, ValueError) as exc:
        raise QuantizationError(f"cannot copy layer {layer.name!r} ({type(layer).__name__}) for pruning: "
                                f"{str(exc).splitlines()[0]}") from None
    for k, fn in fns.items():
        setattr(getattr(copy, "cell", copy), k, fn)
    return copy


def _label_key(out_names: list[str], teacher: Mapping[str, np.ndarray]) -> str:
    key = next((k for k in teacher if "logits" in k), None) or (next(iter(teacher)) if len(teacher) == 1 else None)
    if key is None:
        raise QuantizationError(f"recovery with labels needs a logits output; the model has {', '.join(out_names)}")
    return key


def _check_labels(labels: np.ndarray | None, classes: int) -> None:
    a = np.asarray(labels)
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= classes):
        raise QuantizationError(f"recovery labels must be class ids in [0, {classes}) for the model's {classes} "
                                f"logits; got values from {a.min()} to {a.max()}")


def _loss_stats(losses: list[float], mode: str, s: PruneSettings) -> dict[str, Any]:
    return {"mode": mode, "steps": len(losses), "pruning_steps": s.end_step, "recovery_steps": s.recovery_steps,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_curve": loss_curve(losses)}


def _check_copied(src: Any, fresh: Mapping[str, Any]) -> None:
    """Every weight of the clone equals the source's, bit for bit, before pruning starts."""
    for layer in src.layers:
        if not layer.weights:
            continue
        copy = fresh.get(layer.name)
        theirs = copy.get_weights() if copy is not None else []
        ours = layer.get_weights()
        if len(theirs) != len(ours) or not all(a.shape == b.shape and np.array_equal(a, b)
                                                for a, b in zip(ours, theirs, strict=False)):
            raise QuantizationError(f"cloning for pruning did not preserve the weights of layer {layer.name!r}")


def _prune_gpt2(loaded: Loaded, s: PruneSettings, texts_inputs: Mapping[str, np.ndarray],
                labels: np.ndarray | None, mode: str) -> tuple[Loaded, dict[str, Any]]:
    """GPT-2 is subclassed: rebuild it, copy the weights, wrap its Dense sublayers in place."""
    import tensorflow as tf  # TensorFlow: build child only

    from litegate.converter.gpt2 import (  # imports TensorFlow: build child only
        GPT2,
        signatures,
    )

    src = loaded.keras_model
    x = model_feed(["tokens"], texts_inputs)
    teacher = batched(lambda xb: {"logits": src(tf.constant(xb["tokens"])).numpy()}, x, s.batch_size)
    model = GPT2(src.cfg)
    model.build_all()
    if len(model.weights) != len(src.weights):
        raise QuantizationError("cannot copy GPT-2 for pruning: the rebuilt model has different weights")
    for ours, theirs in zip(model.weights, src.weights, strict=True):
        ours.assign(theirs)
    for ours, theirs in zip(model.weights, src.weights, strict=True):
        if not np.array_equal(ours.numpy(), theirs.numpy()):
            raise QuantizationError(f"copying GPT-2 for pruning did not preserve weight {theirs.name!r}")
    keys = ("c_attn", "c_proj", "c_fc", "mlp_proj")
    dense = {b[k].name: (b, k, b[k]) for b in model.blocks for k in keys}
    skipped = {name: why for name, (_, _, layer) in dense.items() if (why := _block_misfit(layer, s))}
    dense = {name: v for name, v in dense.items() if name not in skipped}
    wrappers = {}
    for name, (block, key, layer) in dense.items():
        w = _wrap(layer, s)
        w.build(tf.TensorShape([None, None, int(layer.kernel.shape[0])]))
        block[key] = w
        setattr(model, name, w)
        wrappers[name] = w

    def call(xb: Any, training: bool) -> dict[str, Any]:
        return {"logits": model(xb["tokens"], training=training)}

    if not wrappers:
        raise QuantizationError(f"no GPT-2 layer can be pruned with this recipe: {'; '.join(skipped.values())}")
    if mode == "labels":
        _check_labels(labels, teacher["logits"].shape[-1])
    target: Any = np.asarray(labels) if mode == "labels" else teacher
    losses = _train(model, list(wrappers.values()), s, x, target, call, loss_fn(mode, "logits"))
    for name, (block, key, layer) in dense.items():  # strip: put the (masked) Dense layers back
        block[key] = layer
        setattr(model, name, layer)
    stats = _sparsity_stats(model, {name: layer for name, (_, _, layer) in dense.items()})
    stats["skipped"] = skipped
    stats["fidelity"] = fidelity(batched(lambda xb: {"logits": model(tf.constant(xb["tokens"])).numpy()}, x,
                                           s.batch_size), teacher)
    stats.update(_loss_stats(losses, mode, s))
    prefill = loaded.signatures["prefill"].structured_input_signature[1]["tokens"]
    cache = loaded.signatures["decode"].structured_input_signature[1]["k_cache_0"]
    sigs = signatures(model, int(prefill.shape[1]), int(cache.shape[2]))
    note = (f"pruned {len(dense)} Dense sublayers of GPT-2 to {stats['pruned_sparsity']:.1%} zeros "
            f"({stats['all_weights_sparsity']:.1%} of all weights; the tied embedding is not pruned), "
            f"recovery by {mode}, {s.total_steps} steps")
    return Loaded(serve=None, owner=model, notes=[*loaded.notes, note], prunable=False, keras_model=model,
                  signatures=sigs), stats


# --------------------------------------------------------------------------------------------
# Reading sparsity back from the flatbuffer (no TensorFlow)

_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8,
             "UINT8": np.uint8, "INT16": np.int16}


def sparsity_report(model: bytes | str | Path) -> dict[str, Any]:
    """Fraction of zeros in every constant weight tensor of a .tflite, overall, and the file sizes.

    Weight tensors are constant tensors of a float or 8/16-bit integer type (int32/int64
    constants are shapes, axes and biases of quantized ops, and are left out); other float
    constants (a mask pattern, a zero-initialised state buffer) count too. A quantized value
    counts as zero when it equals its zero point. A tensor stored in TFLite's sparse format
    (``EXPERIMENTAL_SPARSITY``) counts its dropped elements as zeros and is marked
    ``sparse_encoded``. A buffer shared by several tensors counts once.

    Returns:
        ``bytes``, ``gzip_bytes`` (level 9, like ``benchmarks.size``), ``tensors`` ([{name, type,
        shape, elements, zeros, sparsity, sparse_encoded}]), ``weight_elements``, ``zeros``,
        ``sparsity`` (all weight tensors), ``matrix_sparsity`` (rank >= 2 only), ``sparse_encoded``
        (how many tensors use the sparse format).

    Raises:
        ModelLoadError: not a valid TFLite flatbuffer.
    """
    data = bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
    name = "<bytes>" if isinstance(model, bytes | bytearray) else str(model)
    read_model(data, source=name)  # verifies the flatbuffer, bounds-checked, before we walk it
    m = schema.Model.GetRootAs(data, 0)
    seen: set[int] = set()
    tensors: list[dict[str, Any]] = []
    for si in range(m.SubgraphsLength()):
        sg = m.Subgraphs(si)
        for ti in range(sg.TensorsLength()):
            t = sg.Tensors(ti)
            b = int(t.Buffer())
            type_name = TYPE_NAMES.get(int(t.Type()), "")
            if b <= 0 or b in seen or type_name not in _NP_TYPES:
                continue
            buf = m.Buffers(b)
            if buf.DataLength():
                raw = buf.DataAsNumpy().tobytes()
            elif buf.Offset() > 1 and buf.Size() > 0:
                raw = data[buf.Offset() : buf.Offset() + buf.Size()]
            else:
                continue
            seen.add(b)
            values = np.frombuffer(raw, dtype=_NP_TYPES[type_name])
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            elements = int(np.prod(shape)) if shape else values.size
            zero = _zero_points(t, values.size)
            stored_zeros = int(np.count_nonzero(values == zero)) if zero is not None else 0
            sparse = t.Sparsity() is not None
            zeros = stored_zeros + (elements - values.size if sparse else 0)
            tensors.append({"name": (t.Name() or b"").decode("utf-8", "replace"), "type": type_name, "shape": list(shape),
                            "elements": elements, "zeros": zeros, "sparsity": zeros / elements if elements else 0.0,
                            "sparse_encoded": sparse})
    n = sum(t["elements"] for t in tensors)
    z = sum(t["zeros"] for t in tensors)
    mats = [t for t in tensors if len(t["shape"]) >= 2]
    mn = sum(t["elements"] for t in mats)
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)), "tensors": tensors,
            "weight_elements": n, "zeros": z, "sparsity": z / n if n else 0.0,
            "matrix_sparsity": sum(t["zeros"] for t in mats) / mn if mn else 0.0,
            "sparse_encoded": sum(1 for t in tensors if t["sparse_encoded"])}


def _zero_points(t: Any, size: int) -> Any:
    """What a stored zero looks like: 0 for floats, the zero point(s) for quantized integers."""
    q = t.Quantization()
    if q is None or not q.ZeroPointLength():
        return 0
    zp = q.ZeroPointAsNumpy()
    if len(zp) == 1:
        return zp[0]
    if size % len(zp):
        return None
    dim = int(q.QuantizedDimension())
    shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [size]
    if t.Sparsity() is not None or int(np.prod(shape)) != size or dim >= len(shape):
        return None  # a sparse per-channel tensor: its zero points cannot be lined up here
    view = [1] * len(shape)
    view[dim] = len(zp)
    return np.broadcast_to(zp.reshape(view), shape).reshape(-1)


# --------------------------------------------------------------------------------------------
# Conversion helpers (child)


def _converter(loaded: Loaded, work: Path) -> Any:
    import tensorflow as tf  # TensorFlow: build child only

    if loaded.signatures:
        module = tf.Module()
        module.owner = loaded.owner
        export = work / "signatures_saved_model"
        tf.saved_model.save(module, str(export), signatures=dict(loaded.signatures))
        return tf.lite.TFLiteConverter.from_saved_model(str(export), signature_keys=list(loaded.signatures))
    return tf.lite.TFLiteConverter.from_concrete_functions([loaded.serve.get_concrete_function()], loaded.owner)


def sparse_encoding_variants(loaded: Loaded) -> dict[str, bytes]:
    """Convert the (pruned) model four ways, so a caller can measure what sparse encoding does.

    Returns:
        ``{"fp32": ..., "fp32+sparsity": ..., "dynamic-int8": ..., "dynamic-int8+sparsity": ...}``:
        no optimization, ``[EXPERIMENTAL_SPARSITY]``, ``[DEFAULT]`` and ``[DEFAULT,
        EXPERIMENTAL_SPARSITY]``. The converter decides per tensor whether the sparse format is
        worth it; :func:`sparsity_report` counts the tensors it encoded. Measure before shipping
        one: with TF 2.21 the ``dynamic-int8+sparsity`` file of a pruned BERT is larger than
        ``dynamic-int8`` and LiteRT's XNNPACK delegate fails to prepare it ("failed to delegate
        FULLY_CONNECTED node"); the builtin CPU kernels run it.

    Raises:
        ConversionError: a conversion failed.
    """
    import tensorflow as tf  # TensorFlow: build child only

    options = {"fp32": [], "fp32+sparsity": [tf.lite.Optimize.EXPERIMENTAL_SPARSITY],
               "dynamic-int8": [tf.lite.Optimize.DEFAULT],
               "dynamic-int8+sparsity": [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]}
    out = {}
    with tempfile.TemporaryDirectory(prefix="litegate-sparse-") as tmp:
        for name, opts in options.items():
            conv = _converter(loaded, Path(tmp) / name)
            conv.optimizations = opts
            try:
                out[name] = bytes(conv.convert())
            except Exception as exc:  # the converter raises ConverterError and plain exceptions
                first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                raise ConversionError(f"{name} conversion of the pruned model failed: {first}") from None
    return out

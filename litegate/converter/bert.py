"""litegate's own BERT in tf_keras (functional, so tfmot can wrap its Dense layers for pruning).

The graph is written for mobile conversion:
* static shapes (batch 1, ``seq_len``) when built for conversion;
* the attention mask is an additive penalty of moderate size (``MASK_PENALTY``) instead of
  ``-10000``: a -10000 constant gives the masked-score tensor an int8 scale of ~40 so every logit
  collapses under full-integer quantization; -40 still drives masked probabilities to ~4e-18;
* layer norm is spelled with SUB/MUL/MEAN/RSQRT (no SQUARED_DIFFERENCE, which the int16x8
  kernels reject);
* each feed-forward residual can be traced smoothed (:func:`residual_smoothing`, the ``int8``
  recipe's ``smooth_residual``): its outlier channels carried scaled down, so full-integer
  quantization does not give one int8 scale to MiniLM's 223-wide [CLS] channel and its ~2-wide rest.
  The ``ResidualScale`` layers and ``smooth_key`` are identities otherwise (the float graph is unchanged);
* the mean-pooling head can be traced in an integer spelling (:func:`integer_pooling`, the calibrated
  recipes' ``integer_pooling``) whose sums do not outgrow their inputs' range.

``gpu_friendly=True`` (``ModelSource.options["gpu_friendly"]``) spells the two ops LiteRT's GPU
delegate refuses in another way, with the same numbers:
* the word-embedding lookup gathers with 1-D indices (ids reshaped to ``[-1]``, gathered along
  axis 1 of the table seen as ``[1, V, H]``) instead of ``[1, S]`` indices (GPU delegate: "GATHER:
  Only support 1D indices"), see :func:`gather_rows`;
* the [CLS] token is sliced as ``x[:, 0:1, :]`` and reshaped to ``[B, H]`` instead of ``x[:, 0, :]``,
  whose STRIDED_SLICE has a shrink mask ("Slice does not support shrink_axis_mask parameter.").
Everything else in the graph already runs on the GPU delegate (CAST int32 -> float32 included).

On XNNPACK (measured on all-MiniLM-L6-v2, see ``docs/performance.md``) this form is already the fast
one: the converter folds the 1/sqrt(d) scale into the query FULLY_CONNECTED and fuses every bias,
GELU lowers to the builtin GELU, K is read through BATCH_MATMUL's ``adj_y`` (XNNPACK refuses
``adj_x``), and XNNPACK fuses the layer norm's square + mean; FULLY_CONNECTED is ~90% of fp32 time.
Fused Q/K/V, K pre-transposed, other layer-norm spellings and XNNPACK flags measured within noise
(the tanh GELU is 3e-4 off), so none is used; ``tests/test_bert.py`` guards the op counts.

Weights map one-to-one to Hugging Face ``BertModel`` / ``BertForSequenceClassification`` names, and to those of
the other BERT-family encoders (:data:`~litegate.converter.hf.BERT_FAMILIES`) built by the same :func:`build_bert`:
DistilBERT (no token types, its classifier a ReLU ``pre_classifier`` on the first token), RoBERTa and XLM-R
(positions from ``padding_idx + 1``: with right padding a static slice gives every real token its position;
classifier ``classifier.dense`` (tanh) and ``classifier.out_proj``), ELECTRA (embeddings of ``embedding_size``
projected to the hidden size; classifier as RoBERTa's with GELU) and ALBERT (factorised embeddings and one layer
whose tf_keras layers are applied ``num_hidden_layers`` times, so the .tflite holds its weights once; its
residual-smoothing key is ``l0_ffn`` for every application). MobileBERT (bottlenecks, stacked feed-forward
networks, trigram embeddings, ``NoNorm``) has its own builder and weight map in :mod:`litegate.converter.mobilebert`;
:mod:`litegate.converter.encoders` picks one or the other by the checkpoint's ``model_type`` and loads the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from litegate.converter.hf import BERT_FAMILIES, BertConfig
from litegate.errors import ModelLoadError
from litegate.types import Head

MASK_PENALTY = 40.0
HEADS = tuple(h.value for h in Head)


_SMOOTHING: list[dict[str, np.ndarray]] = []  # residual block -> per-channel scale, read when a graph is traced


@contextlib.contextmanager
def residual_smoothing(scales: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Trace the feed-forward residual of the blocks in ``scales`` with its outlier channels scaled down.

    Inside the block, a traced BERT carries ``r / s`` instead of the residual sum ``r = x + ffn_out(g)``
    that enters each ``l<i>_ffn_ln`` layer norm: ``ffn_out``'s output is multiplied by ``1 / s`` (the
    converter folds that MUL into the FULLY_CONNECTED's weights and bias), the residual input ``x`` gets
    one MUL by ``1 / s``, and the layer norm restores the exact statistics of ``r``::

        mean = MEAN(r') + r' . ((s - 1) / d)          c' = r' - mean * (1 / s)
        var  = MEAN(c'^2) + c'^2 . ((s^2 - 1) / d)    out = c' * rsqrt(var + eps) * (gamma * s) + beta

    The same function in float (tests: within 1e-4), but no int8 tensor holds the outlier any more:
    on all-MiniLM-L6-v2 the [CLS] token writes up to 223 into channel 99 of that residual (the median
    channel's maximum is ~2), which one per-tensor int8 scale cannot share with the other channels.
    Scales come from :func:`smoothing_scales`.
    """
    _SMOOTHING.append({k: np.asarray(v, np.float32) for k, v in scales.items()})
    try:
        yield
    finally:
        _SMOOTHING.pop()


def _smoothing_scale(key: str) -> np.ndarray | None:
    """The scale :func:`residual_smoothing` gives block ``key`` now, if any."""
    return _SMOOTHING[-1].get(key) if _SMOOTHING else None


def smoothing_scales(maxima: Mapping[str, np.ndarray], target: float) -> dict[str, np.ndarray]:
    """Per block, ``max(1, channel max / target)``: every channel of the residual brought to ``target`` or less."""
    return {k: np.maximum(1.0, np.asarray(m, np.float32) / float(target)).astype(np.float32) for k, m in maxima.items()}


_MAXIMA: list[dict[str, np.ndarray]] = []  # while ffn_residual_maxima runs: per-channel max |r| per block


def ffn_residual_maxima(model: tf_keras.Model, samples: Mapping[str, np.ndarray], batch: int = 25) -> dict[str, np.ndarray]:
    """Per feed-forward block of litegate's BERT, each channel's largest ``|r|`` entering ``l<i>_ffn_ln``.

    The model runs eagerly on ``samples`` (keyed by its input names) and each such layer norm records
    its input, so it works on any model holding them (a pruned and stripped clone included).
    """
    names = list(model.input_names)
    n = len(next(iter(samples.values())))
    _MAXIMA.append({})
    try:
        for b in range(0, n, batch):
            model({name: tf.constant(samples[name][b : b + batch]) for name in names})
        return dict(_MAXIMA[-1])
    finally:
        _MAXIMA.pop()


class ResidualScale(tf_keras.layers.Layer):
    """Identity, or ``x / s`` of its block while :func:`residual_smoothing` is active (no weights)."""

    def __init__(self, smooth_key: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.smooth_key = smooth_key

    def call(self, x: tf.Tensor) -> tf.Tensor:
        s = _smoothing_scale(self.smooth_key)
        return x if s is None else x * tf.constant(1.0 / s)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smooth_key": self.smooth_key}


class GammaBeta(tf_keras.layers.Layer):
    """A per-channel ``gamma`` (ones) and ``beta`` (zeros), the weights of every normalisation layer here."""

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        super().build(input_shape)


class LayerNorm(GammaBeta):
    """Layer normalisation over the last axis, in ops every TFLite quantization mode can run.

    With a ``smooth_key`` that :func:`residual_smoothing` names, its input is ``r / s`` and it returns
    the layer norm of ``r``. ``scale_first`` multiplies by gamma before the rsqrt (same function): a layer
    applied more than once (ALBERT's) then ends in no constant MUL that the converter would fold into a copy
    of the next FULLY_CONNECTED's weights per application.
    """

    def __init__(self, eps: float = 1e-12, smooth_key: str = "", scale_first: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.smooth_key = smooth_key
        self.scale_first = scale_first

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if _MAXIMA and self.smooth_key and tf.executing_eagerly():
            seen = np.abs(np.asarray(x)).reshape(-1, x.shape[-1]).max(0)
            before = _MAXIMA[-1].get(self.smooth_key)
            _MAXIMA[-1][self.smooth_key] = seen if before is None else np.maximum(before, seen)
        q = self.quantization_point
        x = q(x)
        s = _smoothing_scale(self.smooth_key)
        if s is not None:
            d = float(s.shape[-1])
            mean = tf.reduce_mean(x, axis=-1, keepdims=True) + tf.matmul(x, tf.constant(((s - 1) / d)[:, None]))
            centered = q(x - mean * tf.constant(1.0 / s))
            sq = q(centered * centered)
            var = q(tf.reduce_mean(sq, axis=-1, keepdims=True) + tf.matmul(sq, tf.constant(((s * s - 1) / d)[:, None])))
            gamma = self.gamma * tf.constant(s)
        else:
            mean = tf.reduce_mean(x, axis=-1, keepdims=True)
            centered = q(x - mean)
            var = q(tf.reduce_mean(q(centered * centered), axis=-1, keepdims=True))
            gamma = self.gamma
        inv = q(tf.math.rsqrt(var + self.eps))
        if self.scale_first:
            return q(centered * gamma * inv + self.beta)
        return q(centered * inv * gamma + self.beta)

    def quantization_point(self, x: tf.Tensor) -> tf.Tensor:
        """A tensor the int8 graph holds in 8 bits: the identity here; quantization-aware distillation
        (:mod:`litegate.quantize.qat`) rounds it there."""
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "smooth_key": self.smooth_key, "scale_first": self.scale_first}


def gather_rows(table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """``table[ids]`` spelled for LiteRT's GPU delegate: ``ids.shape + [table.shape[-1]]``, same values.

    A GATHER with 1-D indices (the delegate refuses indices of rank > 1) along axis 1 of the table
    viewed as ``[1, V, H]``, so the rows come out as ``[1, N, H]``; then a RESHAPE to the ids' shape
    (a no-op for batch 1, dropped by the converter). Not ``[N, H]`` rows: measured on ai-edge-litert
    2.3, the delegate adds a 2-D ``[N, H]`` tensor and a constant of the same shape wrongly (it lays
    the runtime tensor out as N batches and the constant as one N-wide row), and the converter folds
    a RESHAPE ``[N, H] -> [1, N, H]`` into the ADD of the position embeddings that follows.

    Args:
        table: ``[V, H]`` embedding rows.
        ids: integer indices of any shape (``[B, T]`` tokens, ``[1]`` or ``[1, 1]`` for one step).
    """
    rows = tf.gather(table[tf.newaxis], tf.reshape(ids, [-1]), axis=1)
    return tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(table)[-1:]], axis=0))


def take_position(x: tf.Tensor, index: int, *, gpu_friendly: bool = False) -> tf.Tensor:
    """``x[:, index, :]`` of a ``[B, T, H]`` tensor.

    With ``gpu_friendly`` it is ``x[:, index:index + 1, :]`` reshaped to ``[B, H]``: a STRIDED_SLICE
    without a shrink mask (which LiteRT's GPU delegate refuses) and a RESHAPE; same values.
    """
    if not gpu_friendly:
        return x[:, index, :]
    return tf.reshape(x[:, index:index + 1, :], [-1, x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]])


class Embeddings(tf_keras.layers.Layer):
    """Word + position (from row ``position_offset``) + token-type (type 0; none if ``type_vocab_size`` is 0)."""

    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, hidden: int,
                 gpu_friendly: bool = False, position_offset: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.type_vocab_size, self.hidden = type_vocab_size, hidden
        self.gpu_friendly, self.position_offset = gpu_friendly, position_offset

    def build(self, input_shape: Any) -> None:
        def init() -> tf_keras.initializers.Initializer:
            return tf_keras.initializers.TruncatedNormal(stddev=0.02)

        self.word = self.add_weight(name="word", shape=(self.vocab_size, self.hidden), initializer=init())
        self.position = self.add_weight(name="position", shape=(self.max_positions, self.hidden), initializer=init())
        if self.type_vocab_size:
            self.token_type = self.add_weight(name="token_type", shape=(self.type_vocab_size, self.hidden),
                                              initializer=init())
        super().build(input_shape)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        seq = tf.shape(ids)[1]
        x = gather_rows(self.word, ids) if self.gpu_friendly and not _PLAIN_GATHER else tf.gather(self.word, ids)
        x = x + self.position[tf.newaxis, self.position_offset : self.position_offset + seq, :]
        return x + self.token_type[tf.newaxis, 0:1, :] if self.type_vocab_size else x

    def get_prunable_weights(self) -> list[Any]:
        """The word table, for pruning recipes with ``prune_embeddings`` (tfmot's PrunableLayer API)."""
        return [self.word]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_positions": self.max_positions,
                "type_vocab_size": self.type_vocab_size, "hidden": self.hidden, "gpu_friendly": self.gpu_friendly,
                "position_offset": self.position_offset}


class AttentionCore(tf_keras.layers.Layer):
    """Scaled dot-product attention over projected q, k, v (no weights of its own)."""

    def __init__(self, heads: int, head_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heads, self.head_size = heads, head_size

    def call(self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask_bias: tf.Tensor) -> tf.Tensor:
        seq = tf.shape(q)[1]

        def split(t: tf.Tensor) -> tf.Tensor:
            return tf.transpose(tf.reshape(t, [-1, seq, self.heads, self.head_size]), [0, 2, 1, 3])

        qh = split(q * (1.0 / float(np.sqrt(self.head_size))))
        scores = tf.matmul(qh, split(k), transpose_b=True) + mask_bias
        probs = tf.nn.softmax(scores, axis=-1)
        ctx = tf.matmul(probs, split(v))
        return tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [-1, seq, self.heads * self.head_size])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size}


_PENALTY: list[float] = []  # a mask penalty traced instead of MASK_PENALTY (see mask_penalty)
_PLAIN_GATHER: list[bool] = []  # the word-embedding lookup traced as one plain GATHER (see plain_gather)


@contextlib.contextmanager
def plain_gather() -> Iterator[None]:
    """Trace the word-embedding lookup as ``tf.gather(table, ids)`` even in a ``gpu_friendly`` graph.

    For litert-quantizer's mixes of 8- and 16-bit activations (the ``auto-npu`` recipe): its 0.11 cannot quantize
    the GATHER of :func:`gather_rows`' ``[1, V, H]`` view of the table ("input operand has more dimensions than
    allowed by the axis remapping"), and Qualcomm's HTP compiler takes the plain GATHER whole (MiniLM: 264/264 ops
    on SM8650).
    """
    _PLAIN_GATHER.append(True)
    try:
        yield
    finally:
        _PLAIN_GATHER.pop()


@contextlib.contextmanager
def mask_penalty(value: float) -> Iterator[None]:
    """Trace :class:`MaskBias` with ``value`` instead of ``MASK_PENALTY`` inside the block.

    For full-integer graphs: the masked scores set the int8 range of the attention logits (MiniLM
    layers 2-5: unmasked logits span about -14..10, with the -40 penalty -52..10, a 2.6x coarser step),
    while int8 SOFTMAX outputs steps of 1/256, so a key 12 below the row's best already gets
    exp(-12) = 6e-6 of the mass and rounds to 0.
    """
    _PENALTY.append(float(value))
    try:
        yield
    finally:
        _PENALTY.pop()


class MaskBias(tf_keras.layers.Layer):
    """attention_mask [B, S] (1 = token, 0 = padding) -> additive bias [B, 1, 1, S]."""

    def call(self, mask: tf.Tensor) -> tf.Tensor:
        m = tf.cast(mask, tf.float32)
        penalty = _PENALTY[-1] if _PENALTY else MASK_PENALTY
        return ((m - 1.0) * penalty)[:, tf.newaxis, tf.newaxis, :]


class ClsToken(tf_keras.layers.Layer):
    """The first token's hidden state, ``x[:, 0, :]``, sliced without a shrink mask (see :func:`take_position`)."""

    def __init__(self, gpu_friendly: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gpu_friendly = gpu_friendly

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return take_position(x, 0, gpu_friendly=self.gpu_friendly)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gpu_friendly": self.gpu_friendly}


_INTEGER_POOLING: list[bool] = []  # MeanPool traced in its integer spelling (see integer_pooling)


@contextlib.contextmanager
def integer_pooling() -> Iterator[None]:
    """Trace :class:`MeanPool` in a spelling whose every tensor keeps its range under integer quantization.

    The float spelling ``SUM(h·m) / SUM(m)`` then ``x · rsqrt(SUM(x²))`` has three sums whose range grows
    with what they add up (up to ``seq_len`` tokens, ``hidden`` channels); TFLite's quantizer gives a
    SUM's output its input's scale, so the token count (1..128) was held in the mask's range (±1) and
    the sum of squares in one square's range: MiniLM's int16x8 embeddings reached a cosine of 0.83
    to fp32. The integer spelling computes the same function with ops whose outputs stay within their
    inputs' range: the mean as attention does it, ``softmax((m − 1)·40) @ h`` (the weights are
    ``m / count``; a padded position gets exp(−40) ≈ 4e-18), and the norm from ``MEAN(x²)``:
    ``x · rsqrt(MEAN(x²)) / sqrt(H)``. int16x8 cosine: 0.9979 (``docs/quantization.md``).
    """
    _INTEGER_POOLING.append(True)
    try:
        yield
    finally:
        _INTEGER_POOLING.pop()


class MeanPool(tf_keras.layers.Layer):
    """Mask-aware mean over tokens followed by L2 normalisation (sentence-transformers pooling)."""

    def call(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        if _INTEGER_POOLING:
            return self._integer(hidden, mask)
        m = tf.cast(mask, tf.float32)[:, :, tf.newaxis]
        summed = tf.reduce_sum(hidden * m, axis=1)
        count = tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)
        mean = summed / count
        return mean * tf.math.rsqrt(tf.maximum(tf.reduce_sum(mean * mean, axis=-1, keepdims=True), 1e-12))

    @staticmethod
    def _integer(hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """The same function for integer graphs (:func:`integer_pooling`)."""
        width = int(hidden.shape[-1])
        weights = tf.nn.softmax(((tf.cast(mask, tf.float32) - 1.0) * MASK_PENALTY)[:, tf.newaxis, :], axis=-1)
        mean = tf.matmul(weights, hidden)[:, 0, :]
        square = tf.maximum(tf.reduce_mean(mean * mean, axis=-1, keepdims=True), 1e-12 / width)
        return mean * tf.math.rsqrt(square) * (1.0 / width**0.5)


def _act(name: str) -> Any:
    if name == "relu":
        return tf.nn.relu
    approximate = name == "gelu_new"
    return lambda x: tf.nn.gelu(x, approximate=approximate)


# model_type -> (HF name of the dense between the first token and the classifier, its activation, HF name of
# the classifier) of its *ForSequenceClassification; families not named here put the pooler there
CLASSIFIER_HEADS = {
    "distilbert": ("pre_classifier", "relu", "classifier"),
    "roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ("classifier.dense", "gelu", "classifier.out_proj"),
}
POOLERS = {"bert": "pooler.dense", "roberta": "pooler.dense", "xlm-roberta": "pooler.dense", "albert": "pooler",
           "mobilebert": "pooler.dense"}  # MobileBERT's is the first token itself without classifier_activation
# model_type -> (HF prefix of layer {i}, (HF dense, ours) names, (HF layer norm, ours) names)
_BERT_LAYER = ("encoder.layer.{i}.",
               (("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
                ("attention.output.dense", "attn_out"), ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out")),
               (("attention.output.LayerNorm", "attn_ln"), ("output.LayerNorm", "ffn_ln")))
LAYERS = {
    **{t: _BERT_LAYER for t in BERT_FAMILIES},
    "distilbert": ("transformer.layer.{i}.",
                   (("attention.q_lin", "query"), ("attention.k_lin", "key"), ("attention.v_lin", "value"),
                    ("attention.out_lin", "attn_out"), ("ffn.lin1", "ffn_in"), ("ffn.lin2", "ffn_out")),
                   (("sa_layer_norm", "attn_ln"), ("output_layer_norm", "ffn_ln"))),
    "albert": ("encoder.albert_layer_groups.0.albert_layers.0.",
               (("attention.query", "query"), ("attention.key", "key"), ("attention.value", "value"),
                ("attention.dense", "attn_out"), ("ffn", "ffn_in"), ("ffn_output", "ffn_out")),
               (("attention.LayerNorm", "attn_ln"), ("full_layer_layer_norm", "ffn_ln"))),
}
PROJECTIONS = {"electra": "embeddings_project", "albert": "encoder.embedding_hidden_mapping_in"}


def _check_head(cfg: BertConfig, head: str, seq_len: int | None) -> None:
    if head not in HEADS:
        raise ModelLoadError(f"unknown BERT head {head!r} (choose from {', '.join(HEADS)})")
    if head in ("cls", "encoder") and cfg.model_type not in POOLERS:
        raise ModelLoadError(f"head {head!r} needs a pooler, which {cfg.model_type} checkpoints do not have "
                             "(choose from classification, mean, mean-classification)")
    if seq_len is not None and seq_len > cfg.max_seq_len:
        raise ModelLoadError(
            f"seq_len {seq_len} is larger than the model's max_position_embeddings {cfg.max_position_embeddings}"
            + (f" less its first {cfg.position_offset} (padding_idx + 1)" if cfg.position_offset else ""))


def build_bert(
    cfg: BertConfig,
    *,
    seq_len: int | None,
    head: str = "classification",
    batch_size: int | None = None,
    dropout: float = 0.0,
    gpu_friendly: bool = False,
) -> tf_keras.Model:
    """Build the functional tf_keras BERT (or another family of :data:`~litegate.converter.hf.BERT_FAMILIES`).

    Args:
        cfg: architecture.
        seq_len: static sequence length (None for variable length, e.g. training).
        head: ``classification`` (pooler + classifier -> ``logits``, or the family's own classifier head:
            :data:`CLASSIFIER_HEADS`), ``mean`` (masked mean + L2 norm -> ``embedding``), ``cls`` (pooler
            output -> ``pooled``) or ``encoder`` (TF-Hub style ``pooled_output`` and ``sequence_output``) or
            ``mean-classification`` (a linear classifier on the mean-pooled, L2-normalised embedding -> ``logits``).
        batch_size: static batch (1 for conversion) or None.
        dropout: hidden dropout rate used in training.
        gpu_friendly: spell the embedding lookup and the [CLS] slice in ops LiteRT's GPU delegate
            runs (see the module docstring); the outputs are the same.
    """
    if cfg.model_type == "mobilebert":
        raise ValueError("MobileBERT has its own builder: litegate.converter.encoders.build_encoder picks it")
    _check_head(cfg, head, seq_len)
    ids = tf_keras.Input((seq_len,), batch_size=batch_size, dtype=tf.int32, name="input_ids")
    mask = tf_keras.Input((seq_len,), batch_size=batch_size, dtype=tf.int32, name="attention_mask")
    x = Embeddings(cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size, cfg.embedding_width,
                   gpu_friendly=gpu_friendly, position_offset=cfg.position_offset, name="embeddings")(ids)
    x = LayerNorm(cfg.layer_norm_eps, name="embeddings_ln")(x)
    if dropout:
        x = tf_keras.layers.Dropout(dropout)(x)
    if cfg.projects_embeddings:
        x = tf_keras.layers.Dense(cfg.hidden_size, name="embeddings_project")(x)
    x = _encoder(cfg, x, MaskBias(name="mask_bias")(mask), dropout)
    outputs = _head(cfg, head, x, mask, gpu_friendly, dropout)
    return tf_keras.Model(inputs={"input_ids": ids, "attention_mask": mask}, outputs=outputs, name="bert")


def _encoder(cfg: BertConfig, x: tf.Tensor, bias: tf.Tensor, dropout: float) -> tf.Tensor:
    """The post-norm transformer layers; ALBERT's (``cfg.shared_layers``) are one set of layers applied repeatedly."""
    H, act, eps, shared = cfg.hidden_size, _act(cfg.hidden_act), cfg.layer_norm_eps, cfg.shared_layers
    built: dict[str, Any] = {}

    def layer(j: int, name: str, kind: Any, *args: Any, **kwargs: Any) -> Any:
        if f"l{j}_{name}" not in built:
            built[f"l{j}_{name}"] = kind(*args, name=f"l{j}_{name}", **kwargs)
        return built[f"l{j}_{name}"]

    for i in range(cfg.num_hidden_layers):
        j = 0 if cfg.shared_layers else i
        q, k, v = (layer(j, n, tf_keras.layers.Dense, H)(x) for n in ("query", "key", "value"))
        ctx = layer(j, "attention", AttentionCore, cfg.num_attention_heads, cfg.head_size)(q, k, v, bias)
        a = layer(j, "attn_out", tf_keras.layers.Dense, H)(ctx)
        if dropout:
            a = tf_keras.layers.Dropout(dropout)(a)
        x = layer(j, "attn_ln", LayerNorm, eps, scale_first=shared)(x + a)
        f = layer(j, "ffn_in", tf_keras.layers.Dense, cfg.intermediate_size, activation=act)(x)
        f = layer(j, "ffn_out", tf_keras.layers.Dense, H)(f)
        if dropout:
            f = tf_keras.layers.Dropout(dropout)(f)
        key = f"l{j}_ffn"  # identities unless residual_smoothing names this block
        f = layer(j, "ffn_out_scale", ResidualScale, key)(f)
        x = layer(j, "ffn_ln", LayerNorm, eps, smooth_key=key, scale_first=shared)(layer(j, "ffn_res", ResidualScale, key)(x) + f)
    return x


def _head(cfg: BertConfig, head: str, x: tf.Tensor, mask: tf.Tensor, gpu_friendly: bool,
          dropout: float) -> dict[str, tf.Tensor]:
    """The named outputs of ``head`` over the last hidden states ``x``."""
    if head == "mean":
        return {"embedding": MeanPool(name="embedding")(x, mask)}
    if head == "mean-classification":  # sentence-transformers embedding + linear classifier
        emb = MeanPool(name="embedding")(x, mask)
        return {"logits": tf_keras.layers.Dense(cfg.num_labels, name="classifier")(emb)}
    first = ClsToken(gpu_friendly=gpu_friendly, name="cls_token")(x) if gpu_friendly else x[:, 0, :]
    own = CLASSIFIER_HEADS.get(cfg.model_type) if head == "classification" else None
    if own is not None:
        act = _act(own[1]) if own[1] == "gelu" else own[1]
        pooled = tf_keras.layers.Dense(cfg.hidden_size, activation=act, name="pre_classifier")(first)
    else:
        pooled = tf_keras.layers.Dense(cfg.hidden_size, activation="tanh", name="pooler")(first)
    if head == "cls":
        return {"pooled": pooled}
    if head == "encoder":  # TF-Hub BERT encoder outputs
        return {"pooled_output": pooled, "sequence_output": x}
    if dropout:
        pooled = tf_keras.layers.Dropout(dropout)(pooled)
    return {"logits": tf_keras.layers.Dense(cfg.num_labels, name="classifier")(pooled)}


def _dense(hf: str, ours: str) -> Iterator[tuple[str, str, int, bool]]:
    yield hf + ".weight", ours, 0, True
    yield hf + ".bias", ours, 1, False


def _norm(hf: str, ours: str) -> Iterator[tuple[str, str, int, bool]]:
    yield hf + ".weight", ours, 0, False
    yield hf + ".bias", ours, 1, False


def weight_map(cfg: BertConfig, head: str) -> Iterator[tuple[str, str, int, bool]]:
    """(hf tensor name without prefix, keras layer name, weight index, transpose) for every weight."""
    if cfg.model_type == "mobilebert":
        raise ValueError("MobileBERT has its own weight map: litegate.converter.encoders.weight_map picks it")
    yield "embeddings.word_embeddings.weight", "embeddings", 0, False
    yield "embeddings.position_embeddings.weight", "embeddings", 1, False
    if cfg.type_vocab_size:
        yield "embeddings.token_type_embeddings.weight", "embeddings", 2, False
    yield from _norm("embeddings.LayerNorm", "embeddings_ln")
    if cfg.projects_embeddings:
        yield from _dense(PROJECTIONS[cfg.model_type], "embeddings_project")
    layer, denses, norms = LAYERS[cfg.model_type]
    for i in range(1 if cfg.shared_layers else cfg.num_hidden_layers):
        p = layer.format(i=i)
        for hf, ours in denses:
            yield from _dense(p + hf, f"l{i}_{ours}")
        for hf, ours in norms:
            yield from _norm(p + hf, f"l{i}_{ours}")
    own = CLASSIFIER_HEADS.get(cfg.model_type) if head == "classification" else None
    if own is not None:
        yield from _dense(own[0], "pre_classifier")
        yield from _dense(own[2], "classifier")
        return
    if head in ("classification", "cls", "encoder"):
        yield from _dense(POOLERS[cfg.model_type], "pooler")
    if head in ("classification", "mean-classification"):
        yield from _dense("classifier", "classifier")


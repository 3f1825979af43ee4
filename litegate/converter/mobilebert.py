"""MobileBERT (Hugging Face ``MobileBertModel`` / ``MobileBertForSequenceClassification``) in tf_keras.

Built by :func:`litegate.converter.encoders.build_encoder` for ``model_type`` ``mobilebert`` and with the same graph
properties (static shapes, builtin TFLite ops only, :class:`~litegate.converter.bert.MaskBias`'s moderate mask
penalty, ``gpu_friendly`` 1-D gathers and shrink-free slices, functional tf_keras whose ``Dense`` layers tfmot
can prune). The architecture, as transformers' ``modeling_mobilebert`` runs it:

* embeddings: word rows of ``embedding_size``; with ``trigram_input`` the rows of the next token, the token and
  the previous token (zeros past either end) concatenated, then ``embedding_transformation`` (a Dense to
  ``hidden_size``; also used without the trigram when ``embedding_size != hidden_size``); plus position and
  token-type (type 0) rows of ``hidden_size``; then the embeddings norm;
* norms: ``normalization_type`` ``no_norm`` is ``NoNorm``, ``x * weight + bias`` per channel (:class:`NoNorm`),
  ``layer_norm`` the usual layer norm. transformers builds two of them without ``layer_norm_eps`` (the
  embeddings' and each layer's ``output.LayerNorm``), so those use torch's default 1e-5 (:data:`TORCH_EPS`);
* each layer, with ``use_bottleneck``: ``bottleneck.input`` (Dense to ``intra_bottleneck_size`` + norm) gives
  the attention's residual input; query and key read ``bottleneck.attention``'s output
  (``key_query_shared_bottleneck``) and value the layer's input, or all three read ``bottleneck.input``'s output
  (``use_bottleneck_attention``). Attention works in ``true_hidden_size`` (``intra_bottleneck_size``, or
  ``hidden_size`` without the bottleneck); ``attention.output`` is dense + residual + norm; then
  ``num_feedforward_networks - 1`` feed-forward blocks ``ffn.{j}`` (intermediate dense + ``hidden_act``, output
  dense + residual + norm) and the last one (``intermediate``, ``output``), whose result ``output.bottleneck``
  brings back to ``hidden_size`` (dense + the layer's input as residual + norm);
* pooler: ``classifier_activation`` true: ``pooler.dense`` + tanh on the first token, false: the first token;
  ``MobileBertForSequenceClassification``'s ``classifier`` on it.

Residual smoothing (the ``int8`` recipe's ``smooth_residual``) does not apply to MobileBERT: none of its norms
carries a ``smooth_key``, so :func:`~litegate.converter.bert.ffn_residual_maxima` finds no block and the recipe
builds the graph unsmoothed (the mask penalty and integer pooling still apply).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import tensorflow as tf
import tf_keras

from litegate.converter.bert import (
    POOLERS,
    AttentionCore,
    ClsToken,
    GammaBeta,
    LayerNorm,
    MaskBias,
    MeanPool,
    _act,
    _check_head,
    _dense,
    _norm,
    gather_rows,
)
from litegate.converter.hf import BertConfig, MobileBertOptions

TORCH_EPS = 1e-5  # nn.LayerNorm's default: the epsilon of the norms transformers builds without layer_norm_eps


class NoNorm(GammaBeta):
    """MobileBERT's ``NoNorm``: ``x * gamma + beta`` per channel (weights in :class:`LayerNorm`'s order)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.gamma + self.beta


class TrigramEmbeddings(tf_keras.layers.Layer):
    """Word rows ``[B, S, E]``, or with ``trigram`` ``[next, this, previous]`` rows ``[B, S, 3E]`` (zeros past the
    ends), as transformers' ``MobileBertEmbeddings`` feeds ``embedding_transformation``."""

    def __init__(self, vocab_size: int, width: int, trigram: bool = True, gpu_friendly: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.width, self.trigram, self.gpu_friendly = vocab_size, width, trigram, gpu_friendly

    def build(self, input_shape: Any) -> None:
        self.word = self.add_weight(name="word", shape=(self.vocab_size, self.width),
                                    initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        x = gather_rows(self.word, ids) if self.gpu_friendly else tf.gather(self.word, ids)
        if not self.trigram:
            return x
        after = tf.pad(x[:, 1:, :], [[0, 0], [0, 1], [0, 0]])
        before = tf.pad(x[:, :-1, :], [[0, 0], [1, 0], [0, 0]])
        return tf.concat([after, x, before], axis=-1)

    def get_prunable_weights(self) -> list[Any]:
        """The word table (tfmot's PrunableLayer API)."""
        return [self.word]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_size": self.vocab_size, "width": self.width, "trigram": self.trigram,
                "gpu_friendly": self.gpu_friendly}


class PositionTypeEmbeddings(tf_keras.layers.Layer):
    """``x`` plus the position rows ``0 .. S-1`` and the token-type row 0 (both ``hidden_size`` wide)."""

    def __init__(self, max_positions: int, type_vocab_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_positions, self.type_vocab_size = max_positions, type_vocab_size

    def build(self, input_shape: Any) -> None:
        hidden = int(input_shape[-1])
        init = tf_keras.initializers.TruncatedNormal(stddev=0.02)
        self.position = self.add_weight(name="position", shape=(self.max_positions, hidden), initializer=init)
        self.token_type = self.add_weight(name="token_type", shape=(self.type_vocab_size, hidden), initializer=init)
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        seq = tf.shape(x)[1]
        return x + self.position[tf.newaxis, :seq, :] + self.token_type[tf.newaxis, 0:1, :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_positions": self.max_positions, "type_vocab_size": self.type_vocab_size}


def _options(cfg: BertConfig) -> MobileBertOptions:
    if cfg.mobilebert is None:
        raise ValueError(f"model_type {cfg.model_type!r} has no MobileBERT options")
    return cfg.mobilebert


def _transforms_embeddings(cfg: BertConfig, m: MobileBertOptions) -> bool:
    return m.trigram_input or cfg.embedding_width != cfg.hidden_size


def build_mobilebert(cfg: BertConfig, *, seq_len: int | None, head: str = "classification",
                     batch_size: int | None = None, dropout: float = 0.0, gpu_friendly: bool = False) -> tf_keras.Model:
    """The functional tf_keras MobileBERT; arguments and outputs as :func:`~litegate.converter.bert.build_bert`'s."""
    m = _options(cfg)
    _check_head(cfg, head, seq_len)
    H, eps, act = cfg.hidden_size, cfg.layer_norm_eps, _act(cfg.hidden_act)
    T = m.true_hidden_size(H)

    def norm(name: str, epsilon: float = eps) -> tf_keras.layers.Layer:
        return NoNorm(name=name) if m.normalization_type == "no_norm" else LayerNorm(epsilon, name=name)

    def dense(name: str, width: int, **kwargs: Any) -> tf_keras.layers.Dense:
        return tf_keras.layers.Dense(width, name=name, **kwargs)

    def drop(t: tf.Tensor) -> tf.Tensor:
        return tf_keras.layers.Dropout(dropout)(t) if dropout else t

    ids = tf_keras.Input((seq_len,), batch_size=batch_size, dtype=tf.int32, name="input_ids")
    mask = tf_keras.Input((seq_len,), batch_size=batch_size, dtype=tf.int32, name="attention_mask")
    x = TrigramEmbeddings(cfg.vocab_size, cfg.embedding_width, m.trigram_input, gpu_friendly, name="embeddings")(ids)
    if _transforms_embeddings(cfg, m):
        x = dense("embeddings_transform", H)(x)
    x = PositionTypeEmbeddings(cfg.max_position_embeddings, cfg.type_vocab_size, name="embeddings_add")(x)
    x = drop(norm("embeddings_ln", TORCH_EPS)(x))
    bias = MaskBias(name="mask_bias")(mask)
    for i in range(cfg.num_hidden_layers):
        p = f"l{i}_"
        if m.use_bottleneck:
            residual = norm(p + "bottleneck_in_ln")(dense(p + "bottleneck_in", T)(x))
            if m.use_bottleneck_attention:
                q_in = v_in = residual
            elif m.key_query_shared_bottleneck:
                q_in, v_in = norm(p + "bottleneck_attn_ln")(dense(p + "bottleneck_attn", T)(x)), x
            else:  # refused by the config reader unless intra_bottleneck_size == hidden_size
                q_in = v_in = x
        else:
            residual = q_in = v_in = x
        q, k, v = dense(p + "query", T)(q_in), dense(p + "key", T)(q_in), dense(p + "value", T)(v_in)
        ctx = AttentionCore(cfg.num_attention_heads, T // cfg.num_attention_heads, name=p + "attention")(q, k, v, bias)
        a = norm(p + "attn_ln")(dense(p + "attn_out", T)(ctx) + residual)
        for j in range(m.num_feedforward_networks - 1):
            f = dense(f"{p}ffn{j}_out", T)(dense(f"{p}ffn{j}_in", cfg.intermediate_size, activation=act)(a))
            a = norm(f"{p}ffn{j}_ln")(f + a)
        f = drop(dense(p + "ffn_out", T)(dense(p + "ffn_in", cfg.intermediate_size, activation=act)(a)))
        out = norm(p + "ffn_ln", TORCH_EPS)(f + a)
        if m.use_bottleneck:
            out = norm(p + "out_bottleneck_ln")(drop(dense(p + "out_bottleneck", H)(out)) + x)
        x = out
    return tf_keras.Model(inputs={"input_ids": ids, "attention_mask": mask},
                          outputs=_head(cfg, m, head, x, mask, gpu_friendly, dropout), name="mobilebert")


def _head(cfg: BertConfig, m: MobileBertOptions, head: str, x: tf.Tensor, mask: tf.Tensor, gpu_friendly: bool,
          dropout: float) -> dict[str, tf.Tensor]:
    """The outputs of ``head``, as :func:`litegate.converter.bert._head`'s; the pooler may be the first token."""
    if head in ("mean", "mean-classification"):
        emb = MeanPool(name="embedding")(x, mask)
        if head == "mean":
            return {"embedding": emb}
        return {"logits": tf_keras.layers.Dense(cfg.num_labels, name="classifier")(emb)}
    pooled = ClsToken(gpu_friendly=gpu_friendly, name="cls_token")(x) if gpu_friendly else x[:, 0, :]
    if m.classifier_activation:
        pooled = tf_keras.layers.Dense(cfg.hidden_size, activation="tanh", name="pooler")(pooled)
    if head == "cls":
        return {"pooled": pooled}
    if head == "encoder":
        return {"pooled_output": pooled, "sequence_output": x}
    if dropout:
        pooled = tf_keras.layers.Dropout(dropout)(pooled)
    return {"logits": tf_keras.layers.Dense(cfg.num_labels, name="classifier")(pooled)}


def weight_map(cfg: BertConfig, head: str) -> Iterator[tuple[str, str, int, bool]]:
    """(HF tensor name without prefix, keras layer name, weight index, transpose) for every MobileBERT weight."""
    m = _options(cfg)
    yield "embeddings.word_embeddings.weight", "embeddings", 0, False
    if _transforms_embeddings(cfg, m):
        yield from _dense("embeddings.embedding_transformation", "embeddings_transform")
    yield "embeddings.position_embeddings.weight", "embeddings_add", 0, False
    yield "embeddings.token_type_embeddings.weight", "embeddings_add", 1, False
    yield from _norm("embeddings.LayerNorm", "embeddings_ln")
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}.", f"l{i}_"
        pairs = [("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
                 ("attention.output.dense", "attn_out"), ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out")]
        norms = [("attention.output.LayerNorm", "attn_ln"), ("output.LayerNorm", "ffn_ln")]
        if m.use_bottleneck:
            pairs += [("bottleneck.input.dense", "bottleneck_in"), ("output.bottleneck.dense", "out_bottleneck")]
            norms += [("bottleneck.input.LayerNorm", "bottleneck_in_ln"),
                      ("output.bottleneck.LayerNorm", "out_bottleneck_ln")]
            if m.shared_query_key:
                pairs.append(("bottleneck.attention.dense", "bottleneck_attn"))
                norms.append(("bottleneck.attention.LayerNorm", "bottleneck_attn_ln"))
        for j in range(m.num_feedforward_networks - 1):
            pairs += [(f"ffn.{j}.intermediate.dense", f"ffn{j}_in"), (f"ffn.{j}.output.dense", f"ffn{j}_out")]
            norms.append((f"ffn.{j}.output.LayerNorm", f"ffn{j}_ln"))
        for a, b in pairs:
            yield from _dense(hf + a, ours + b)
        for a, b in norms:
            yield from _norm(hf + a, ours + b)
    if head in ("classification", "cls", "encoder") and m.classifier_activation:
        yield from _dense(POOLERS[cfg.model_type], "pooler")
    if head in ("classification", "mean-classification"):
        yield from _dense("classifier", "classifier")

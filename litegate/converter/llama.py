"""litegate's Llama-architecture decoder (Llama, Qwen2, Mistral) in tf_keras, with GPT-2's signature contract.

The graph follows Hugging Face's ``LlamaForCausalLM``: token embeddings, per layer an RMSNorm, grouped-query
attention with rotary position embeddings (``rope_theta``, ``rope_scaling`` ``linear`` or ``llama3``), a residual,
an RMSNorm and the SwiGLU MLP ``down(silu(gate(x)) * up(x))``; a final RMSNorm and the LM head (tied to the
embeddings or its own ``lm_head.weight``).

The signatures are those of :mod:`litegate.converter.gpt2`, so ``litegate generate``, the LM evaluator and the
converter's signature path read both alike:

* ``prefill(tokens [1, P])`` -> ``logits [1, P, V]`` and ``k_cache_i`` / ``v_cache_i`` filled for positions < P;
* ``decode(token [1, 1], pos [1], k_cache_i, v_cache_i ...)`` -> ``logits [1, V]`` and the caches with ``pos``
  written (a one-hot blend, as GPT-2's).

A cache is ``[1, num_key_value_heads, max_len, head_dim]``: keys are cached after the rotation, and each key/value
head is shared by ``n_rep = num_attention_heads / num_key_value_heads`` query heads (the queries of a group are
attended as one ``[1, kv, n_rep * S, D]`` tensor: no copy of the cache per query head, no 5-D tensor). The rotary
cos/sin tables are constants of ``max_len`` rows: prefill slices them (folded by the converter),
decode gathers the row of ``pos``. Builtin TFLite ops only. ``gpu_friendly`` spells the gathers and the decode
logits as :mod:`litegate.converter.gpt2` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from litegate.converter.bert import gather_rows, take_position
from litegate.converter.gpt2 import CachedDecoder, compared_position, traced_signatures
from litegate.converter.hf_llama import LlamaConfig, checked_tensors, tensor_shapes
from litegate.errors import ModelLoadError

# The causal mask's additive penalty. GPT-2 and BERT use 40 (bert.MASK_PENALTY: an int8 ADD keeps its resolution);
# a Llama's attention logits outgrow 40 (random weights of 512 channels did, and real models' attention sinks
# reach it), so masked positions would leak. 1e4 (GPT-2's own value in transformers) stays finite in float16.
MASK_PENALTY = 1e4


class RMSNorm(tf_keras.layers.Layer):
    """``x * rsqrt(mean(x^2) + eps) * weight``."""

    def __init__(self, eps: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def build(self, input_shape: Any) -> None:
        self.weight = self.add_weight(name="weight", shape=(int(input_shape[-1]),), initializer="ones")
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + self.eps) * self.weight


def _rotate(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) -> tf.Tensor:
    """Hugging Face's ``x * cos + rotate_half(x) * sin`` (``rotate_half``: ``[-x2, x1]`` of the halves)."""
    x1, x2 = tf.split(x, 2, axis=-1)
    return x * cos + tf.concat([-x2, x1], axis=-1) * sin


class Llama(CachedDecoder, tf_keras.Model):
    """The decoder. ``call(tokens)`` is the full causal forward."""

    def __init__(self, cfg: LlamaConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.gpu_friendly = False  # set before tracing the signatures (see the module docstring)
        self.table_len = 0  # rows of the rotary tables at least: signatures() sets max_len
        H = cfg.hidden_size
        self.embed_tokens = self.add_weight(name="embed_tokens", shape=(cfg.vocab_size, H),
                                            initializer=tf_keras.initializers.RandomNormal(stddev=0.02))
        self.lm_head = None if cfg.tie_word_embeddings else self.add_weight(
            name="lm_head", shape=(cfg.vocab_size, H), initializer=tf_keras.initializers.RandomNormal(stddev=0.02))
        self.blocks = []
        for i in range(cfg.num_hidden_layers):
            dense = {
                "q_proj": (cfg.q_size, cfg.qkv_bias), "k_proj": (cfg.kv_size, cfg.qkv_bias),
                "v_proj": (cfg.kv_size, cfg.qkv_bias), "o_proj": (H, cfg.o_bias),
                "gate_proj": (cfg.intermediate_size, cfg.mlp_bias), "up_proj": (cfg.intermediate_size, cfg.mlp_bias),
                "down_proj": (H, cfg.mlp_bias),
            }
            block: dict[str, Any] = {name: tf_keras.layers.Dense(units, use_bias=bias, name=f"l{i}_{name}")
                                     for name, (units, bias) in dense.items()}
            block["input_layernorm"] = RMSNorm(cfg.rms_norm_eps, name=f"l{i}_input_layernorm")
            block["post_attention_layernorm"] = RMSNorm(cfg.rms_norm_eps, name=f"l{i}_post_attention_layernorm")
            for layer in block.values():
                setattr(self, layer.name, layer)  # track the layer
            self.blocks.append(block)
        self.norm = RMSNorm(cfg.rms_norm_eps, name="norm")

    def _tables(self, length: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """cos/sin constants of ``table_len`` rows, at least ``length`` (all positions when that is unknown)."""
        rows = max(self.table_len, self.cfg.max_position_embeddings if length is None else length)
        cos, sin = self.cfg.rope_tables(rows)
        return tf.constant(cos), tf.constant(sin)

    def _heads(self, t: tf.Tensor, n: int) -> tf.Tensor:
        T = tf.shape(t)[1]
        return tf.transpose(tf.reshape(t, [-1, T, n, self.cfg.head_dim]), [0, 2, 1, 3])

    def _merge(self, t: tf.Tensor) -> tf.Tensor:
        T = tf.shape(t)[2]
        return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [-1, T, self.cfg.q_size])

    def _grouped(self, q: tf.Tensor, K: tf.Tensor, V: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        """Grouped-query attention without copying keys and values per query head: query head ``h`` reads key/value
        head ``h // n_rep``, so ``q [B, heads, S, D]`` is viewed as ``[B, kv, n_rep * S, D]`` (a reshape: heads are
        kv-major) and attends to ``K, V [B, kv, T, D]`` directly; ``bias [1, 1, S, T]`` is tiled ``n_rep`` times
        along the rows (``S = 1`` in decode: it broadcasts). Returns ``[B, heads, S, D]``; all tensors 4-D."""
        kv, heads, D = self.cfg.num_key_value_heads, self.cfg.num_attention_heads, self.cfg.head_dim
        rep = heads // kv
        S = q.shape[2] if q.shape[2] is not None else tf.shape(q)[2]
        if rep > 1:
            q = tf.reshape(q, [-1, kv, rep * S, D])
            if bias.shape[2] != 1:
                bias = tf.tile(bias, [1, 1, rep, 1])
        probs = tf.nn.softmax(tf.matmul(q, K, transpose_b=True) + bias, axis=-1)
        ctx = tf.matmul(probs, V)
        return tf.reshape(ctx, [-1, heads, S, D]) if rep > 1 else ctx

    def _embed(self, tokens: tf.Tensor) -> tf.Tensor:
        return gather_rows(self.embed_tokens, tokens) if self.gpu_friendly else tf.gather(self.embed_tokens, tokens)

    def _logits(self, x: tf.Tensor) -> tf.Tensor:
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return tf.matmul(self.norm(x), head, transpose_b=True)

    def _qkv(self, b: dict[str, Any], x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) -> tuple[tf.Tensor, ...]:
        cfg = self.cfg
        h = b["input_layernorm"](x)
        q = self._heads(b["q_proj"](h), cfg.num_attention_heads)
        k = self._heads(b["k_proj"](h), cfg.num_key_value_heads)
        v = self._heads(b["v_proj"](h), cfg.num_key_value_heads)
        q = _rotate(q, cos, sin) * (1.0 / float(np.sqrt(cfg.head_dim)))
        return q, _rotate(k, cos, sin), v

    def _finish(self, b: dict[str, Any], x: tf.Tensor, q: tf.Tensor, K: tf.Tensor, V: tf.Tensor,
                bias: tf.Tensor) -> tf.Tensor:
        x = x + b["o_proj"](self._merge(self._grouped(q, K, V, bias)))
        h = b["post_attention_layernorm"](x)
        return x + b["down_proj"](tf.nn.silu(b["gate_proj"](h)) * b["up_proj"](h))

    def forward(self, tokens: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        """Causal forward over ``tokens`` [B, T]: logits [B, T, V] and per-layer k, v [B, kv_heads, T, D]."""
        T = tf.shape(tokens)[1]
        cos_t, sin_t = self._tables(tokens.shape[1])
        cos, sin = cos_t[:T], sin_t[:T]
        x = self._embed(tokens)
        causal = tf.linalg.band_part(tf.ones([T, T]), -1, 0)
        bias = ((causal - 1.0) * MASK_PENALTY)[tf.newaxis, tf.newaxis]
        ks, vs = [], []
        for b in self.blocks:
            q, k, v = self._qkv(b, x, cos, sin)
            x = self._finish(b, x, q, k, v, bias)
            ks.append(k)
            vs.append(v)
        return self._logits(x), ks, vs

    def decode(self, token: tf.Tensor, pos: tf.Tensor, caches: dict[str, tf.Tensor], max_len: int) -> dict[str, tf.Tensor]:
        positions = tf.range(max_len, dtype=tf.int32)
        cos_t, sin_t = self._tables(max_len)
        if self.gpu_friendly:  # 1-D gathers, no shrink-mask slices (same values)
            cos, sin = gather_rows(cos_t, pos), gather_rows(sin_t, pos)  # [1, D]
            at = pos
        else:
            cos, sin = tf.gather(cos_t, pos), tf.gather(sin_t, pos)  # [1, D]
            at = pos if compared_position() else pos[0]  # integer variants: see gpt2.integer_signatures
        x = self._embed(token)  # [1, 1, H]
        hot = tf.cast(tf.equal(positions, at), tf.float32)[tf.newaxis, tf.newaxis, :, tf.newaxis]  # [1,1,T,1]
        visible = tf.cast(positions <= at, tf.float32)
        bias = ((visible - 1.0) * MASK_PENALTY)[tf.newaxis, tf.newaxis, tf.newaxis, :]  # [1,1,1,T]
        out: dict[str, tf.Tensor] = {}
        for i, b in enumerate(self.blocks):
            q, k, v = self._qkv(b, x, cos, sin)  # q [1, heads, 1, D], k/v [1, kv, 1, D]
            K = caches[f"k_cache_{i}"] * (1.0 - hot) + k * hot
            V = caches[f"v_cache_{i}"] * (1.0 - hot) + v * hot
            x = self._finish(b, x, q, K, V, bias)
            out[f"k_cache_{i}"], out[f"v_cache_{i}"] = K, V
        out["logits"] = take_position(self._logits(x), 0, gpu_friendly=self.gpu_friendly)
        return out

    def build_all(self) -> None:
        self(tf.zeros([1, 2], tf.int32))


def _variables(model: Llama) -> dict[str, tuple[tf.Variable, bool]]:
    """Hugging Face tensor name (no prefix) -> (variable, stored transposed: ``nn.Linear`` [out, in] vs Dense kernel)."""
    out: dict[str, tuple[tf.Variable, bool]] = {"embed_tokens.weight": (model.embed_tokens, False),
                                                "norm.weight": (model.norm.weight, False)}
    if model.lm_head is not None:
        out["lm_head.weight"] = (model.lm_head, False)
    for i, b in enumerate(model.blocks):
        p = f"layers.{i}."
        out[p + "input_layernorm.weight"] = (b["input_layernorm"].weight, False)
        out[p + "post_attention_layernorm.weight"] = (b["post_attention_layernorm"].weight, False)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            group = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"{p}{group}.{name}.weight"] = (b[name].kernel, True)
            if b[name].use_bias:
                out[f"{p}{group}.{name}.bias"] = (b[name].bias, False)
    return out


def load_llama(path: str | Path) -> Llama:
    """Build :class:`Llama` from a checkpoint folder, checking every tensor's presence and shape."""
    cfg, tensors = checked_tensors(path)
    model = Llama(cfg)
    model.build_all()
    variables = _variables(model)
    assert set(variables) == set(tensor_shapes(cfg)), "tensor_shapes and the graph disagree"
    for name, (var, transposed) in variables.items():
        var.assign(tensors[name].T if transposed else tensors[name])
    return model


def export_weights(model: Llama, prefix: str = "model.") -> dict[str, np.ndarray]:
    """The model's weights under Hugging Face names (``lm_head.weight`` without the prefix)."""
    out = {}
    for name, (var, transposed) in _variables(model).items():
        arr = var.numpy()
        out[name if name == "lm_head.weight" else prefix + name] = np.ascontiguousarray(arr.T if transposed else arr)
    return out


def signatures(model: Llama, prefill_len: int, max_len: int, *, gpu_friendly: bool = False) -> dict[str, Any]:
    """The ``prefill`` and ``decode`` tf.functions with static shapes (the contract of :func:`gpt2.signatures`).

    Args:
        model: the decoder.
        prefill_len: tokens of the ``prefill`` signature.
        max_len: positions of the KV cache (and rows of the rotary tables).
        gpu_friendly: trace the graphs LiteRT's GPU delegate takes whole.
    """
    cfg = model.cfg
    model.gpu_friendly = gpu_friendly
    if max_len > cfg.max_position_embeddings:
        raise ModelLoadError(f"max_len {max_len} is larger than the model's max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
    if cfg.sliding_window is not None and max_len > cfg.sliding_window:
        raise ModelLoadError(f"max_len {max_len} is larger than the model's sliding_window {cfg.sliding_window} "
                             "(sliding-window attention is not supported)")
    if prefill_len > max_len:
        raise ModelLoadError(f"prefill length {prefill_len} is larger than the cache length {max_len}")
    model.table_len = max_len
    return traced_signatures(model, prefill_len, max_len, layers=cfg.num_hidden_layers,
                             kv_heads=cfg.num_key_value_heads, head_size=cfg.head_dim)

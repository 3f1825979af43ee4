"""litegate's GPT-2 in tf_keras, with the two signatures a phone app needs for streaming generation.

* ``prefill(tokens [1, P])`` -> ``logits [1, P, V]`` and the KV cache filled for
  positions < P (a prompt shorter than P is padded at the end: causal attention keeps the padding
  out of earlier positions; the app reads ``logits[0, length - 1]`` and decodes from ``pos = length``);
* ``decode(token [1, 1], pos [1], k_cache_i, v_cache_i ...)`` -> ``logits [1, V]`` and the caches
  with position ``pos`` written.

The cache is fixed-size (``[1, heads, max_len, head_size]`` per layer, one input per layer and
kind, so no op has to slice a stacked cache) and is updated with a one-hot blend (MUL/ADD), which
every delegate can run. Weights map one-to-one to Hugging Face ``GPT2Model`` / ``GPT2LMHeadModel``
names (``Conv1D`` weights are ``[in, out]``, like a Dense kernel).

``gpu_friendly=True`` (``ModelSource.options["gpu_friendly"]``) spells the ops LiteRT's GPU delegate
refuses in another way, with the same numbers: the ``wte`` lookups gather with 1-D indices
(``[1, T]`` tokens reshaped to ``[T]``, gathered along axis 1 of the table seen as ``[1, V, E]``:
:func:`litegate.converter.bert.gather_rows`; the decode ``wpe`` row likewise), the decode position
is compared as
the ``[1]`` tensor it is instead of ``pos[0]`` (a STRIDED_SLICE with a shrink mask), and the decode
logits are reshaped to ``[1, V]`` instead of sliced with ``[:, 0, :]``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from litegate.converter.bert import MASK_PENALTY, LayerNorm, gather_rows, take_position
from litegate.converter.hf import GPT2Config, read_gpt2
from litegate.errors import ModelLoadError


def _gelu(name: str) -> Any:
    if name == "relu":
        return tf.nn.relu
    return lambda x: tf.nn.gelu(x, approximate=name == "gelu_new")


_COMPARED_POSITION: list[bool] = []  # decode compares the [1] position as it is (see integer_signatures)
_TRACED_WITH: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()  # traced_signatures' args


def compared_position() -> bool:
    """Whether decode is being traced with its ``[1]`` position compared as it is (:func:`integer_signatures`)."""
    return bool(_COMPARED_POSITION)


def integer_signatures(model: Any) -> dict[str, Any] | None:
    """``model``'s signatures traced again for an integer variant, or None if ``model`` is no :class:`CachedDecoder`
    traced by :func:`traced_signatures`.

    decode compares the cache positions with ``pos`` as the ``[1]`` tensor it is instead of ``pos[0]``: the same
    values, without the rank-0 STRIDED_SLICE Qualcomm's HTP compiler refuses ("Output[0] has incorrect Rank 1"), so
    an NPU takes the char GPT-2's int16x8 whole (SM8650: 366 of 366 ops, against 366 of 367). Float graphs keep
    ``pos[0]``: there the comparison spelling cut the GPU delegate's partition (estimate 97.9% -> 92.5%).
    """
    args = _TRACED_WITH.get(model)
    if args is None:
        return None
    _COMPARED_POSITION.append(True)
    try:
        return traced_signatures(model, **args)
    finally:
        _COMPARED_POSITION.pop()


class CachedDecoder:
    """The part of the prefill/decode contract every litegate decoder shares (GPT-2, :mod:`litegate.converter.llama`):
    ``call`` is the full causal forward, ``prefill`` returns its logits and the KV cache padded to ``max_len``
    positions, one ``k_cache_<i>`` / ``v_cache_<i>`` per layer. The class defines ``forward(tokens) ->
    (logits, keys, values)``."""

    def forward(self, tokens: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        raise NotImplementedError

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return self.forward(tokens)[0]

    def prefill(self, tokens: tf.Tensor, max_len: int) -> dict[str, tf.Tensor]:
        logits, ks, vs = self.forward(tokens)
        pad = max_len - int(tokens.shape[1])
        out = {"logits": logits}
        for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
            out[f"k_cache_{i}"] = tf.pad(k, [[0, 0], [0, 0], [0, pad], [0, 0]])
            out[f"v_cache_{i}"] = tf.pad(v, [[0, 0], [0, 0], [0, pad], [0, 0]])
        return out


class GPT2(CachedDecoder, tf_keras.Model):
    """GPT-2 decoder with a tied LM head. ``call(tokens)`` is the full causal forward (training)."""

    def __init__(self, cfg: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.gpu_friendly = False  # set before tracing the signatures (see the module docstring)
        E = cfg.n_embd
        self.wte = self.add_weight(name="wte", shape=(cfg.vocab_size, E),
                                   initializer=tf_keras.initializers.RandomNormal(stddev=0.02))
        self.wpe = self.add_weight(name="wpe", shape=(cfg.n_positions, E),
                                   initializer=tf_keras.initializers.RandomNormal(stddev=0.01))
        act = _gelu(cfg.activation_function)
        self.blocks = []
        for i in range(cfg.n_layer):
            self.blocks.append({
                "ln_1": LayerNorm(cfg.layer_norm_epsilon, name=f"h{i}_ln_1"),
                "c_attn": tf_keras.layers.Dense(3 * E, name=f"h{i}_c_attn"),
                "c_proj": tf_keras.layers.Dense(E, name=f"h{i}_attn_c_proj"),
                "ln_2": LayerNorm(cfg.layer_norm_epsilon, name=f"h{i}_ln_2"),
                "c_fc": tf_keras.layers.Dense(4 * E, activation=act, name=f"h{i}_c_fc"),
                "mlp_proj": tf_keras.layers.Dense(E, name=f"h{i}_mlp_c_proj"),
            })
            for layer in self.blocks[-1].values():
                setattr(self, layer.name, layer)  # track the layer
        self.ln_f = LayerNorm(cfg.layer_norm_epsilon, name="ln_f")

    def _heads(self, t: tf.Tensor) -> tf.Tensor:
        T = tf.shape(t)[1]
        return tf.transpose(tf.reshape(t, [-1, T, self.cfg.n_head, self.cfg.head_size]), [0, 2, 1, 3])

    def _merge(self, t: tf.Tensor) -> tf.Tensor:
        T = tf.shape(t)[2]
        return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [-1, T, self.cfg.n_embd])

    def _logits(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.ln_f(x), self.wte, transpose_b=True)

    def _attend(self, b: dict[str, Any], x: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        qkv = b["c_attn"](b["ln_1"](x))
        q, k, v = tf.split(qkv, 3, axis=-1)
        q, k, v = self._heads(q * (1.0 / float(np.sqrt(self.cfg.head_size)))), self._heads(k), self._heads(v)
        return q, k, v

    def _finish(self, b: dict[str, Any], x: tf.Tensor, ctx: tf.Tensor) -> tf.Tensor:
        x = x + b["c_proj"](self._merge(ctx))
        return x + b["mlp_proj"](b["c_fc"](b["ln_2"](x)))

    def forward(self, tokens: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        """Causal forward over ``tokens`` [B, T]: logits [B, T, V] and per-layer k, v [B, H, T, D]."""
        T = tf.shape(tokens)[1]
        with tf.name_scope("embed"):
            x = gather_rows(self.wte, tokens) if self.gpu_friendly else tf.gather(self.wte, tokens)
            x = x + self.wpe[tf.newaxis, :T, :]
        causal = tf.linalg.band_part(tf.ones([T, T]), -1, 0)
        bias = ((causal - 1.0) * MASK_PENALTY)[tf.newaxis, tf.newaxis]
        ks, vs = [], []
        for i, b in enumerate(self.blocks):
            with tf.name_scope(f"h{i}"):  # the same op names as decode's block (see decode)
                q, k, v = self._attend(b, x, bias)
                probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) + bias, axis=-1)
                x = self._finish(b, x, tf.matmul(probs, v))
            ks.append(k)
            vs.append(v)
        with tf.name_scope("head"):
            return self._logits(x), ks, vs

    def decode(self, token: tf.Tensor, pos: tf.Tensor, caches: dict[str, tf.Tensor], max_len: int) -> dict[str, tf.Tensor]:
        positions = tf.range(max_len, dtype=tf.int32)
        with tf.name_scope("embed"):
            if self.gpu_friendly:  # 1-D gathers and reshapes, no shrink-mask slices (same values)
                x = gather_rows(self.wte, token) + gather_rows(self.wpe, pos[:, tf.newaxis])  # [1, 1, E]
            else:
                x = tf.gather(self.wte, token) + tf.gather(self.wpe, pos)[:, tf.newaxis, :]  # [1, 1, E]
        at = pos if self.gpu_friendly or compared_position() else pos[0]  # [1] broadcasts against positions [T]
        hot = tf.cast(tf.equal(positions, at), tf.float32)[tf.newaxis, tf.newaxis, :, tf.newaxis]  # [1,1,T,1]
        visible = tf.cast(positions <= at, tf.float32)
        bias = ((visible - 1.0) * MASK_PENALTY)[tf.newaxis, tf.newaxis, tf.newaxis, :]  # [1,1,1,T]
        out: dict[str, tf.Tensor] = {}
        for i, b in enumerate(self.blocks):
            # Each block in a name scope, the cache write in one nested in it: every other op of the block is named
            # as the same op of prefill's block (``h0/MatMul_1``), the names calibration shares ranges by
            # (:func:`litegate.quantize.ptq.share_layer_ranges`).
            with tf.name_scope(f"h{i}"):
                q, k, v = self._attend(b, x, bias)  # [1, H, 1, D]
                with tf.name_scope("cache"):
                    K = caches[f"k_cache_{i}"] * (1.0 - hot) + k * hot
                    V = caches[f"v_cache_{i}"] * (1.0 - hot) + v * hot
                probs = tf.nn.softmax(tf.matmul(q, K, transpose_b=True) + bias, axis=-1)
                x = self._finish(b, x, tf.matmul(probs, V))
            out[f"k_cache_{i}"], out[f"v_cache_{i}"] = K, V
        with tf.name_scope("head"):
            logits = self._logits(x)
        out["logits"] = take_position(logits, 0, gpu_friendly=self.gpu_friendly)
        return out

    def build_all(self) -> None:
        self(tf.zeros([1, 2], tf.int32))


def weight_map(cfg: GPT2Config) -> Iterator[tuple[str, str, int]]:
    """(hf tensor name without prefix, keras attribute or layer name, weight index)."""
    yield "wte.weight", "wte", -1
    yield "wpe.weight", "wpe", -1
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        for hf, ours in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.c_attn", "c_attn"), ("attn.c_proj", "attn_c_proj"),
                         ("mlp.c_fc", "c_fc"), ("mlp.c_proj", "mlp_c_proj")):
            yield p + hf + ".weight", f"h{i}_{ours}", 0
            yield p + hf + ".bias", f"h{i}_{ours}", 1
    yield "ln_f.weight", "ln_f", 0
    yield "ln_f.bias", "ln_f", 1


def _var(model: GPT2, name: str, idx: int) -> tf.Variable:
    if idx < 0:
        return getattr(model, name)
    return getattr(model, name).weights[idx]


def load_gpt2(path: str | Path) -> GPT2:
    """Build :class:`GPT2` from a checkpoint folder, checking every tensor's presence and shape."""
    cfg, tensors, prefix = read_gpt2(path)
    model = GPT2(cfg)
    model.build_all()
    for hf, name, idx in weight_map(cfg):
        var = _var(model, name, idx)
        key = prefix + hf
        if key not in tensors:
            raise ModelLoadError(f"{path}: checkpoint is missing tensor {key!r}")
        arr = tensors[key]
        if tuple(arr.shape) != tuple(var.shape):
            raise ModelLoadError(f"{path}: tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(var.shape)}")
        var.assign(np.asarray(arr, np.float32))
    return model


def export_weights(model: GPT2, prefix: str = "transformer.") -> dict[str, np.ndarray]:
    out = {prefix + hf: np.ascontiguousarray(_var(model, name, idx).numpy()).astype(np.float32)
           for hf, name, idx in weight_map(model.cfg)}
    out["lm_head.weight"] = out[prefix + "wte.weight"].copy()
    return out


def signatures(model: GPT2, prefill_len: int, max_len: int, *, gpu_friendly: bool = False) -> dict[str, Any]:
    """The ``prefill`` and ``decode`` tf.functions with static shapes.

    Args:
        model: the GPT-2.
        prefill_len: tokens of the ``prefill`` signature.
        max_len: positions of the KV cache.
        gpu_friendly: trace the graphs LiteRT's GPU delegate takes whole (see the module docstring).
    """
    cfg = model.cfg
    model.gpu_friendly = gpu_friendly
    if max_len > cfg.n_positions:
        raise ModelLoadError(f"max_len {max_len} is larger than the model's n_positions {cfg.n_positions}")
    if prefill_len > max_len:
        raise ModelLoadError(f"prefill length {prefill_len} is larger than the cache length {max_len}")
    return traced_signatures(model, prefill_len, max_len, layers=cfg.n_layer, kv_heads=cfg.n_head,
                             head_size=cfg.head_size)


def traced_signatures(model: Any, prefill_len: int, max_len: int, *, layers: int, kv_heads: int,
                      head_size: int) -> dict[str, Any]:
    """``prefill(tokens [1, prefill_len])`` and ``decode(token [1, 1], pos [1], k_cache_<i>, v_cache_<i> ...)`` of a
    :class:`CachedDecoder` with a ``decode`` method, as concrete functions (GPT-2 and the Llama family alike).

    Each is traced under a name scope of its own signature's name, so an op inside a layer or a block is
    ``prefill/h0/h0_ln_1/mul`` in one and ``decode/h0/h0_ln_1/mul`` in the other (GPT-2 scopes its blocks): the same
    op, named alike up to the signature's scope, which calibration uses to give both one range
    (:func:`litegate.quantize.ptq.share_layer_ranges`)."""
    _TRACED_WITH[model] = {"prefill_len": prefill_len, "max_len": max_len, "layers": layers, "kv_heads": kv_heads,
                           "head_size": head_size}  # integer_signatures traces again with these
    cache_spec = {f"{kind}_cache_{i}": tf.TensorSpec([1, kv_heads, max_len, head_size], tf.float32)
                  for i in range(layers) for kind in ("k", "v")}

    @tf.function
    def prefill(**kw: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.name_scope("prefill"):
            return model.prefill(kw["tokens"], max_len)

    @tf.function
    def decode(**kw: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.name_scope("decode"):
            return model.decode(kw["token"], kw["pos"], {k: kw[k] for k in cache_spec}, max_len)

    decode_cf = decode.get_concrete_function(token=tf.TensorSpec([1, 1], tf.int32, name="token"),
                                             pos=tf.TensorSpec([1], tf.int32, name="pos"),
                                             **{k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in cache_spec.items()})
    prefill_cf = prefill.get_concrete_function(tokens=tf.TensorSpec([1, prefill_len], tf.int32, name="tokens"))
    return {"prefill": prefill_cf, "decode": decode_cf}

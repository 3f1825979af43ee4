"""An independent numpy float64 forward pass of a Hugging Face Llama checkpoint (the test oracle).

Written from the description of transformers' ``modeling_llama`` (``LlamaRMSNorm``, ``LlamaRotaryEmbedding`` with
the ``default``, ``linear`` and ``llama3`` rope types, ``apply_rotary_pos_emb`` / ``rotate_half``, ``repeat_kv``,
``eager_attention_forward``, ``LlamaMLP``), reading the raw checkpoint tensors and config dict; it shares no code
with litegate.
"""

from __future__ import annotations

import math

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _inv_freq(cfg: dict, dim: int) -> np.ndarray:
    base = float(cfg.get("rope_theta", 10000.0))
    inv = np.array([1.0 / base ** (i / dim) for i in range(0, dim, 2)], dtype=np.float64)
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    factor = float(rs["factor"])
    if kind == "linear":
        return inv / factor
    assert kind == "llama3", kind
    lo, hi = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old = float(rs.get("original_max_position_embeddings", 8192))
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(f)
        elif wavelen > old / lo:
            out.append(f / factor)
        else:
            s = (old / wavelen - lo) / (hi - lo)
            out.append((1 - s) * f / factor + s * f)
    return np.array(out)


def _linear(t: dict, name: str, x: np.ndarray) -> np.ndarray:
    y = x @ t[name + ".weight"].T
    if name + ".bias" in t:
        y = y + t[name + ".bias"]
    return y


def forward(tensors: dict, cfg: dict, ids) -> np.ndarray:
    """Logits ``[T, V]`` of ``LlamaForCausalLM`` for the token ids ``[T]``."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    ids = np.asarray(ids)
    T = len(ids)
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    d = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    angles = np.arange(T, dtype=np.float64)[:, None] * _inv_freq(cfg, d)[None, :]  # [T, d/2]
    cos = np.cos(np.concatenate([angles, angles], -1))
    sin = np.sin(np.concatenate([angles, angles], -1))

    def rope(x):  # x [heads, T, d]
        half = d // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    x = t["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], eps)
        q = _linear(t, p + "self_attn.q_proj", h).reshape(T, n_heads, d).transpose(1, 0, 2)
        k = _linear(t, p + "self_attn.k_proj", h).reshape(T, n_kv, d).transpose(1, 0, 2)
        v = _linear(t, p + "self_attn.v_proj", h).reshape(T, n_kv, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k = np.repeat(k, n_heads // n_kv, axis=0)  # repeat_kv: kv head j serves query heads j*n_rep ..
        v = np.repeat(v, n_heads // n_kv, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(T, n_heads * d)
        x = x + _linear(t, p + "self_attn.o_proj", ctx)
        h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        gate = _linear(t, p + "mlp.gate_proj", h)
        x = x + _linear(t, p + "mlp.down_proj", gate / (1 + np.exp(-gate)) * _linear(t, p + "mlp.up_proj", h))
    x = _rms(x, t["model.norm.weight"], eps)
    head = t["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else t["lm_head.weight"]
    return x @ head.T

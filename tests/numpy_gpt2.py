"""An independent numpy forward pass of a Hugging Face GPT-2 checkpoint (the test oracle)."""

from __future__ import annotations

import math

import numpy as np


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def forward(tensors: dict, cfg: dict, ids: np.ndarray) -> np.ndarray:
    """ids [T] -> logits [T, V] (tied LM head)."""
    p = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    E, H = cfg["n_embd"], cfg["n_head"]
    d = E // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    T = len(ids)
    x = t[p + "wte.weight"][ids] + t[p + "wpe.weight"][:T]
    causal = np.tril(np.ones((T, T))) > 0
    for i in range(cfg["n_layer"]):
        L = f"{p}h.{i}."
        h = _ln(x, t[L + "ln_1.weight"], t[L + "ln_1.bias"], eps)
        qkv = h @ t[L + "attn.c_attn.weight"] + t[L + "attn.c_attn.bias"]
        q, k, v = (z.reshape(T, H, d).transpose(1, 0, 2) for z in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.where(causal[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(T, E)
        x = x + a @ t[L + "attn.c_proj.weight"] + t[L + "attn.c_proj.bias"]
        h = _ln(x, t[L + "ln_2.weight"], t[L + "ln_2.bias"], eps)
        f = _gelu_new(h @ t[L + "mlp.c_fc.weight"] + t[L + "mlp.c_fc.bias"])
        x = x + f @ t[L + "mlp.c_proj.weight"] + t[L + "mlp.c_proj.bias"]
    x = _ln(x, t[p + "ln_f.weight"], t[p + "ln_f.bias"], eps)
    return x @ t[p + "wte.weight"].T

"""An independent numpy forward pass of a Hugging Face BERT checkpoint (the test oracle).

Written from the BERT paper / HF modeling code, sharing nothing with litegate's TF graph.
"""

from __future__ import annotations

import math

import numpy as np


def _erf(x):
    """Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: exact enough for a 1e-4 oracle, and vectorized."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def forward(tensors: dict, cfg: dict, ids: np.ndarray, mask: np.ndarray, head: str = "classification") -> np.ndarray:
    """ids, mask: [B, S] ints. Returns logits [B, C], or mean-pooled L2-normalised embeddings."""
    p = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d = H // nh
    eps = cfg.get("layer_norm_eps", 1e-12)
    B, S = ids.shape
    x = t[p + "embeddings.word_embeddings.weight"][ids] + t[p + "embeddings.position_embeddings.weight"][:S][None]
    x = x + t[p + "embeddings.token_type_embeddings.weight"][0][None, None]
    x = _ln(x, t[p + "embeddings.LayerNorm.weight"], t[p + "embeddings.LayerNorm.bias"], eps)
    neg = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}encoder.layer.{i}."

        def lin(z, name, L=L):
            return z @ t[L + name + ".weight"].T + t[L + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{n}").reshape(B, S, nh, d).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + neg
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, S, H)
        x = _ln(x + lin(a, "attention.output.dense"), t[L + "attention.output.LayerNorm.weight"],
                t[L + "attention.output.LayerNorm.bias"], eps)
        f = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
        x = _ln(x + f, t[L + "output.LayerNorm.weight"], t[L + "output.LayerNorm.bias"], eps)
    if head == "mean":
        m = mask[:, :, None].astype(np.float64)
        e = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)
    pooled = np.tanh(x[:, 0] @ t[p + "pooler.dense.weight"].T + t[p + "pooler.dense.bias"])
    return pooled @ t["classifier.weight"].T + t["classifier.bias"]

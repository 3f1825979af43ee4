"""Independent numpy float64 forward passes of Hugging Face BERT-family encoders (the test oracle).

Written from the Hugging Face modeling code of DistilBERT, RoBERTa / XLM-R, ELECTRA, ALBERT and MobileBERT, reading their
tensor names directly; nothing is shared with litegate's TF graph. ``forward`` picks the family from
``cfg["model_type"]`` (config.json as a dict) and returns the sequence-classification logits [B, C] or, for
``head="mean"``, the mask-aware mean of the last hidden states, L2-normalised [B, H].
"""

from __future__ import annotations

import math

import numpy as np
from numpy_bert import _erf


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


ACTS = {
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


class _T:
    """float64 tensors by HF name, with ``lin`` (torch Linear: x @ W.T + b) and ``norm`` (LayerNorm)."""

    def __init__(self, tensors, prefix_of_encoder):
        self.t = {k: np.asarray(v, np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}
        self.p = prefix_of_encoder if any(k.startswith(prefix_of_encoder) for k in self.t) else ""

    def __getitem__(self, name):
        return self.t[name]

    def lin(self, x, name):
        return x @ self.t[name + ".weight"].T + self.t[name + ".bias"]

    def norm(self, x, name, eps):
        return _ln(x, self.t[name + ".weight"], self.t[name + ".bias"], eps)


def _attention(t, x, mask, heads, q, k, v):
    """Multi-head self-attention of x [B, S, H] with the projections named q, k, v (before the output dense)."""
    B, S, H = x.shape
    d = H // heads

    def split(z):
        return z.reshape(B, S, heads, d).transpose(0, 2, 1, 3)

    s = split(t.lin(x, q)) @ split(t.lin(x, k)).transpose(0, 1, 3, 2) / math.sqrt(d)
    s = s + np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    s = np.exp(s - s.max(-1, keepdims=True))
    ctx = (s / s.sum(-1, keepdims=True)) @ split(t.lin(x, v))
    return ctx.transpose(0, 2, 1, 3).reshape(B, S, H)


def _mean(x, mask):
    m = mask[:, :, None].astype(np.float64)
    e = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def _bert_layer(t, x, mask, cfg, L, act):
    """BertLayer / RobertaLayer / ElectraLayer: post-norm attention and feed-forward."""
    eps = cfg.get("layer_norm_eps", 1e-12)
    a = _attention(t, x, mask, cfg["num_attention_heads"], *(L + f"attention.self.{n}" for n in ("query", "key", "value")))
    x = t.norm(x + t.lin(a, L + "attention.output.dense"), L + "attention.output.LayerNorm", eps)
    f = t.lin(act(t.lin(x, L + "intermediate.dense")), L + "output.dense")
    return t.norm(x + f, L + "output.LayerNorm", eps)


def distilbert(tensors, cfg, ids, mask, head):
    t = _T(tensors, "distilbert.")
    p, S = t.p, ids.shape[1]
    x = t[p + "embeddings.word_embeddings.weight"][ids] + t[p + "embeddings.position_embeddings.weight"][:S][None]
    x = t.norm(x, p + "embeddings.LayerNorm", 1e-12)
    act = ACTS[cfg.get("activation", "gelu")]
    for i in range(cfg["n_layers"]):
        L = f"{p}transformer.layer.{i}."
        a = _attention(t, x, mask, cfg["n_heads"], L + "attention.q_lin", L + "attention.k_lin", L + "attention.v_lin")
        x = t.norm(t.lin(a, L + "attention.out_lin") + x, L + "sa_layer_norm", 1e-12)
        x = t.norm(t.lin(act(t.lin(x, L + "ffn.lin1")), L + "ffn.lin2") + x, L + "output_layer_norm", 1e-12)
    if head == "mean":
        return _mean(x, mask)
    return t.lin(np.maximum(t.lin(x[:, 0], "pre_classifier"), 0.0), "classifier")


def roberta(tensors, cfg, ids, mask, head):
    """RoBERTa and XLM-R: position ids from the input ids as HF's create_position_ids_from_input_ids does."""
    t = _T(tensors, "roberta.")
    p, pad = t.p, cfg.get("pad_token_id", 1)
    real = (ids != pad).astype(np.int64)
    positions = np.cumsum(real, axis=1) * real + pad
    x = t[p + "embeddings.word_embeddings.weight"][ids] + t[p + "embeddings.position_embeddings.weight"][positions]
    x = x + t[p + "embeddings.token_type_embeddings.weight"][0]
    x = t.norm(x, p + "embeddings.LayerNorm", cfg.get("layer_norm_eps", 1e-12))
    for i in range(cfg["num_hidden_layers"]):
        x = _bert_layer(t, x, mask, cfg, f"{p}encoder.layer.{i}.", ACTS[cfg.get("hidden_act", "gelu")])
    if head == "mean":
        return _mean(x, mask)
    return t.lin(np.tanh(t.lin(x[:, 0], "classifier.dense")), "classifier.out_proj")


def electra(tensors, cfg, ids, mask, head):
    t = _T(tensors, "electra.")
    p, S = t.p, ids.shape[1]
    x = t[p + "embeddings.word_embeddings.weight"][ids] + t[p + "embeddings.position_embeddings.weight"][:S][None]
    x = x + t[p + "embeddings.token_type_embeddings.weight"][0]
    x = t.norm(x, p + "embeddings.LayerNorm", cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("embedding_size", 128) != cfg["hidden_size"]:
        x = t.lin(x, p + "embeddings_project")
    for i in range(cfg["num_hidden_layers"]):
        x = _bert_layer(t, x, mask, cfg, f"{p}encoder.layer.{i}.", ACTS[cfg.get("hidden_act", "gelu")])
    if head == "mean":
        return _mean(x, mask)
    return t.lin(ACTS["gelu"](t.lin(x[:, 0], "classifier.dense")), "classifier.out_proj")


def albert(tensors, cfg, ids, mask, head):
    """ALBERT with one layer group of one layer, applied num_hidden_layers times."""
    t = _T(tensors, "albert.")
    p, S, eps = t.p, ids.shape[1], cfg.get("layer_norm_eps", 1e-12)
    x = t[p + "embeddings.word_embeddings.weight"][ids] + t[p + "embeddings.position_embeddings.weight"][:S][None]
    x = x + t[p + "embeddings.token_type_embeddings.weight"][0]
    x = t.lin(t.norm(x, p + "embeddings.LayerNorm", eps), p + "encoder.embedding_hidden_mapping_in")
    L = p + "encoder.albert_layer_groups.0.albert_layers.0."
    act = ACTS[cfg.get("hidden_act", "gelu_new")]
    for _ in range(cfg["num_hidden_layers"]):
        a = _attention(t, x, mask, cfg["num_attention_heads"], *(L + f"attention.{n}" for n in ("query", "key", "value")))
        x = t.norm(x + t.lin(a, L + "attention.dense"), L + "attention.LayerNorm", eps)
        x = t.norm(t.lin(act(t.lin(x, L + "ffn")), L + "ffn_output") + x, L + "full_layer_layer_norm", eps)
    if head == "mean":
        return _mean(x, mask)
    return t.lin(np.tanh(t.lin(x[:, 0], p + "pooler")), "classifier")


def mobilebert(tensors, cfg, ids, mask, head):
    """MobileBertModel (+ MobileBertForSequenceClassification's classifier) as transformers' modeling_mobilebert
    runs it, with MobileBertConfig's defaults for the keys config.json leaves out."""
    t = _T(tensors, "mobilebert.")
    p, S = t.p, ids.shape[1]
    eps = cfg.get("layer_norm_eps", 1e-12)
    act = ACTS[cfg.get("hidden_act", "relu")]
    H, E = cfg["hidden_size"], cfg.get("embedding_size", 128)
    bottleneck = cfg.get("use_bottleneck", True)
    no_norm = cfg.get("normalization_type", "no_norm") == "no_norm"

    def norm(x, name, e=eps):  # NoNorm ignores the epsilon; nn.LayerNorm built without one uses 1e-5
        if no_norm:
            return x * t[name + ".weight"] + t[name + ".bias"]
        return t.norm(x, name, e)

    emb = t[p + "embeddings.word_embeddings.weight"][ids]
    if cfg.get("trigram_input", True):
        zero = np.zeros_like(emb[:, :1])
        emb = np.concatenate([np.concatenate([emb[:, 1:], zero], 1), emb, np.concatenate([zero, emb[:, :-1]], 1)], -1)
    if cfg.get("trigram_input", True) or E != H:
        emb = t.lin(emb, p + "embeddings.embedding_transformation")
    x = emb + t[p + "embeddings.position_embeddings.weight"][:S][None] + t[p + "embeddings.token_type_embeddings.weight"][0]
    x = norm(x, p + "embeddings.LayerNorm", 1e-5)
    heads = cfg["num_attention_heads"]
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}encoder.layer.{i}."
        if bottleneck:
            layer_input = norm(t.lin(x, L + "bottleneck.input.dense"), L + "bottleneck.input.LayerNorm")
            if cfg.get("use_bottleneck_attention", False):
                q_in = k_in = v_in = layer_input
            elif cfg.get("key_query_shared_bottleneck", True):
                q_in = k_in = norm(t.lin(x, L + "bottleneck.attention.dense"), L + "bottleneck.attention.LayerNorm")
                v_in = x
            else:
                q_in = k_in = v_in = x
        else:
            q_in = k_in = v_in = layer_input = x
        B, _, _ = q_in.shape
        q, k, v = (t.lin(z, L + f"attention.self.{n}") for z, n in ((q_in, "query"), (k_in, "key"), (v_in, "value")))
        d = q.shape[-1] // heads

        def split(z, d=d, B=B):
            return z.reshape(B, S, heads, d).transpose(0, 2, 1, 3)

        s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d) + np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ split(v)).transpose(0, 2, 1, 3).reshape(B, S, heads * d)
        a = norm(t.lin(ctx, L + "attention.output.dense") + layer_input, L + "attention.output.LayerNorm")
        for j in range(cfg.get("num_feedforward_networks", 4) - 1):
            f = t.lin(act(t.lin(a, L + f"ffn.{j}.intermediate.dense")), L + f"ffn.{j}.output.dense")
            a = norm(f + a, L + f"ffn.{j}.output.LayerNorm")
        out = norm(t.lin(act(t.lin(a, L + "intermediate.dense")), L + "output.dense") + a, L + "output.LayerNorm", 1e-5)
        if bottleneck:
            out = norm(t.lin(out, L + "output.bottleneck.dense") + x, L + "output.bottleneck.LayerNorm")
        x = out
    if head == "mean":
        return _mean(x, mask)
    pooled = x[:, 0]
    if cfg.get("classifier_activation", True):
        pooled = np.tanh(t.lin(pooled, p + "pooler.dense"))
    return t.lin(pooled, "classifier")


FORWARDS = {"distilbert": distilbert, "roberta": roberta, "xlm-roberta": roberta, "electra": electra, "albert": albert,
            "mobilebert": mobilebert}


def forward(tensors: dict, cfg: dict, ids: np.ndarray, mask: np.ndarray, head: str = "classification") -> np.ndarray:
    """ids, mask: [B, S] ints (right padding). Logits [B, C], or for ``head="mean"`` L2-normalised mean embeddings."""
    return FORWARDS[cfg["model_type"]](tensors, cfg, ids, mask, head)

"""Task metrics per variant, and the child-process jobs that produce the outputs they score.

* text-classification: accuracy and macro F1 on labelled text; fidelity = agreement of the
  predicted class with the reference variant.
* sentence-embedding: label-free fidelity to the reference variant: mean and min cosine of the
  embeddings, and nearest-neighbour agreement (does each sentence keep its nearest neighbour).
* text-generation: perplexity of next-token prediction over held-out windows, and top-1
  next-token agreement with the reference variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import save_npz
from litegate.backends.runtime import Runner
from litegate.tasks import agreement, classification_metrics, cosine


def embedding_metrics(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Fidelity of embeddings [N, D] to reference embeddings."""
    cos = cosine(emb, ref)
    out = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if len(emb) > 2:
        def nearest(e: np.ndarray) -> np.ndarray:
            n = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            sim = n @ n.T
            np.fill_diagonal(sim, -np.inf)
            return np.argmax(sim, axis=1)

        out["nn_agreement"] = float(np.mean(nearest(emb) == nearest(ref)) * 100.0)
    return out


def lm_metrics(logits: np.ndarray, windows: np.ndarray, ref_logits: np.ndarray | None = None) -> dict[str, float]:
    """Perplexity of next-token prediction, and top-1 agreement with reference logits.

    logits: [N, P, V] for token windows [N, P]; position t predicts token t + 1.
    """
    z = logits[:, :-1, :].astype(np.float64)
    target = windows[:, 1:]
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    out = {"perplexity": float(math.exp(nll.mean())), "tokens": int(nll.size),
           "top1_accuracy": float(np.mean(np.argmax(z, -1) == target) * 100.0)}
    if ref_logits is not None:
        out["top1_agreement"] = float(np.mean(np.argmax(logits, -1) == np.argmax(ref_logits, -1)) * 100.0)
    return out


def classification_scores(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> dict[str, float]:
    m = classification_metrics(logits, labels)
    if ref is not None:
        m["agreement_with_reference"] = agreement(logits, ref)
        m["max_abs_logit_diff"] = float(np.max(np.abs(logits - ref)))
    return m


def lm_eval_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: logits of the ``prefill`` signature for every window (zero initial state)."""
    with np.load(payload["windows_npz"]) as data:
        windows = data["tokens"]
    runner = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]), signature="prefill")
    zeros = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.inputs.items() if k != "tokens"}
    out = [runner({"tokens": w[None], **zeros})["logits"][0] for w in windows]
    save_npz(payload["out_npz"], {"logits": np.stack(out)})
    return {"n": len(windows)}


def generator_bench_inputs(path: Path, tokens: list[int], n: int = 16) -> tuple[str, dict[str, np.ndarray]]:
    """The per-token signature of a generator (``decode`` or ``step``) and ``n`` realistic feeds for it."""
    sigs = Runner(path, backend="cpu").interpreter.get_signature_list()
    name = "decode" if "decode" in sigs else "step"
    runner = Runner(path, backend="cpu", signature=name)
    feeds: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        for k, d in runner.inputs.items():
            shape = tuple(int(s) for s in d["shape"])
            if k == "token":
                v = np.array([[tokens[i % len(tokens)]]], np.int32)
            elif k == "pos":
                v = np.array([min(i + 8, (runner_cache_len(runner) or 1) - 1)], np.int32)
            else:  # recurrent state or KV cache: a realistic scale, not zeros (kernels skip no work either way)
                v = (np.random.default_rng(i).standard_normal(shape) * 0.5).astype(d["dtype"])
            feeds.setdefault(k, []).append(v[0] if v.ndim and v.shape[0] == 1 else v)
    return name, {k: np.stack(v) for k, v in feeds.items()}


def runner_cache_len(runner: Any) -> int | None:
    for k, d in runner.inputs.items():
        if "_cache_" in k:
            return int(d["shape"][2])
    return None


def summarize_task(task: str, outputs: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray] | None,
                   labels: np.ndarray | None, windows: np.ndarray | None) -> tuple[str, float, dict[str, float]]:
    """(metric name, value, all metrics) for one variant's outputs."""
    key = "logits" if "logits" in outputs else next(iter(outputs))
    out = outputs[key]
    r = ref[key] if ref is not None and key in ref else None
    if task == "text-classification":
        assert labels is not None
        m = classification_scores(out, labels, r)
        return "accuracy", m["accuracy"], m
    if task == "sentence-embedding":
        m = embedding_metrics(out, r if r is not None else out)
        return "cosine_to_reference", m["cosine_mean"], m
    assert windows is not None
    m = lm_metrics(out, windows, r)
    return "perplexity", m["perplexity"], m

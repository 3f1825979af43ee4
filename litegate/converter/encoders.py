"""The BERT-family encoders' one entry: the builder and the weight map of a checkpoint's family, and its weights.

:func:`litegate.converter.bert.build_bert` builds BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA and ALBERT;
:func:`litegate.converter.mobilebert.build_mobilebert` builds MobileBERT, from the layers of :mod:`~litegate.converter.bert`.
This module picks one by the checkpoint's ``model_type``, so neither builder needs to know the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tf_keras

from litegate.converter import bert, mobilebert
from litegate.converter.hf import BERT_FAMILIES, BertConfig, Checkpoint, prefixed


def build_encoder(cfg: BertConfig, *, seq_len: int | None, head: str = "classification", batch_size: int | None = None,
                  dropout: float = 0.0, gpu_friendly: bool = False) -> tf_keras.Model:
    """The functional tf_keras encoder of ``cfg``'s family; arguments and outputs as :func:`~litegate.converter.bert.build_bert`'s."""
    build = mobilebert.build_mobilebert if cfg.model_type == "mobilebert" else bert.build_bert
    return build(cfg, seq_len=seq_len, head=head, batch_size=batch_size, dropout=dropout, gpu_friendly=gpu_friendly)


def weight_map(cfg: BertConfig, head: str) -> Iterator[tuple[str, str, int, bool]]:
    """(HF tensor name without prefix, keras layer name, weight index, transpose) for every weight of ``cfg``'s family."""
    return mobilebert.weight_map(cfg, head) if cfg.model_type == "mobilebert" else bert.weight_map(cfg, head)


def load_weights(model: tf_keras.Model, ckpt: Checkpoint, head: str) -> None:
    """Copy checkpoint tensors into ``model``, checking presence and shape of each."""
    for hf_name, layer, idx, transpose in weight_map(ckpt.config, head):
        var = model.get_layer(layer).weights[idx]
        shape = tuple(int(d) for d in var.shape)
        expected = tuple(reversed(shape)) if transpose else shape
        arr = ckpt.tensor(hf_name, expected)
        var.assign(arr.T if transpose else arr)


def export_weights(model: tf_keras.Model, cfg: BertConfig, head: str, prefix: str | None = None) -> dict[str, np.ndarray]:
    """The model's weights as Hugging Face-named numpy arrays (inverse of :func:`load_weights`); ``prefix``
    defaults to the family's (``bert.``, ``roberta.``, ...)."""
    prefix = BERT_FAMILIES[cfg.model_type][0] if prefix is None else prefix
    out = {}
    for hf_name, layer, idx, transpose in weight_map(cfg, head):
        arr = model.get_layer(layer).weights[idx].numpy()
        out[prefixed(hf_name, prefix)] = np.ascontiguousarray(arr.T if transpose else arr).astype(np.float32)
    return out

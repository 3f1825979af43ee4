"""The real pretrained all-MiniLM-L6-v2 (``make models``) against the numpy BERT oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, run_cli
from numpy_bert import forward
from safetensors.numpy import load_file

from litegate.backends.runtime import Runner
from litegate.tasks import TextEncoder, cosine, read_labelled_tsv

MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(), reason="run `make models` to fetch all-MiniLM-L6-v2"),
    pytest.mark.skipif(not (SHARED_DATA / "sst2" / "dev.tsv").is_file(), reason="../shared/data/sst2 not present"),
]


def test_minilm_fp32_embeddings_match_numpy_reference_on_200_sst2_sentences(tmp_path):
    """No flags: config.json's BertModel picks the builder, the embeddings task and mean pooling (issue #19)."""
    out = tmp_path / "minilm.tflite"
    r = run_cli("convert", str(MINILM), "--seq-len", "128", "-o", str(out))
    assert r.returncode == 0, r.stderr
    sents = read_labelled_tsv(SHARED_DATA / "sst2" / "dev.tsv").sentences[:200]
    x = TextEncoder(MINILM / "tokenizer.json", 128).encode(sents)
    ours = Runner(out, threads=2).run_batch(x)["embedding"]
    tensors = load_file(str(MINILM / "model.safetensors"))
    cfg = json.loads((MINILM / "config.json").read_text())
    ref = np.concatenate([forward(tensors, cfg, x["input_ids"][i : i + 50], x["attention_mask"][i : i + 50], head="mean")
                          for i in range(0, 200, 50)])
    cos = cosine(ours, ref)
    assert cos.min() >= 0.9999, (cos.min(), cos.mean())
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)

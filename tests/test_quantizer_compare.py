"""``make quantizer-compare``'s parts on a tiny encoder: litert-quantizer's job really quantizes, and the verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint

from litegate.artifacts import save_npz
from litegate.tasks import TextEncoder, cosine, read_texts
from tools import quantizer_compare as qc

pytestmark = pytest.mark.slow


def test_litert_quantizer_job_quantizes_a_tiny_encoder_with_calibration(tmp_path):
    """static_wi8_ai16 on litegate's fp32 .tflite: 16-bit activations, 8-bit weights, embeddings close to fp32."""
    pytest.importorskip("litert_quantizer", reason="litert-quantizer is in the dev extra")
    from ai_edge_litert.interpreter import Interpreter

    from litegate.api import convert_model
    from litegate.backends.runtime import Runner
    from litegate.types import ModelSource

    ck = make_checkpoint(tmp_path / "enc", seed=5, prefix="", with_head=False)
    source = ModelSource(kind="hf-bert", path=str(ck), task="sentence-embedding", seq_len=24, options={"head": "mean"})
    fp32 = tmp_path / "fp32.tflite"
    convert_model(source, fp32)
    enc = TextEncoder(ck / "tokenizer.json", 24).encode(read_texts(DEMO / "eval.tsv", limit=40))
    calib = tmp_path / "calib.npz"
    save_npz(calib, {k: enc[k] for k in ("input_ids", "attention_mask")})
    out = tmp_path / "a16.tflite"
    r = qc.litert_quantize_job({"src": str(fp32), "recipe": "static_wi8_ai16", "out": str(out),
                                "calibration_npz": str(calib)})
    assert r["bytes"] == out.stat().st_size < fp32.stat().st_size
    types = {d["dtype"] for d in Interpreter(model_path=str(out)).get_tensor_details()}
    assert np.int16 in types and np.int8 in types
    x = {k: enc[k] for k in ("input_ids", "attention_mask")}
    cos = cosine(Runner(out).run_batch(x)["embedding"], Runner(fp32).run_batch(x)["embedding"])
    assert cos.mean() > 0.95


def test_verdicts_compare_each_recipe_with_its_counterpart_per_column():
    rows = {"litegate int16x8": {"cosine_mean": 0.998, "cosine_min": 0.99},
            "litert-quantizer static_wi8_ai16": {"cosine_mean": 0.997, "cosine_min": 0.995},
            "litegate int8": {"cosine_mean": 0.9, "cosine_min": 0.8}}
    assert qc.verdicts(rows) == {"int16x8 vs static_wi8_ai16": {"cosine_mean": True, "cosine_min": False}}
    lines = qc.table({"litegate int8": {"cosine_mean": 0.9, "cosine_min": 0.8, "mb": 23.0,
                                        "latency_vs_dynamic-int8_x1": 1.5, "latency_vs_dynamic-int8_x2": None}})
    assert lines[2] == "| litegate int8 | 0.9000 | 0.8000 | 23.00 | 1.500 | n/a |"

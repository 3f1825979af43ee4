"""``tools/export_onnx_gpt2.py``: litegate's GPT-2 prefill exported to ONNX Runtime and checked against TF.

On the committed character-level GPT-2 (``examples/textgen/char-gpt2``) with real text windows of
``examples/demo/calibration.txt``. ``slow``: the script computes its reference with litegate's own
TensorFlow GPT-2 in a child process (as the TF-reference test of ``tools/export_onnx.py`` is).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DEMO, ROOT

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

MODEL = ROOT / "examples" / "textgen" / "char-gpt2"
VARIANTS = ("onnxruntime fp32", "onnxruntime optimized fp32", "onnxruntime optimized int8",
            "onnxruntime optimized int8 per-channel")  # the JSON contract, spelled out
SEQ_LEN = 64
WINDOWS = 6


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.export_onnx_gpt2", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Six real text windows of 64 tokens, and one timed run of the script against litegate's TF GPT-2."""
    from litegate.tasks import generator_windows

    root = tmp_path_factory.mktemp("onnx-gpt2")
    texts = (DEMO / "calibration.txt").read_text().splitlines()
    windows = generator_windows(MODEL / "tokenizer.json", texts, SEQ_LEN, WINDOWS)
    assert windows["tokens"].shape == (WINDOWS, SEQ_LEN)
    np.savez(root / "inputs.npz", tokens=windows["tokens"])
    out = root / "out"
    r = _run("--model", str(MODEL), "--out", str(out), "--inputs", str(root / "inputs.npz"), "--json",
             "--runs", "4", "--block", "2", "--warmup", "1", "--threads", "1,2")
    return {"root": root, "out": out, "inputs": root / "inputs.npz", "proc": r}


@pytest.mark.slow
def test_gpt2_export_matches_litegates_tensorflow_prefill(gpt2_export):
    r = gpt2_export["proc"]
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout[-2000:]  # progress goes to stderr; stdout is the one JSON line
    result = json.loads(lines[-1])
    assert result["max abs onnxruntime fp32 vs tf"] < 1e-4
    for variant in VARIANTS:
        for t in (1, 2):
            ms = result[f"{variant} x{t}"]
            assert isinstance(ms, float) and math.isfinite(ms) and ms > 0, (variant, t, ms)
        assert -1.0 <= result[f"cosine min {variant}"] <= result[f"cosine {variant}"] <= 1.0 + 1e-9
        assert 0.0 <= result[f"top1 {variant}"] <= 1.0
    assert result["top1 onnxruntime fp32"] == 1.0 and result["cosine min onnxruntime fp32"] > 0.99999
    assert result["top1 onnxruntime optimized fp32"] == 1.0
    assert result["top1 onnxruntime optimized int8"] >= 0.9
    # ONNX Runtime's own per-channel int8 of this graph, a peer's figure: 0.862 with onnxruntime 1.31.1 and 1.32.0
    # and onnx 1.23.2 (December 2026; the same at litegate's previous commit, so the drift is the peers'), above
    # 0.9 with the wheels of earlier landings. A sanity bound, not a quality claim about litegate.
    assert result["top1 onnxruntime optimized int8 per-channel"] >= 0.8

    out: Path = gpt2_export["out"]
    details = json.loads((out / "export.json").read_text())
    assert details["seq_len"] == SEQ_LEN and details["positions"] == WINDOWS * SEQ_LEN
    assert "gpt2" in details["optimizer"]["fused"]  # whatever fused is recorded, fused or not
    assert len(details["variants"]["onnxruntime fp32"]["samples_ms"]["2"]) >= 4
    for name in ("model_fp32.onnx", "model_opt_fp32.onnx", "model_opt_int8.onnx", "model_opt_int8_per_channel.onnx"):
        assert (out / name).is_file()
    with np.load(out / "reference_tf.npz") as data:
        assert data["logits"].shape == (WINDOWS, SEQ_LEN, 66)


@pytest.mark.slow
def test_gpt2_export_fails_on_a_reference_it_does_not_match(gpt2_export):
    """The saved TF logits pass as --reference; shifted by 1e-3 they fail the 1e-4 check (no TF run)."""
    out, root = gpt2_export["out"], gpt2_export["root"]
    assert gpt2_export["proc"].returncode == 0, gpt2_export["proc"].stderr[-2000:]
    r = _run("--model", str(MODEL), "--out", str(root / "again"), "--inputs", str(gpt2_export["inputs"]),
             "--reference", str(out / "reference_tf.npz"), "--runs", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnxruntime optimized int8 per-channel" in r.stdout and "top1" in r.stdout
    with np.load(out / "reference_tf.npz") as data:
        np.savez(root / "bad.npz", logits=data["logits"] + 1e-3)
    r = _run("--model", str(MODEL), "--out", str(root / "bad"), "--inputs", str(gpt2_export["inputs"]),
             "--reference", str(root / "bad.npz"), "--runs", "0", "--json")
    assert r.returncode != 0 and "does not match the TensorFlow model" in r.stderr

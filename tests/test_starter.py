"""`litegate init MODEL`: a starter release.toml from the model's files, that loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO, ROOT, run_cli

from litegate.config import load
from litegate.errors import ModelLoadError
from litegate.starter import detect, write_starter
from litegate.types import Head, SourceKind, Task


def test_detects_the_kind_and_task_from_the_files(tmp_path):
    demo = detect(DEMO / "model")
    assert (demo["kind"], demo["task"], demo["head"]) == (SourceKind.HF_BERT, Task.TEXT_CLASSIFICATION,
                                                          Head.CLASSIFICATION)
    gpt = detect(ROOT / "examples" / "textgen" / "char-gpt2")
    assert (gpt["kind"], gpt["task"]) == (SourceKind.HF_GPT2, Task.TEXT_GENERATION)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                     "max_position_embeddings": 512}))
    enc = detect(encoder)
    assert (enc["task"], enc["head"], enc["seq_len"]) == (Task.SENTENCE_EMBEDDING, Head.MEAN, 128)
    (tmp_path / "m.tflite").write_bytes(b"x")
    assert detect(tmp_path / "m.tflite")["kind"] is SourceKind.TFLITE
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match=r"model_type 't5' is not supported \(supported: bert, .*gpt2, llama"):
        detect(t5)
    with pytest.raises(ModelLoadError, match="not a Hugging Face checkpoint folder"):
        detect(tmp_path / "missing")


@pytest.mark.parametrize("model", [DEMO / "model", ROOT / "examples" / "textgen" / "char-gpt2"])
def test_the_starter_config_loads_and_is_never_overwritten_silently(tmp_path, model):
    out = write_starter(model, tmp_path / "release.toml")
    cfg = load(out)
    assert Path(cfg.model.source.path) == model.resolve() and cfg.reference == "fp32" and cfg.ship
    r = run_cli("init", str(model), "-o", str(out))
    assert r.returncode == 12 and "already exists (use --force to replace it)" in r.stderr
    assert run_cli("init", str(model), "-o", str(out), "--force").returncode == 0


@pytest.mark.slow
def test_init_then_run_gates_the_demo_model(tmp_path):
    """A new user's first two commands: `litegate init` on their model, then `litegate run` with their data."""
    cfg = tmp_path / "release.toml"
    r = run_cli("init", str(DEMO / "model"), "-o", str(cfg))
    assert r.returncode == 0 and "hf-bert, text-classification" in r.stdout, r.stderr
    cfg.write_text(cfg.read_text().replace("threads = [1, 4]", "threads = [1]\nmin_runs = 5\nmin_seconds = 0.0"
                                           "\nwarmup_runs = 2\npeak_probe = false"))
    r = run_cli("run", str(cfg), "--data", str(DEMO / "eval.tsv"))
    assert r.returncode in (0, 1), r.stderr
    rep = json.loads((tmp_path / "reports" / "release" / "report.json").read_text())
    assert [v["name"] for v in rep["variants"]] == ["fp32", "fp16", "dynamic-int8"]
    assert rep["run"]["gate"]["judged_variants"] == ["dynamic-int8"]
    assert all(v["accuracy"][0]["status"] == "ok" for v in rep["variants"])

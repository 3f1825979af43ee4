"""Every model source converts, matches its TensorFlow outputs, and refuses bad input with one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint, run_cli

from litegate.backends.runtime import Runner
from litegate.tasks import TextEncoder

pytestmark = pytest.mark.slow
SEQ = 16
VOCAB = 4096  # larger than the test tokenizer's vocabulary


def _feed(tok: Path, n: int = 5) -> dict[str, np.ndarray]:
    rows = (DEMO / "eval.tsv").read_text().splitlines()[1 : n + 1]
    return TextEncoder(tok, SEQ).encode([r.split("\t")[0] for r in rows])


@pytest.fixture(scope="module")
def hub_saved_model(tmp_path_factory) -> tuple[Path, Path]:
    """A TF-Hub-style BERT encoder SavedModel: input_word_ids/input_mask/input_type_ids -> pooled/sequence output."""
    import tensorflow as tf

    from litegate.converter.encoders import build_encoder, load_weights
    from litegate.converter.hf import read_checkpoint

    root = tmp_path_factory.mktemp("hub")
    ckpt = read_checkpoint(make_checkpoint(root / "ckpt", seed=5))
    enc = build_encoder(ckpt.config, seq_len=None, head="encoder")
    load_weights(enc, ckpt, "encoder")
    spec = tf.TensorSpec([None, None], tf.int32)

    class Hub(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        @tf.function(input_signature=[spec, spec, spec])
        def serve(self, input_word_ids, input_mask, input_type_ids):
            out = self.enc({"input_ids": input_word_ids, "attention_mask": input_mask})
            return {"pooled_output": out["pooled_output"], "sequence_output": out["sequence_output"]}

    m = Hub()
    tf.saved_model.save(m, str(root / "sm"), signatures={"serving_default": m.serve})
    return root / "sm", root / "ckpt" / "tokenizer.json"


def test_hub_style_saved_model_converts_and_matches_tf(tmp_path, hub_saved_model):
    import tensorflow as tf

    sm, tok = hub_saved_model
    out = tmp_path / "hub.tflite"
    r = run_cli("convert", "--from", "saved_model", str(sm), "--tokenizer", str(tok), "--task", "sentence-embedding",
                "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert set(meta["inputs"]) == {"input_word_ids", "input_mask", "input_type_ids"}
    assert out.with_suffix(".tokenizer.json").is_file()
    x = _feed(tok)
    runner = Runner(out)
    ours = runner.run_batch(x)
    sig = tf.saved_model.load(str(sm)).signatures["serving_default"]
    ref = sig(input_word_ids=tf.constant(x["input_ids"]), input_mask=tf.constant(x["attention_mask"]),
              input_type_ids=tf.constant(x["token_type_ids"]))
    for k in ("pooled_output", "sequence_output"):
        assert np.max(np.abs(ours[k] - ref[k].numpy())) < 1e-4, k
    # static shapes by default: batch 1, seq_len
    assert [list(d["shape"]) for d in runner.inputs.values()] == [[1, SEQ]] * 3


def test_saved_model_unknown_signature_and_non_saved_model_folder_are_refused(tmp_path, hub_saved_model):
    sm, tok = hub_saved_model
    out = tmp_path / "x.tflite"
    r = run_cli("convert", "--from", "saved_model", str(sm), "--signature", "nope", "-o", str(out))
    assert r.returncode == 3 and "no signature 'nope' (has: serving_default)" in r.stderr
    (tmp_path / "folder").mkdir()
    r = run_cli("convert", "--from", "saved_model", str(tmp_path / "folder"), "-o", str(out))
    assert r.returncode == 3 and "not a TensorFlow SavedModel folder" in r.stderr
    r = run_cli("convert", "--from", "saved_model", str(tmp_path / "missing"), "-o", str(out))
    assert r.returncode == 3 and "no such file or directory" in r.stderr
    assert not out.exists()


def test_dynamic_shapes_on_request_keep_sequence_dim_dynamic(tmp_path, hub_saved_model):
    sm, tok = hub_saved_model
    out = tmp_path / "dyn.tflite"
    r = run_cli("convert", "--from", "saved_model", str(sm), "--tokenizer", str(tok), "--dynamic-shapes",
                "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    sigs = [list(d["shape_signature"]) for d in Runner(out).inputs.values()]
    assert sigs == [[1, -1]] * 3


def _keras3_model(path: Path) -> object:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import keras

    keras.utils.set_random_seed(1)
    ids = keras.Input((SEQ,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(VOCAB, 16)(ids)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(ids, keras.layers.Dense(2, name="logits")(x))
    model.save(path)
    return model


def test_keras3_model_converts_through_export_and_matches(tmp_path, tiny_checkpoint):
    path = tmp_path / "k3.keras"
    model = _keras3_model(path)
    out = tmp_path / "k3.tflite"
    r = run_cli("convert", "--from", "keras", str(path), "--tokenizer", str(tiny_checkpoint / "tokenizer.json"),
                "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "pruning is not available for Keras 3 models" in r.stdout
    x = _feed(tiny_checkpoint / "tokenizer.json")
    ours = next(iter(Runner(out).run_batch(x).values()))
    ref = np.asarray(model.predict(x["input_ids"], verbose=0))
    assert np.max(np.abs(ours - ref)) < 1e-4


def _tf_keras_with_lambda(path: Path):
    import tf_keras

    ids = tf_keras.Input((SEQ,), dtype="int32", name="input_ids")
    x = tf_keras.layers.Embedding(VOCAB, 8)(ids)
    x = tf_keras.layers.Lambda(lambda t: t * 2.0)(x)
    model = tf_keras.Model(ids, tf_keras.layers.Dense(2)(tf_keras.layers.GlobalAveragePooling1D()(x)))
    model.save(path)
    return model


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_is_refused_unless_allowed(tmp_path, tiny_checkpoint, suffix):
    path = tmp_path / f"lam{suffix}"
    model = _tf_keras_with_lambda(path)
    out = tmp_path / "lam.tflite"
    r = run_cli("convert", "--from", "keras", str(path), "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 3 and "Lambda layer" in r.stderr and "--unsafe-allow-lambda" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("litegate:")]) == 1
    assert not out.exists()
    r = run_cli("convert", "--from", "keras", str(path), "--seq-len", str(SEQ), "--unsafe-allow-lambda", "-o", str(out))
    assert r.returncode == 0, r.stderr
    x = _feed(tiny_checkpoint / "tokenizer.json")
    ours = next(iter(Runner(out).run_batch(x).values()))
    assert np.max(np.abs(ours - model.predict(x["input_ids"], verbose=0))) < 1e-4


def test_graph_needing_select_tf_ops_lists_them_and_writes_nothing(tmp_path):
    import tensorflow as tf

    class Det(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"det": tf.linalg.det(tf.reshape(x, [-1, 2, 2])), "cp": tf.math.cumprod(x, axis=1)}

    m = Det()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    out = tmp_path / "det.tflite"
    r = run_cli("convert", "--from", "saved_model", str(tmp_path / "sm"), "--seq-len", "4", "-o", str(out))
    assert r.returncode == 5, r.stderr
    assert "Cumprod" in r.stderr and "MatrixDeterminant" in r.stderr and "allow_select_tf_ops = true" in r.stderr
    assert not out.exists()


def test_hf_checkpoint_bad_inputs_each_give_one_line(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    out = tmp_path / "o.tflite"
    r = run_cli("convert", str(ck), "--seq-len", "65", "-o", str(out))
    assert r.returncode == 3 and "seq_len 65 is larger than the model's max_position_embeddings 64" in r.stderr
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neo"}))
    r = run_cli("convert", str(ck), "-o", str(out), "--seq-len", "16")
    assert r.returncode == 3 and "model_type 'gpt_neo' is not supported" in r.stderr
    assert not out.exists()


def test_conversion_is_deterministic(tmp_path, tiny_checkpoint):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    for out in (a, b):
        assert run_cli("convert", str(tiny_checkpoint), "--seq-len", str(SEQ), "-o", str(out)).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_pipeline_determinism_check_records_identical_bytes(tmp_path, tiny_checkpoint):
    from conftest import write_config

    cfg = write_config(tmp_path, model=tiny_checkpoint, variants=("fp32", "int8"))
    cfg.write_text(cfg.read_text().replace("seq_len = 32", "seq_len = 32\ncheck_determinism = true"))
    r = run_cli("run", str(cfg), "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    for v in rep["variants"]:
        det = v["quant"]["determinism"]
        assert det["identical_bytes"] is True and det["sha256"][0] == det["sha256"][1] == v["artifact"]["sha256"]

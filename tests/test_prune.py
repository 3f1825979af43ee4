"""Magnitude pruning (tensorflow-model-optimization) with recovery fine-tuning, on tiny real models.

Measured facts recorded here (TF 2.21, tfmot 0.8): a 50%-pruned model keeps its raw .tflite size
and shrinks under gzip; ``Optimize.EXPERIMENTAL_SPARSITY`` shrinks the raw float32 file but makes
the dynamic-range int8 file larger (index metadata costs more than the int8 zeros it drops).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, run_cli

from litegate.errors import ConfigError, QuantizationError
from litegate.quantize import recipes
from litegate.tasks import TextEncoder, read_labelled_tsv, read_texts
from litegate.types import ModelSource, Recipe

pytestmark = pytest.mark.slow
SEQ = 16
FAST = {"end_step": 20, "frequency": 5, "recovery": {"steps": 20, "batch_size": 8, "learning_rate": 1e-3}, "seed": 0}


def _recipe(name: str = "fast", **params) -> Recipe:
    return recipes.validate({"name": name, "kind": "prune", "params": {**FAST, **params}}, name)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _kernels(model) -> dict[str, np.ndarray]:
    import tf_keras

    return {la.name: la.kernel.numpy() for la in model.layers if isinstance(la, tf_keras.layers.Dense)}


@pytest.fixture(scope="module")
def bert(tiny_checkpoint):
    from litegate.converter.sources import load

    return load(ModelSource(kind="hf-bert", path=str(tiny_checkpoint), task="text-classification", seq_len=SEQ))


@pytest.fixture(scope="module")
def texts(tiny_checkpoint) -> dict[str, np.ndarray]:
    return TextEncoder(tiny_checkpoint / "tokenizer.json", SEQ).encode(read_texts(DEMO / "calibration.txt", limit=64))


@pytest.fixture(scope="module")
def pruned50(bert, texts):
    from litegate.quantize.prune import apply_pruning

    return apply_pruning(bert, _recipe(), texts_inputs=texts)


@pytest.fixture(scope="module")
def fp32_bytes(bert) -> bytes:
    from litegate.converter.convert import convert

    return convert(bert.serve, bert.owner, recipes.load("fp32"), None)


# ---------------------------------------------------------------- recipes (no TensorFlow)


def test_builtin_prune_recipes_load_and_do_not_need_calibration():
    for name in ("pruned-50", "pruned-50-1x4", "pruned-2of4"):
        r = recipes.load(name)
        assert r.kind == "prune" and not r.needs_calibration
    assert recipes.load("pruned-50-1x4").params["block_size"] == [4, 1]
    assert recipes.load("pruned-2of4").params["structured_2_4"] is True
    assert recipes.load("int8").needs_calibration and not recipes.load("dynamic-int8").needs_calibration


@pytest.mark.parametrize("params,match", [
    ({"target_sparsity": 1.5}, "target_sparsity must be between 0 and 1"),
    ({"target_sparsity": True}, "must be a number"),
    ({"schedule": "cubic"}, "schedule 'cubic' is not one of"),
    ({"end_step": 25, "frequency": 10}, "must be a multiple of frequency"),
    ({"end_step": 10, "steps": 10}, "not both"),
    ({"block_size": [4]}, "block_size must be two positive integers"),
    ({"structured_2_4": True, "block_size": [1, 4]}, "cannot be combined"),
    ({"recovery": {"mode": "teacher"}}, "recovery.mode 'teacher' is not one of"),
    ({"recovery": {"epochs": 3}}, "unknown recovery parameter 'epochs'"),
    ({"optimizations": ["DEFAULT"]}, "unknown pruning parameter 'optimizations'"),
])
def test_bad_prune_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        recipes.validate({"name": "bad", "kind": "prune", "params": params}, "bad.json")


# ---------------------------------------------------------------- tiny BERT


def test_bert_dense_layers_reach_target_sparsity(pruned50):
    loaded, stats = pruned50
    kernels = _kernels(loaded.keras_model)
    assert set(stats["layers"]) == set(kernels) and len(kernels) == 14  # 2 x 6 + pooler + classifier
    for name, k in kernels.items():
        assert abs(np.mean(k == 0) - 0.5) <= 0.02, name
        assert stats["layers"][name] == pytest.approx(np.mean(k == 0))
    assert stats["pruned_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert 0.2 < stats["all_weights_sparsity"] < stats["pruned_sparsity"]  # embeddings and norms stay dense
    assert stats["mode"] == "distill" and stats["steps"] == 40 and stats["seed"] == 0
    assert stats["loss_curve"][0][0] == 1 and stats["loss_curve"][-1] == [40, stats["loss_last"]]


def test_bert_unpruned_weights_are_identical_and_input_model_untouched(bert, pruned50):
    loaded, _ = pruned50
    src, new = bert.keras_model, loaded.keras_model
    custom = [la.name for la in src.layers if la.weights and type(la).__name__ in ("Embeddings", "LayerNorm")]
    assert "embeddings" in custom and len(custom) == 6
    for name in custom:
        for a, b in zip(src.get_layer(name).get_weights(), new.get_layer(name).get_weights(), strict=True):
            assert np.array_equal(a, b), name
    assert all(np.mean(k == 0) == 0 for k in _kernels(src).values())  # the float model was not pruned
    assert new.get_layer("embeddings") is not src.get_layer("embeddings")


def test_bert_prune_embeddings_prunes_the_word_table_only(bert, texts):
    """prune_embeddings: the word table reaches the target, positions and token types stay bit-identical."""
    from litegate.quantize.prune import apply_pruning

    loaded, stats = apply_pruning(bert, _recipe(prune_embeddings=True), texts_inputs=texts)
    assert "embeddings" in stats["layers"] and stats["layers"]["embeddings"] == pytest.approx(0.5, abs=0.02)
    src, new = bert.keras_model.get_layer("embeddings"), loaded.keras_model.get_layer("embeddings")
    assert np.mean(new.word.numpy() == 0) == pytest.approx(0.5, abs=0.02)
    assert np.array_equal(src.position.numpy(), new.position.numpy())
    assert np.array_equal(src.token_type.numpy(), new.token_type.numpy())
    assert np.mean(src.word.numpy() == 0) == 0  # the float model was not pruned


def test_bert_distillation_keeps_outputs_close_to_float(bert, pruned50, tiny_checkpoint):
    loaded, stats = pruned50
    held_out = TextEncoder(tiny_checkpoint / "tokenizer.json", SEQ).encode(
        list(read_labelled_tsv(DEMO / "eval.tsv", limit=40).sentences))
    feed = {k: held_out[k] for k in ("input_ids", "attention_mask")}
    ref = np.concatenate([bert.serve(**{k: v[i : i + 1] for k, v in feed.items()})["logits"].numpy() for i in range(40)])
    ours = np.concatenate([loaded.serve(**{k: v[i : i + 1] for k, v in feed.items()})["logits"].numpy()
                           for i in range(40)])
    # KL distillation matches probabilities (logits may drift by a constant). Measured on this
    # random tiny BERT: mean |p - p_float| 0.187 pruned without recovery, 0.063 after 40 steps.
    assert np.mean(np.argmax(ours, -1) == np.argmax(ref, -1)) >= 0.7
    assert np.mean(np.abs(_softmax(ours) - _softmax(ref))) < 0.12
    assert stats["fidelity"]["logits"]["top1_agreement"] >= 0.7
    assert stats["fidelity"]["logits"]["prob_mean_abs"] < 0.12
    assert stats["loss_last"] < max(loss for _, loss in stats["loss_curve"])
    assert loaded.serve.get_concrete_function().structured_input_signature[1].keys() == {"input_ids", "attention_mask"}
    for spec in loaded.serve.get_concrete_function().structured_input_signature[1].values():
        assert spec.shape.as_list() == [1, SEQ]


def test_pruned_bert_converts_and_sparsity_report_agrees(pruned50, texts, tmp_path):
    from litegate.backends.runtime import Runner
    from litegate.converter.convert import convert
    from litegate.quantize.prune import sparsity_report

    loaded, stats = pruned50
    data = convert(loaded.serve, loaded.owner, recipes.load("fp32"), None)
    report = sparsity_report(data)
    model_zeros = sum(int(np.sum(w.numpy() == 0)) for w in loaded.keras_model.weights)
    assert abs(report["zeros"] - model_zeros) <= 8  # a few scalar float constants may be 0
    halves = [t for t in report["tensors"] if len(t["shape"]) == 2 and abs(t["sparsity"] - 0.5) <= 0.02]
    assert len(halves) == 14 and report["sparse_encoded"] == 0  # the 14 Dense kernels
    assert 0.2 < report["sparsity"] < 0.35  # embeddings (400 x 32 of ~33k weights) stay dense
    assert report["bytes"] == len(data) and 0 < report["gzip_bytes"] < len(data)
    path = tmp_path / "p.tflite"
    path.write_bytes(data)
    assert sparsity_report(path)["zeros"] == report["zeros"]
    feed = {k: texts[k][:4] for k in ("input_ids", "attention_mask")}
    ours = Runner(path, backend="cpu").run_batch(feed)["logits"]
    ref = np.concatenate([loaded.serve(**{k: v[i : i + 1] for k, v in feed.items()})["logits"].numpy() for i in range(4)])
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_fixed_seed_gives_identical_weights_and_tflite_bytes(bert, texts, pruned50):
    from litegate.converter.convert import convert
    from litegate.quantize.prune import apply_pruning

    first, stats1 = pruned50
    again, stats2 = apply_pruning(bert, _recipe(), texts_inputs=texts)
    assert stats1["loss_curve"] == stats2["loss_curve"]
    for a, b in zip(first.keras_model.weights, again.keras_model.weights, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    fp32 = recipes.load("fp32")
    assert convert(first.serve, first.owner, fp32, None) == convert(again.serve, again.owner, fp32, None)
    _, other = apply_pruning(bert, _recipe(seed=1), texts_inputs=texts)
    assert other["loss_curve"] != stats1["loss_curve"]


def test_block_1x4_recipe_zeroes_whole_tflite_blocks_with_label_recovery(bert, texts, tiny_checkpoint):
    from litegate.quantize.prune import apply_pruning

    rec = recipes.load("pruned-50-1x4")
    rec = Recipe(name=rec.name, kind="prune", params={**rec.params, **FAST, "block_size": rec.params["block_size"]})
    labels = np.arange(len(texts["input_ids"])) % 2
    loaded, stats = apply_pruning(bert, rec, texts_inputs=texts, labels=labels)
    assert stats["mode"] == "labels" and stats["structure"] == "4x1"
    for name, k in _kernels(loaded.keras_model).items():
        blocks = k.T.reshape(k.shape[1], k.shape[0] // 4, 4)  # TFLite layout [out, in], 1x4 blocks
        per_block = np.sum(blocks == 0, axis=-1)
        assert set(np.unique(per_block)) <= {0, 4}, name
        assert abs(np.mean(per_block == 4) - 0.5) <= 0.02, name


def test_block_size_that_does_not_fit_leaves_layer_dense(bert, texts):
    from litegate.quantize.prune import apply_pruning

    loaded, stats = apply_pruning(bert, _recipe(block_size=[1, 4]), texts_inputs=texts)
    assert set(stats["skipped"]) == {"classifier"}  # kernel [32, 2]
    assert np.mean(loaded.keras_model.get_layer("classifier").kernel.numpy() == 0) == 0
    k = loaded.keras_model.get_layer("l0_ffn_in").kernel.numpy()
    assert set(np.unique(np.sum(k.reshape(k.shape[0], -1, 4) == 0, axis=-1))) <= {0, 4}


def test_2of4_recipe_zeroes_two_in_every_four_inputs(bert, texts):
    from litegate.quantize.prune import apply_pruning

    rec = recipes.load("pruned-2of4")
    rec = Recipe(name=rec.name, kind="prune", params={**rec.params, "recovery": {"steps": 10, "batch_size": 8}})
    loaded, stats = apply_pruning(bert, rec, texts_inputs=texts)
    assert stats["structure"] == "2:4"
    for name, k in _kernels(loaded.keras_model).items():
        groups = k.T.reshape(k.shape[1], k.shape[0] // 4, 4)  # 4 consecutive inputs of one output
        assert np.all(np.sum(groups == 0, axis=-1) == 2), name


def test_labels_mode_without_labels_is_refused(bert, texts):
    from litegate.quantize.prune import apply_pruning

    with pytest.raises(QuantizationError, match="no labels were given"):
        apply_pruning(bert, _recipe(recovery={"mode": "labels"}), texts_inputs=texts)
    with pytest.raises(QuantizationError, match="not a pruning recipe"):
        apply_pruning(bert, recipes.load("fp16"), texts_inputs=texts)


def test_gzip_of_pruned_dynamic_int8_is_much_smaller_than_fp32(pruned50, fp32_bytes, bert):
    from litegate.converter.convert import convert
    from litegate.quantize.prune import sparsity_report

    loaded, _ = pruned50
    dyn = recipes.load("dynamic-int8")
    pruned_int8 = sparsity_report(convert(loaded.serve, loaded.owner, dyn, None))
    dense_int8 = sparsity_report(convert(bert.serve, bert.owner, dyn, None))
    fp32 = sparsity_report(fp32_bytes)
    pruned_fp32 = sparsity_report(convert(loaded.serve, loaded.owner, recipes.load("fp32"), None))
    # measured: fp32 147,884 B / gzip 124,290; pruned fp32 gzip 98,407; pruned int8 gzip 38,439
    assert pruned_fp32["bytes"] == fp32["bytes"] and pruned_fp32["gzip_bytes"] < 0.85 * fp32["gzip_bytes"]
    assert pruned_int8["gzip_bytes"] < 0.4 * fp32["gzip_bytes"]
    assert pruned_int8["gzip_bytes"] < dense_int8["gzip_bytes"]


def test_experimental_sparsity_encoding_is_measured_not_assumed(pruned50, tmp_path):
    from litegate.backends.runtime import Runner
    from litegate.quantize.prune import sparse_encoding_variants, sparsity_report
    from litegate.tflite.flatbuffer import read_model

    loaded, _ = pruned50
    variants = sparse_encoding_variants(loaded)
    assert set(variants) == {"fp32", "fp32+sparsity", "dynamic-int8", "dynamic-int8+sparsity"}
    rep = {k: sparsity_report(v) for k, v in variants.items()}
    # Unstructured 50%: the converter stores float kernels sparse and adds DENSIFY ops (dense at run
    # time): the raw fp32 file shrinks (measured 147,884 -> 127,144 B), the int8 file grows
    # (63,576 -> 75,008 B: int32 indices cost more than the int8 zeros they drop).
    assert rep["fp32"]["sparse_encoded"] == 0 and rep["fp32+sparsity"]["sparse_encoded"] > 0
    assert rep["fp32+sparsity"]["bytes"] < rep["fp32"]["bytes"]
    assert rep["dynamic-int8+sparsity"]["bytes"] > rep["dynamic-int8"]["bytes"]
    ops = [o.op for o in read_model(variants["fp32+sparsity"]).ops]
    assert "DENSIFY" in ops
    assert rep["fp32+sparsity"]["zeros"] == rep["fp32"]["zeros"]  # sparse format counts dropped zeros
    paths = {}
    for k, v in variants.items():
        paths[k] = tmp_path / f"{k}.tflite"
        paths[k].write_bytes(v)
    feed = {"input_ids": np.ones((1, SEQ), np.int32), "attention_mask": np.ones((1, SEQ), np.int32)}
    dense = Runner(paths["fp32"], backend="cpu")(feed)["logits"]
    assert np.max(np.abs(Runner(paths["fp32+sparsity"], backend="cpu")(feed)["logits"] - dense)) < 1e-5


# ---------------------------------------------------------------- text generators


def _char_lstm(folder: Path) -> Path:
    from litegate.converter.textgen import build_char_rnn, char_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer((DEMO / "calibration.txt").read_text())
    tok.save(str(folder / "tokenizer.json"))
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = build_char_rnn(tok.get_vocab_size(), "lstm", embedding=16, units=32)
    model.save(str(folder / "model.keras"))
    return folder / "model.keras"


def test_char_lstm_prunes_kernels_and_keeps_its_signatures(tmp_path):
    from litegate.backends.runtime import Runner
    from litegate.converter.convert import convert_signatures
    from litegate.converter.sources import load
    from litegate.quantize.prune import apply_pruning, sparsity_report
    from litegate.tasks import generator_windows

    path = _char_lstm(tmp_path / "lstm")
    loaded = load(ModelSource(kind="keras", path=str(path), task="text-generation", seq_len=SEQ))
    w = generator_windows(path.parent / "tokenizer.json", read_texts(DEMO / "calibration.txt"), SEQ, 64)
    pruned, stats = apply_pruning(loaded, _recipe(), texts_inputs={"tokens": w["tokens"]})
    assert set(stats["layers"]) == {"lstm", "logits"}
    lstm = pruned.keras_model.get_layer("lstm")
    for k in (lstm.cell.kernel, lstm.cell.recurrent_kernel, pruned.keras_model.get_layer("logits").kernel):
        assert abs(np.mean(k.numpy() == 0) - 0.5) <= 0.02
    emb = loaded.keras_model.get_layer("embedding").embeddings.numpy()
    assert np.array_equal(pruned.keras_model.get_layer("embedding").embeddings.numpy(), emb)
    assert set(pruned.signatures) == {"step", "prefill"}
    data = convert_signatures(pruned.signatures, pruned.owner, recipes.load("fp32"), tmp_path)
    assert sparsity_report(data)["matrix_sparsity"] > 0.3
    (tmp_path / "g.tflite").write_bytes(data)
    runner = Runner(tmp_path / "g.tflite", backend="cpu", signature="step")
    feed = {"token": np.array([[3]], np.int32), "h_0": np.zeros((1, 32), np.float32), "c_0": np.zeros((1, 32), np.float32)}
    ref = pruned.signatures["step"](**{k: v for k, v in feed.items()})
    assert np.max(np.abs(runner.invoke(feed)["logits"] - ref["logits"].numpy())) < 1e-4


def test_gpt2_dense_sublayers_prune_in_place_of_a_copy(tmp_path):
    from test_textgen import make_gpt2

    from litegate.converter.sources import load
    from litegate.quantize.prune import apply_pruning
    from litegate.tasks import generator_windows

    ck = make_gpt2(tmp_path / "g")
    loaded = load(ModelSource(kind="hf-gpt2", path=str(ck), task="text-generation", options={"max_len": 32}, seq_len=SEQ))
    before = [w.numpy().copy() for w in loaded.keras_model.weights]
    w = generator_windows(ck / "tokenizer.json", read_texts(DEMO / "calibration.txt"), SEQ, 32)
    pruned, stats = apply_pruning(loaded, _recipe(recovery={"steps": 5, "batch_size": 8}), texts_inputs={"tokens": w["tokens"]})
    assert len(stats["layers"]) == 8 and stats["pruned_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, loaded.keras_model.weights, strict=True))
    assert np.array_equal(pruned.keras_model.wte.numpy(), loaded.keras_model.wte.numpy())
    assert set(pruned.signatures) == {"prefill", "decode"}
    out = pruned.signatures["prefill"](tokens=w["tokens"][:1])
    assert out["logits"].shape == (1, SEQ, loaded.keras_model.cfg.vocab_size)


# ---------------------------------------------------------------- CLI


def test_cli_prune_writes_pruned_model_and_prints_sparsity(tmp_path, tiny_checkpoint):
    from litegate.quantize.prune import sparsity_report

    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps({"name": "fast", "kind": "prune", "params": FAST}))
    out = tmp_path / "pruned.tflite"
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", str(recipe), "--then", "dynamic-int8",
                "--calibration", str(DEMO / "calibration.txt"), "--samples", "32", "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "sparsity: 50.0% of 14 pruned layers' weights" in r.stdout and "recovery: distill, 40 steps" in r.stdout
    assert "fast then dynamic-int8" in r.stdout
    report = sparsity_report(out)
    assert report["sparsity"] > 0.2
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["pruning"] == "fast" and meta["recipe"] == "dynamic-int8"
    assert out.with_suffix(".tokenizer.json").is_file()


def test_cli_prune_then_int8_gets_the_int8_recipes_spelling(tmp_path, tiny_checkpoint):
    """`litegate prune --then int8` converts the pruned BERT as `litegate run` does for PRUNE+int8: residual
    smoothing (one-column FULLY_CONNECTEDs restoring each smoothed layer norm's statistics) and the int8 mask."""
    from ai_edge_litert.interpreter import Interpreter

    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps({"name": "fast", "kind": "prune", "params": FAST}))
    out = tmp_path / "pruned-int8.tflite"
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", str(recipe), "--then", "int8",
                "--calibration", str(DEMO / "calibration.txt"), "--samples", "32", "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    spelling = json.loads(out.with_suffix(".json").read_text())["int8_spelling"]
    layers = json.loads((tiny_checkpoint / "config.json").read_text())["num_hidden_layers"]
    assert sorted(spelling["residual_smoothing"]["blocks"]) == [f"l{i}_ffn" for i in range(layers)]
    assert spelling["mask_penalty"] == 12.0
    fc = [op for op in Interpreter(model_path=str(out))._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fc) == 6 * layers + 2 + 2 * layers  # + the two statistics columns per smoothed block


@pytest.mark.parametrize("recipe,match", [("int8", "not a pruning recipe|is a 'full-integer' recipe"),
                                          ("pruned-99", "unknown recipe 'pruned-99'")])
def test_cli_prune_with_bad_recipe_exits_2(recipe, match, tiny_checkpoint, tmp_path):
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", recipe, "--calibration", str(DEMO / "calibration.txt"),
                "-o", str(tmp_path / "x.tflite"))
    assert r.returncode == 2, r.stderr
    assert re.search(match, r.stderr)
    assert not (tmp_path / "x.tflite").exists()


def test_cli_prune_help_has_example():
    r = run_cli("prune", "--help")
    assert r.returncode == 0 and "Example:" in r.stdout and "--recipe pruned-50" in r.stdout


def test_cli_prune_refuses_a_pruning_then_recipe_and_missing_text(tiny_checkpoint, tmp_path):
    out = str(tmp_path / "x.tflite")
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", "pruned-50", "--then", "pruned-2of4",
                "--calibration", str(DEMO / "calibration.txt"), "-o", out)
    assert r.returncode == 2 and "is a pruning recipe; give a quantization recipe" in r.stderr
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", "pruned-50", "-o", out)
    assert r.returncode == 2 and "give --calibration TEXT or --labels TSV" in r.stderr

"""litegate's TF BERT and its TFLite conversion against an independent numpy forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint
from numpy_bert import forward
from safetensors.numpy import load_file, save_file

from litegate.converter.hf import read_checkpoint
from litegate.errors import ModelLoadError
from litegate.tasks import TextEncoder

pytestmark = pytest.mark.slow


def _inputs(ckpt, seq_len=24, n=6):
    texts = (DEMO / "eval.tsv").read_text().splitlines()[1 : n + 1]
    enc = TextEncoder(ckpt / "tokenizer.json", seq_len).encode([t.split("\t")[0] for t in texts])
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


@pytest.mark.parametrize("head,prefix", [("classification", "bert."), ("mean", "")])
def test_tf_bert_matches_numpy_reference(tmp_path, head, prefix):
    from litegate.converter.encoders import build_encoder, load_weights

    ckpt_dir = make_checkpoint(tmp_path / "ck", seed=3, prefix=prefix, with_head=head == "classification")
    ckpt = read_checkpoint(ckpt_dir)
    assert ckpt.prefix == prefix
    model = build_encoder(ckpt.config, seq_len=24, head=head)
    load_weights(model, ckpt, head)
    x = _inputs(ckpt_dir)
    ours = next(iter(model(x).values())).numpy()
    ref = forward(load_file(str(ckpt_dir / "model.safetensors")), json.loads((ckpt_dir / "config.json").read_text()),
                  x["input_ids"], x["attention_mask"], head=head)
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_converted_fp32_tflite_matches_numpy_reference(tmp_path, tiny_checkpoint):
    from litegate.api import convert_model
    from litegate.backends.runtime import Runner
    from litegate.types import ModelSource

    out = tmp_path / "m.tflite"
    info = convert_model(ModelSource(kind="hf-bert", path=str(tiny_checkpoint), task="text-classification", seq_len=24), out)
    assert info["bytes"] == out.stat().st_size and out.with_suffix(".tokenizer.json").is_file()
    x = _inputs(tiny_checkpoint)
    runner = Runner(out, backend="xnnpack", threads=1)
    assert set(runner.input_names()) == {"input_ids", "attention_mask"}
    ours = runner.run_batch(x)["logits"]
    ref = forward(load_file(str(tiny_checkpoint / "model.safetensors")),
                  json.loads((tiny_checkpoint / "config.json").read_text()), x["input_ids"], x["attention_mask"])
    assert np.max(np.abs(ours - ref)) < 1e-4
    # the reference backend (no delegate) agrees too
    assert np.max(np.abs(Runner(out, backend="cpu").run_batch(x)["logits"] - ref)) < 1e-4


# Ops the XNNPACK delegate runs in float (GATHER and CAST stay on the builtin kernels, negligible time).
XNNPACK_FLOAT_OPS = {"ADD", "BATCH_MATMUL", "CAST", "DIV", "FULLY_CONNECTED", "GATHER", "GELU", "MAXIMUM", "MEAN",
                     "MUL", "RESHAPE", "RSQRT", "SOFTMAX", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE"}


@pytest.mark.parametrize("gpu_friendly", [False, True])
def test_converted_graph_keeps_its_xnnpack_friendly_form(tmp_path, tiny_checkpoint, gpu_friendly):
    """Guards the graph form measured in docs/performance.md (XNNPACK time is ~90% FULLY_CONNECTED there).

    Per layer: 6 FULLY_CONNECTED with their bias fused (no bias ADD), the 1/sqrt(d) scale folded into the
    query projection (no attention MUL), 2 BATCH_MATMUL without adj_x (XNNPACK refuses adj_x; K is read
    through adj_y), 4 TRANSPOSE (q, k, v to heads-major and the context back), the builtin GELU; layer
    norms as MEAN/SUB/MUL/RSQRT (no SQUARED_DIFFERENCE); nothing outside what XNNPACK takes but
    GATHER/CAST. Outputs stay within 1e-4 of the numpy oracle.
    """
    from ai_edge_litert.interpreter import Interpreter

    from litegate.api import convert_model
    from litegate.backends.runtime import Runner
    from litegate.tflite.verify import load_model
    from litegate.types import ModelSource

    out = tmp_path / "m.tflite"
    convert_model(ModelSource(kind="hf-bert", path=str(tiny_checkpoint), task="text-classification",
                              options={"gpu_friendly": True} if gpu_friendly else {}, seq_len=24), out)
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    layers = cfg["num_hidden_layers"]
    ops = Interpreter(model_path=str(out))._get_ops_details()
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    assert set(counts) <= XNNPACK_FLOAT_OPS, sorted(set(counts) - XNNPACK_FLOAT_OPS)
    assert counts["TRANSPOSE"] == 4 * layers
    assert counts["BATCH_MATMUL"] == 2 * layers
    bmm = [o.options for o in load_model(out).subgraph_ops(0) if o.name == "BATCH_MATMUL"]
    assert not any(o["adj_x"] for o in bmm) and sum(o["adj_y"] for o in bmm) == layers
    assert counts["GELU"] == layers
    assert counts["FULLY_CONNECTED"] == 6 * layers + 2  # + pooler and classifier
    assert all(op["inputs"][2] >= 0 for op in ops if op["op_name"] == "FULLY_CONNECTED")  # bias fused
    norms = 2 * layers + 1
    assert counts["MUL"] == 3 * norms + 1  # layer norms and the mask; no separate attention-scale MUL
    assert counts["ADD"] == 2 * norms + 2 * layers + layers + 1  # norms, residuals, mask bias, embeddings
    x = _inputs(tiny_checkpoint)
    ref = forward(load_file(str(tiny_checkpoint / "model.safetensors")), cfg, x["input_ids"], x["attention_mask"])
    assert np.max(np.abs(Runner(out, threads=1).run_batch(x)["logits"] - ref)) < 1e-4


def test_residual_smoothing_keeps_the_function_and_shrinks_the_int8_ranges(tmp_path, tiny_checkpoint):
    """A 60-wide outlier channel in layer 0's feed-forward output (like MiniLM's 223 at [CLS]): traced with
    :func:`residual_smoothing`, the float function is unchanged, and the shipped int8 recipe (which
    smooths) keeps every int8 activation range >10x narrower than the same recipe without smoothing,
    with logits closer to fp32."""
    import shutil

    from ai_edge_litert.interpreter import Interpreter

    from litegate.api import convert_model
    from litegate.backends.runtime import Runner
    from litegate.converter.bert import ffn_residual_maxima, residual_smoothing, smoothing_scales
    from litegate.converter.sources import load
    from litegate.types import ModelSource

    ck = tmp_path / "outlier"
    shutil.copytree(tiny_checkpoint, ck)
    weights = load_file(str(ck / "model.safetensors"))
    weights["bert.encoder.layer.0.output.dense.bias"][5] = 60.0
    save_file(weights, str(ck / "model.safetensors"))
    texts = [t.split("\t")[0] for t in (DEMO / "eval.tsv").read_text().splitlines()[1:41]]
    source = ModelSource(kind="hf-bert", path=str(ck), task="text-classification", seq_len=24)
    x = _inputs(ck, n=40)

    loaded = load(source)
    maxima = ffn_residual_maxima(loaded.keras_model, x)
    assert set(maxima) == {"l0_ffn", "l1_ffn"} and maxima["l0_ffn"].argmax() == 5 and maxima["l0_ffn"].max() > 50
    scales = smoothing_scales(maxima, 1.0)  # every channel above 1 scaled down: the strongest rewrite
    assert all(np.allclose(scales[k], np.maximum(1.0, maxima[k])) for k in maxima)
    with residual_smoothing(scales):
        smooth = loaded.serve.retraced()
    for j in range(6):
        feed = {k: v[j : j + 1] for k, v in x.items()}
        assert np.max(np.abs(smooth(**feed)["logits"].numpy() - loaded.serve(**feed)["logits"].numpy())) < 1e-4

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(texts) + "\n")
    plain = tmp_path / "int8-plain.json"
    plain.write_text(json.dumps({"name": "int8-plain", "kind": "full-integer", "params": {
        "optimizations": ["DEFAULT"], "supported_ops": ["TFLITE_BUILTINS_INT8"], "inference_input_type": "float32",
        "inference_output_type": "int8"}}))
    logits, widest = {}, {}
    for recipe in ("fp32", "int8", str(plain)):
        out = tmp_path / f"{Path(recipe).stem}.tflite"
        info = convert_model(source, out, recipe=recipe, calibration=calib, samples=40)
        logits[recipe] = Runner(out).run_batch(x)["logits"]
        widest[recipe] = max((d["quantization"][0] for d in Interpreter(model_path=str(out)).get_tensor_details()
                              if d["dtype"] == np.int8), default=0.0)
        if recipe == "int8":
            blocks = info["extra"]["residual_smoothing"]["blocks"]
            assert blocks["l0_ffn"]["max_before"] > 50 and blocks["l0_ffn"]["max_scale"] > 10
            assert info["extra"]["mask_penalty"] == 12.0
    assert widest["int8"] < widest[str(plain)] / 10
    err = {r: float(np.abs(logits[r] - logits["fp32"]).mean()) for r in ("int8", str(plain))}
    assert err["int8"] < err[str(plain)]


def test_mask_penalty_is_traced_only_inside_its_block():
    from litegate.converter.bert import MASK_PENALTY, MaskBias, mask_penalty

    mask = np.array([[1, 1, 0]], np.int32)
    layer = MaskBias()
    with mask_penalty(12.0):
        inside = layer(mask).numpy().ravel()
    assert inside.tolist() == [0.0, 0.0, -12.0]
    assert layer(mask).numpy().ravel().tolist() == [0.0, 0.0, -MASK_PENALTY]


def test_int8_spelling_parameters_must_be_positive():
    from litegate.errors import ConfigError
    from litegate.quantize import recipes

    for key in ("smooth_residual", "mask_penalty", "max_fp32_latency_ratio"):
        with pytest.raises(ConfigError, match=key):
            recipes.validate({"name": "x", "kind": "full-integer", "params": {key: 0}}, "x.json")


def test_checkpoint_with_missing_tensor_names_it(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    t = load_file(str(ck / "model.safetensors"))
    del t["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(t, str(ck / "model.safetensors"))
    from litegate.converter.encoders import build_encoder, load_weights

    c = read_checkpoint(ck)
    with pytest.raises(ModelLoadError, match=r"missing tensor 'bert.encoder.layer.1.attention.self.key.weight'"):
        load_weights(build_encoder(c.config, seq_len=8), c, "classification")


def test_checkpoint_with_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    t = load_file(str(ck / "model.safetensors"))
    t["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    save_file(t, str(ck / "model.safetensors"))
    from litegate.converter.encoders import build_encoder, load_weights

    c = read_checkpoint(ck)
    with pytest.raises(ModelLoadError, match=r"'bert.encoder.layer.0.intermediate.dense.weight' has shape \(63, 32\), expected \(64, 32\)"):
        load_weights(build_encoder(c.config, seq_len=8), c, "classification")


def test_unsupported_model_type_and_long_seq_len_are_refused(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    from litegate.converter.encoders import build_encoder

    with pytest.raises(ModelLoadError, match="larger than the model's max_position_embeddings 64"):
        build_encoder(read_checkpoint(ck).config, seq_len=65)
    cfg["model_type"] = "funnel"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="model_type 'funnel' is not supported"):
        read_checkpoint(ck)


def test_integer_pooling_keeps_the_function_and_saves_int16x8_embeddings(tmp_path):
    """The mean-pooling head in its integer spelling (:func:`integer_pooling`) computes the same embedding in
    float, and the shipped int16x8 recipe (which uses it) keeps a tiny sentence encoder's embeddings within
    cosine 0.995 of fp32, where the same recipe over the float spelling saturates (TFLite gives the token
    count's SUM the mask's ±1 range, so the mean overflows its int16 scale)."""
    from litegate.api import convert_model
    from litegate.backends.runtime import Runner
    from litegate.converter.bert import integer_pooling
    from litegate.converter.sources import load
    from litegate.tasks import cosine
    from litegate.types import ModelSource

    ck = make_checkpoint(tmp_path / "enc", seed=5, prefix="", with_head=False)
    source = ModelSource(kind="hf-bert", path=str(ck), task="sentence-embedding", seq_len=24, options={"head": "mean"})
    x = _inputs(ck, n=40)
    loaded = load(source)
    with integer_pooling():
        spelled = loaded.serve.retraced()
    for j in range(6):
        feed = {k: v[j : j + 1] for k, v in x.items()}
        assert np.max(np.abs(spelled(**feed)["embedding"].numpy() - loaded.serve(**feed)["embedding"].numpy())) < 1e-5

    texts = [t.split("\t")[0] for t in (DEMO / "eval.tsv").read_text().splitlines()[1:41]]
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(texts) + "\n")
    plain = tmp_path / "int16x8-plain.json"
    plain.write_text(json.dumps({"name": "int16x8-plain", "kind": "int16x8", "params": {
        "optimizations": ["DEFAULT"], "supported_ops": ["EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"]}}))
    emb = {}
    for recipe in ("fp32", "int16x8", str(plain)):
        out = tmp_path / f"{Path(recipe).stem}.tflite"
        info = convert_model(source, out, recipe=recipe, calibration=calib, samples=40)
        emb[recipe] = Runner(out).run_batch(x)["embedding"]
        if recipe == "int16x8":
            assert "integer_pooling" in info["extra"]
    fixed, broken = (float(np.mean(cosine(emb[r], emb["fp32"]))) for r in ("int16x8", str(plain)))
    assert fixed > 0.995 and broken < 0.99, (fixed, broken)

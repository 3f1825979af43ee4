"""Llama-architecture decoders (issue #19, part 4): a tiny random-weight checkpoint in Hugging Face's layout,
converted to .tflite and checked against an independent numpy forward (tests/numpy_llama.py), KV-cache decode
against the full forward, tied/untied heads, rope scaling, int4 blockwise weights, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy_llama import forward as llama_forward
from safetensors.numpy import load_file, save_file

from litegate.errors import ModelLoadError

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small language model runs on a phone without a network connection.",
    "Rotary position embeddings rotate each pair of query and key channels.",
    "Grouped-query attention shares one key and value head between several query heads.",
    "The cache holds every key and value the decoder has seen so far.",
    "Weights quantized to four bits in blocks of thirty-two keep most of the quality.",
]
TEXT = " ".join(SENTENCES)


def make_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> int:
    """A byte-level BPE tokenizer.json trained on ``texts``; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return int(tok.get_vocab_size())


def make_llama(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 64, max_pos: int = 128, tied: bool = False, rope_scaling: dict | None = None,
               drop: str | None = None, reshape: str | None = None, head_dim: int | None = None, qk_scale: float = 1.0,
               **config) -> Path:
    """A random-weight ``LlamaForCausalLM`` checkpoint (config.json, model.safetensors, tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    V = make_tokenizer(folder / "tokenizer.json", SENTENCES)
    H, d, rng = hidden, head_dim or hidden // heads, np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, H, scale=0.5), "model.norm.weight": 1 + w(H, scale=0.1)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": 1 + w(H, scale=0.1), p + "post_attention_layernorm.weight": 1 + w(H, scale=0.1),
              p + "self_attn.q_proj.weight": w(heads * d, H, scale=0.2 * qk_scale),
              p + "self_attn.k_proj.weight": w(kv_heads * d, H, scale=0.2 * qk_scale),
              p + "self_attn.v_proj.weight": w(kv_heads * d, H), p + "self_attn.o_proj.weight": w(H, heads * d),
              p + "mlp.gate_proj.weight": w(intermediate, H), p + "mlp.up_proj.weight": w(intermediate, H),
              p + "mlp.down_proj.weight": w(H, intermediate)}
    if config.get("model_type") == "qwen2":  # q/k/v biases
        for i in range(layers):
            p = f"model.layers.{i}.self_attn."
            t |= {p + "q_proj.bias": w(heads * d), p + "k_proj.bias": w(kv_heads * d), p + "v_proj.bias": w(kv_heads * d)}
    if not tied:
        t["lm_head.weight"] = w(V, H, scale=0.3)
    if drop:
        del t[drop]
    if reshape:
        t[reshape] = t[reshape][:, :-1] if t[reshape].ndim == 2 else t[reshape][:-1]
    save_file(t, str(folder / "model.safetensors"))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": H,
           "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "max_position_embeddings": max_pos, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "rope_scaling": rope_scaling, "tie_word_embeddings": tied, "hidden_act": "silu",
           "head_dim": head_dim, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _ids(folder: Path, text: str = TEXT) -> list[int]:
    from litegate.tasks import load_tokenizer

    return list(load_tokenizer(folder / "tokenizer.json").encode(text).ids)


def _reference(folder: Path, ids) -> np.ndarray:
    return llama_forward(load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text()),
                         ids)


def convert_llama(folder: Path, out: Path, seq_len: int, max_len: int, recipe: str = "fp32", *,
                  gpu_friendly: bool = False) -> Path:
    """Convert through litegate's signature path (what the ``hf`` source kind does): load_llama + signatures, the
    build child's converter call for several signatures, then the recipe's litert-quantizer pass, if any."""
    import tempfile

    from litegate.converter.convert import convert_signatures
    from litegate.converter.llama import load_llama, signatures
    from litegate.quantize.build import _litert_quantized
    from litegate.quantize.recipes import load as load_recipe

    rec = load_recipe(recipe)
    model = load_llama(folder)
    sigs = signatures(model, seq_len, max_len, gpu_friendly=gpu_friendly)
    with tempfile.TemporaryDirectory() as tmp:
        data = convert_signatures(sigs, model, rec, Path(tmp))
    out.write_bytes(_litert_quantized(rec, data))
    return out


class _Lite:
    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path))
        self.runners = {k: self.it.get_signature_runner(k) for k in self.it.get_signature_list()}

    def inputs(self, sig: str) -> dict:
        return self.runners[sig].get_input_details()

    def __call__(self, sig: str, **kw) -> dict:
        return self.runners[sig](**kw)


def _prefill_logits(lite: _Lite, ids: list[int], P: int) -> np.ndarray:
    return lite("prefill", tokens=np.array([ids[:P]], np.int32))["logits"][0]


def test_tf_llama_matches_numpy_reference(tmp_path):
    from litegate.converter.llama import load_llama

    ck = make_llama(tmp_path / "l")
    ids = _ids(ck)
    ours = load_llama(ck)(np.array([ids], np.int32)).numpy()[0]
    ref = _reference(ck, ids)
    assert np.max(np.abs(ours - ref)) < 1e-4


@pytest.fixture(scope="module")
def llama_fp32(tmp_path_factory):
    """The default tiny Llama (GQA 4/2 heads, untied head) and its fp32 .tflite (prefill 16, cache 96)."""
    folder = tmp_path_factory.mktemp("llama")
    ck = make_llama(folder / "ck")
    return ck, convert_llama(ck, folder / "fp32.tflite", 16, 96)


def test_tflite_prefill_matches_numpy_reference(llama_fp32):
    ck, path = llama_fp32
    ids = _ids(ck)
    got = _prefill_logits(_Lite(path), ids, 16)
    delta = float(np.max(np.abs(got - _reference(ck, ids[:16]))))
    print(f"prefill max |delta| vs numpy: {delta:.2e}")
    assert delta < 1e-4


def test_tflite_decode_64_steps_reproduces_full_forward(llama_fp32):
    """Token by token through ``decode`` from an empty cache (pos 0 .. 63), and from the prefill's cache (pos 16 ..)."""
    ck, path = llama_fp32
    ids = _ids(ck)
    assert len(ids) >= 80
    lite = _Lite(path)
    ref = _reference(ck, ids[:80])
    caches = {k: np.zeros(d["shape"], np.float32) for k, d in lite.inputs("decode").items() if "_cache_" in k}
    deltas = []
    for pos in range(64):
        out = lite("decode", token=np.array([[ids[pos]]], np.int32), pos=np.array([pos], np.int32), **caches)
        caches = {k: out[k] for k in caches}
        deltas.append(float(np.max(np.abs(out["logits"][0] - ref[pos]))))
    print(f"64-step decode max |delta| vs numpy full forward: {max(deltas):.2e}")
    assert max(deltas) < 1e-4
    pre = lite("prefill", tokens=np.array([ids[:16]], np.int32))
    caches = {k: pre[k] for k in caches}
    for pos in range(16, 80):
        out = lite("decode", token=np.array([[ids[pos]]], np.int32), pos=np.array([pos], np.int32), **caches)
        caches = {k: out[k] for k in caches}
        assert np.max(np.abs(out["logits"][0] - ref[pos])) < 1e-4, pos


@pytest.mark.parametrize("variant", [
    {"tied": True},
    {"rope_scaling": {"type": "linear", "factor": 4.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, "rope_theta": 500000.0},
    {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "heads": 4, "kv_heads": 1, "tied": True},
    {"heads": 2, "kv_heads": 2, "layers": 1, "qk_scale": 6.0},
    {"heads": 4, "kv_heads": 2, "head_dim": 16, "model_type": "mistral", "architectures": ["MistralForCausalLM"],
     "sliding_window": 4096},
], ids=["tied", "rope-linear", "rope-llama3", "qwen2-bias-mqa", "mha-large-attention-logits", "mistral-head-dim-16"])
def test_variants_tflite_match_numpy_reference(tmp_path, variant):
    """Tied head, linear and llama3 rope scaling, Qwen2 q/k/v biases with one kv head, plain multi-head with
    attention logits far above GPT-2's mask penalty of 40 (the causal mask must still hide the future)."""
    ck = make_llama(tmp_path / "ck", seed=3, **variant)
    path = convert_llama(ck, tmp_path / "m.tflite", 12, 40)
    ids = _ids(ck)
    lite = _Lite(path)
    ref = _reference(ck, ids[:40])
    assert np.max(np.abs(_prefill_logits(lite, ids, 12) - ref[:12])) < 1e-4
    caches = {k: v for k, v in lite("prefill", tokens=np.array([ids[:12]], np.int32)).items() if "_cache_" in k}
    for pos in range(12, 40):
        out = lite("decode", token=np.array([[ids[pos]]], np.int32), pos=np.array([pos], np.int32), **caches)
        caches = {k: out[k] for k in caches}
        assert np.max(np.abs(out["logits"][0] - ref[pos])) < 1e-4, pos
    if variant.get("tied"):
        assert "lm_head.weight" not in load_file(str(ck / "model.safetensors"))


@pytest.mark.parametrize("kwargs,message", [
    ({"drop": "model.layers.1.mlp.up_proj.weight"}, "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ({"drop": "lm_head.weight"}, "missing tensor 'lm_head.weight'"),
    ({"reshape": "model.layers.0.self_attn.k_proj.weight"}, "tensor 'model.layers.0.self_attn.k_proj.weight' has shape"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 0.5}}, "rope_scaling.factor must be a finite number >= 1"),
    ({"heads": 4, "kv_heads": 3}, "num_attention_heads 4 is not divisible by num_key_value_heads 3"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"rope_theta": -1}, "rope_theta must be a finite number > 0"),
], ids=["missing", "missing-head", "shape", "rope-yarn", "rope-factor", "gqa", "act", "theta"])
def test_bad_checkpoints_are_one_line_errors(tmp_path, kwargs, message):
    from litegate.converter.llama import load_llama

    ck = make_llama(tmp_path / "bad", layers=2, **kwargs)
    with pytest.raises(ModelLoadError) as err:
        load_llama(ck)
    assert message in err.value.message and "\n" not in err.value.message


def _lm_eval(path: Path, windows: np.ndarray, tmp: Path) -> np.ndarray:
    """Prefill logits of every window through litegate's LM evaluator job (the Runner, XNNPACK)."""
    from litegate.benchmarks.accuracy import lm_eval_job

    np.savez(tmp / "w.npz", tokens=windows)
    out = tmp / f"{path.stem}.logits.npz"
    lm_eval_job({"windows_npz": str(tmp / "w.npz"), "path": str(path), "backend": "xnnpack", "threads": 1,
                 "out_npz": str(out)})
    with np.load(out) as data:
        return data["logits"]


@pytest.mark.parametrize("recipe", ["int4-blockwise", "int8-weight-only"])
def test_litert_quantizer_recipes_shrink_the_llama_and_keep_a_finite_perplexity(tmp_path, llama_fp32, recipe):
    from litegate.benchmarks.accuracy import lm_metrics

    ck, fp32 = llama_fp32
    q = convert_llama(ck, tmp_path / f"{recipe}.tflite", 16, 96, recipe=recipe)
    ids = np.array(_ids(ck), np.int32)
    windows = np.stack([ids[i : i + 16] for i in range(0, len(ids) - 16, 8)])
    ref = _lm_eval(fp32, windows, tmp_path)
    got = _lm_eval(q, windows, tmp_path)
    m_ref, m_q = lm_metrics(ref, windows), lm_metrics(got, windows, ref)
    ratio = m_q["perplexity"] / m_ref["perplexity"]
    size = q.stat().st_size / fp32.stat().st_size
    print(f"{recipe}: size ratio {size:.3f}, perplexity {m_q['perplexity']:.1f} vs fp32 {m_ref['perplexity']:.1f} "
          f"(ratio {ratio:.3f}), top-1 agreement {m_q['top1_agreement']:.1f}%, max |d logits| "
          f"{np.max(np.abs(got - ref)):.3f}")
    assert size < 1.0 and np.isfinite(ratio)
    from litegate.tflite.flatbuffer import read_model

    info = read_model(q.read_bytes())
    want = "INT4" if recipe == "int4-blockwise" else "INT8"
    fc = [o for o in info.ops if o.op == "FULLY_CONNECTED"]
    if recipe == "int4-blockwise":  # int4 weights straight into the FULLY_CONNECTED (dynamic: int compute)
        weights = [o.inputs[1].type for o in fc if o.inputs[1] is not None]
    else:  # weight-only: an explicit DEQUANTIZE of each int8 weight, float compute
        weights = [o.inputs[0].type for o in info.ops if o.op == "DEQUANTIZE" and o.inputs[0] is not None]
    assert len(weights) == len(fc) > 0 and set(weights) == {want}  # every projection and the LM head
    assert {s.key for s in info.signatures} == {"prefill", "decode"}


def test_int4_recipe_quantizes_gpt2_through_the_cli(tmp_path):
    """The recipe is generic: ``litegate quantize --recipe int4-blockwise`` on a GPT-2 checkpoint."""
    from conftest import run_cli
    from test_textgen import make_gpt2

    from litegate.generate import tflite_generator

    ck = make_gpt2(tmp_path / "g", n_embd=64)
    fp32, q = tmp_path / "fp32.tflite", tmp_path / "int4.tflite"
    assert run_cli("convert", "--from", "hf-gpt2", str(ck), "--seq-len", "8", "-o", str(fp32)).returncode == 0
    r = run_cli("quantize", "--from", "hf-gpt2", str(ck), "--recipe", "int4-blockwise", "--seq-len", "8", "-o", str(q))
    assert r.returncode == 0, r.stderr
    assert q.stat().st_size < 0.6 * fp32.stat().st_size
    assert len(tflite_generator(q).generate([1, 2, 3], 10)) == 10


def test_missing_litert_quantizer_is_one_line(monkeypatch):
    import sys

    from litegate.errors import QuantizationError
    from litegate.quantize import ptq
    from litegate.quantize.recipes import load as load_recipe

    monkeypatch.setitem(sys.modules, "litert_quantizer", None)  # import litert_quantizer -> ImportError
    rec = load_recipe("int4-blockwise")
    with pytest.raises(QuantizationError, match=r"needs litert-quantizer, which is not installed \(pip install") as err:
        ptq.litert_quantize(b"", rec.params["litert_quantizer"], rec.name)
    assert "\n" not in err.value.message


def test_gpu_friendly_llama_equals_the_plain_graph_and_is_statically_fully_delegated(tmp_path, llama_fp32):
    from litegate.compat.check import evaluate
    from litegate.compat.ruleset import load_rules
    from litegate.tflite.verify import load_model

    ck, plain = llama_fp32
    friendly = convert_llama(ck, tmp_path / "gpu.tflite", 16, 96, gpu_friendly=True)
    ids = _ids(ck)
    a, b = _Lite(plain), _Lite(friendly)
    pre_a, pre_b = a("prefill", tokens=np.array([ids[:16]], np.int32)), b("prefill", tokens=np.array([ids[:16]], np.int32))
    for k in pre_a:
        assert np.max(np.abs(pre_a[k] - pre_b[k])) <= 1e-5, k
    caches = {k: v for k, v in pre_a.items() if "_cache_" in k}
    feed = {"token": np.array([[ids[16]]], np.int32), "pos": np.array([16], np.int32), **caches}
    dec_a, dec_b = a("decode", **feed), b("decode", **feed)
    for k in dec_a:
        assert np.max(np.abs(dec_a[k] - dec_b[k])) <= 1e-5, k
    model = load_model(friendly)
    for op in model.ops:
        if op.op == "GATHER":
            assert op.inputs[1] is not None and op.inputs[1].rank == 1, op.index
        if op.op == "STRIDED_SLICE":
            assert not op.options.get("shrink_axis_mask"), op.index
    report = evaluate(model, load_rules("gpu"))
    assert report.fully_delegated and report.delegated_fraction == 1.0


def test_cli_convert_from_hf_and_generate_follow_the_numpy_reference(tmp_path):
    """``litegate convert --from hf`` (config.json picks the Llama builder) then ``litegate generate``: the .tflite's
    greedy tokens are the numpy oracle's."""
    from conftest import run_cli

    from litegate.generate import tflite_generator

    ck = make_llama(tmp_path / "ck", seed=5)
    out = tmp_path / "llama.tflite"
    r = run_cli("convert", "--from", "hf", str(ck), "--seq-len", "16", "--max-len", "96", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "hf-llama" in r.stdout and "KV cache of 96 positions" in r.stdout
    prompt = "The quick brown fox"
    ids = _ids(ck, prompt)
    seq = list(ids)
    for _ in range(24):
        seq.append(int(np.argmax(_reference(ck, seq)[-1])))
    assert tflite_generator(out).generate(ids, 24) == seq[len(ids):]
    r = run_cli("generate", str(out), "--prompt", prompt, "--tokens", "24")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt)


@pytest.mark.parametrize("kwargs,message", [
    ({"drop": "model.layers.1.self_attn.o_proj.weight"}, "missing tensor 'model.layers.1.self_attn.o_proj.weight'"),
    ({"reshape": "model.norm.weight"}, "tensor 'model.norm.weight' has shape (31,), expected (32,)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
], ids=["missing", "shape", "rope-yarn"])
def test_cli_refuses_bad_llama_checkpoints_in_one_line_and_writes_nothing(tmp_path, kwargs, message):
    from conftest import run_cli

    ck = make_llama(tmp_path / "ck", **kwargs)
    out = tmp_path / "bad.tflite"
    r = run_cli("convert", "--from", "hf", str(ck), "--seq-len", "16", "--max-len", "96", "-o", str(out))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_config_reading_sliding_windows_and_the_parameter_cap(tmp_path):
    from litegate.converter.hf_llama import LlamaConfig
    from litegate.converter.llama import load_llama, signatures

    ck = make_llama(tmp_path / "m", layers=1, model_type="mistral", sliding_window=32)
    assert LlamaConfig.from_json_file(ck / "config.json").sliding_window == 32
    model = load_llama(ck)
    signatures(model, 8, 32)  # a window as long as the cache drops nothing
    with pytest.raises(ModelLoadError, match="max_len 64 is larger than the model's sliding_window 32"):
        signatures(model, 8, 64)
    q = make_llama(tmp_path / "q", layers=1, model_type="qwen2", sliding_window=32, use_sliding_window=False)
    cfg = LlamaConfig.from_json_file(q / "config.json")
    assert cfg.sliding_window is None and cfg.qkv_bias and not cfg.o_bias
    raw = json.loads((ck / "config.json").read_text())
    v5 = {k: v for k, v in raw.items() if k not in ("rope_theta", "rope_scaling", "num_key_value_heads")}
    v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    (q / "config.json").write_text(json.dumps({**v5, "num_key_value_heads": None}))  # transformers 5's layout
    cfg = LlamaConfig.from_json_file(q / "config.json")
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling and cfg.rope_scaling["type"] == "llama3"
    assert cfg.num_key_value_heads == cfg.num_attention_heads
    assert LlamaConfig.from_json_file(ck / "config.json").parameters() == sum(
        v.size for v in load_file(str(ck / "model.safetensors")).values())
    for key, value, message in [("vocab_size", 10**9, "billion parameters"), ("model_type", "gemma", "not a Llama"),
                                ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
                                ("num_key_value_heads", 0, "num_key_value_heads must be a positive integer")]:
        (ck / "config.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(ModelLoadError, match=message):
            LlamaConfig.from_json_file(ck / "config.json")


def test_release_run_evaluates_llama_variants_with_the_lm_evaluator(tmp_path):
    """``litegate run`` on the tiny Llama (source ``hf``): fp32 and int4-blockwise built, benchmarked and scored by
    the LM evaluator (perplexity, top-1 agreement with fp32) unchanged."""
    from conftest import ROOT, run_cli

    ck = make_llama(tmp_path / "ck", seed=7)
    cfg = tmp_path / "release.toml"
    cfg.write_text(f'''name = "tiny-llama"
variants = ["fp32", "int4-blockwise"]
[model]
source = "hf"
path = "{ck}"
task = "text-generation"
seq_len = 16
[data]
eval = "{ROOT / 'examples' / 'demo' / 'calibration.txt'}"
max_eval_samples = 4
[output]
dir = "{tmp_path / 'out'}"
[bench]
threads = [1]
min_runs = 3
min_seconds = 0.0
max_runs = 3
peak_probe = false
profile_runs = 0
[gate]
require = "any"
''')
    r = run_cli("run", str(cfg), "-q")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    v = {x["name"]: x for x in rep["variants"]}
    assert v["fp32"]["status"] == "ok" and v["int4-blockwise"]["status"] == "ok", (v["int4-blockwise"].get("reason"),
                                                                                     r.stderr[-2000:])
    fp32, int4 = v["fp32"]["accuracy"][0], v["int4-blockwise"]["accuracy"][0]
    ratio = int4["value"] / fp32["value"]
    print(f"litegate run: int4-blockwise perplexity ratio {ratio:.3f}, top-1 agreement "
          f"{int4['extra']['top1_agreement']:.1f}%, size {v['int4-blockwise']['size']['bytes'] / v['fp32']['size']['bytes']:.3f}")
    assert np.isfinite(ratio) and v["int4-blockwise"]["size"]["bytes"] < v["fp32"]["size"]["bytes"]
    assert v["int4-blockwise"]["quant"]["litert_quantizer"]["bits"] == 4
    assert r.returncode == 0, r.stdout[-2000:]


def test_bfloat16_sharded_checkpoint_loads_like_the_single_file(tmp_path):
    """Real Llama-family checkpoints are bfloat16, larger ones sharded (model.safetensors.index.json)."""
    import ml_dtypes

    from litegate.converter.llama import load_llama

    ck = make_llama(tmp_path / "ck", seed=9)
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(str(ck / "model.safetensors")).items()}
    (ck / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(ck / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = _ids(ck)[:40]
    ref = llama_forward(tensors, json.loads((ck / "config.json").read_text()), ids)
    assert np.max(np.abs(load_llama(ck)(np.array([ids], np.int32)).numpy()[0] - ref)) < 1e-4
    (ck / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="shard model-00002-of-00002.safetensors named by"):
        load_llama(ck)


def test_int4_blockwise_falls_back_to_channelwise_where_blocks_do_not_divide(tmp_path):
    """An MLP of 72 channels: down_proj's input dimension is no multiple of 32, so those weights get one scale per
    output channel (litert-quantizer fails on them otherwise); the rest stay blockwise, all int4, outputs finite."""
    from litegate.quantize import ptq
    from litegate.quantize.recipes import load as load_recipe
    from litegate.tflite.flatbuffer import read_model

    ck = make_llama(tmp_path / "ck", intermediate=72, layers=1)
    fp32 = convert_llama(ck, tmp_path / "fp32.tflite", 8, 32)
    rec = load_recipe("int4-blockwise")
    data, info = ptq.litert_quantize(fp32.read_bytes(), rec.params["litert_quantizer"], rec.name)
    assert info["channelwise_fallback"]["ops"] == 2  # down_proj in prefill and in decode
    fc = [o for o in read_model(data).ops if o.op == "FULLY_CONNECTED"]
    assert {o.inputs[1].type for o in fc if o.inputs[1] is not None} == {"INT4"}
    q = tmp_path / "int4.tflite"
    q.write_bytes(data)
    ids = _ids(ck)
    assert np.isfinite(_prefill_logits(_Lite(q), ids, 8)).all()

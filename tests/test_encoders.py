"""BERT-family encoders beyond BERT (DistilBERT, RoBERTa, XLM-R, ELECTRA, ALBERT, MobileBERT) through the hf-bert
source.

Each family: a tiny random-weight checkpoint in Hugging Face's layout (config.json, model.safetensors with HF
tensor names, a tokenizer made with the ``tokenizers`` library), converted to fp32 .tflite by the real CLI and run
with ai_edge_litert's Interpreter on real sentences, against the independent numpy oracle of
``tests/numpy_encoders.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, make_checkpoint, run_cli
from numpy_encoders import forward
from safetensors.numpy import load_file, save_file

from litegate.tasks import TextEncoder

SEQ = 32
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
ARCHS = {"distilbert": "DistilBertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
         "xlm-roberta": "XLMRobertaForSequenceClassification", "electra": "ElectraForSequenceClassification",
         "albert": "AlbertForSequenceClassification", "mobilebert": "MobileBertForSequenceClassification"}
PREFIX = {"distilbert": "distilbert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "electra": "electra.",
          "albert": "albert.", "mobilebert": "mobilebert."}


def _texts() -> list[str]:
    return [line for line in (DEMO / "calibration.txt").read_text().splitlines() if line.strip()]


def _sentences(n: int = 6) -> list[str]:
    return [row.split("\t")[0] for row in (DEMO / "eval.tsv").read_text().splitlines()[1 : n + 1]]


def _bpe_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer.json with RoBERTa's specials and post-processor (<s> ... </s>)."""
    from tokenizers.implementations import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_texts(), vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(folder / "tokenizer.json"))
    return int(tok.get_vocab_size())


def _unigram_tokenizer(folder: Path) -> int:
    """A SentencePiece-Unigram tokenizer.json with XLM-R's specials and template (<s> $A </s>)."""
    from tokenizers.implementations import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing

    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(_texts(), vocab_size=300, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    return int(tok.get_vocab_size())


def _tokenizer(folder: Path, family: str) -> int:
    if family == "roberta":
        return _bpe_tokenizer(folder)
    if family == "xlm-roberta":
        return _unigram_tokenizer(folder)
    make_checkpoint(folder)  # its WordPiece vocab.txt / tokenizer.json (config and weights are replaced below)
    return int(json.loads((folder / "config.json").read_text())["vocab_size"])


def _config(family: str, vocab: int, hidden: int, layers: int, heads: int, inter: int, max_pos: int) -> dict:
    base = {"model_type": family, "architectures": [ARCHS[family]], "vocab_size": vocab, "id2label": LABELS}
    if family == "distilbert":
        return {**base, "dim": hidden, "n_layers": layers, "n_heads": heads, "hidden_dim": inter, "activation": "gelu",
                "max_position_embeddings": max_pos, "sinusoidal_pos_embds": False}
    bert = {**base, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": inter, "max_position_embeddings": max_pos, "type_vocab_size": 2, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12}
    if family in ("roberta", "xlm-roberta"):
        return {**bert, "max_position_embeddings": max_pos + 2, "type_vocab_size": 1, "pad_token_id": 1,
                "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5}
    if family == "electra":
        return {**bert, "embedding_size": hidden // 2}
    if family == "mobilebert":  # MobileBertConfig's own keys, at tiny sizes (transformers' defaults otherwise)
        return {**bert, "embedding_size": hidden // 2, "intra_bottleneck_size": hidden // 2,
                "true_hidden_size": hidden // 2, "num_feedforward_networks": 3, "hidden_act": "relu",
                "normalization_type": "no_norm", "trigram_input": True, "use_bottleneck": True,
                "use_bottleneck_attention": False, "key_query_shared_bottleneck": True,
                "classifier_activation": True, "pad_token_id": 0}
    return {**bert, "embedding_size": hidden // 2, "hidden_act": "gelu_new", "num_hidden_groups": 1,
            "inner_group_num": 1}


LAYER_NAMES = {  # HF dense and layer-norm names of one layer, relative to the layer
    "bert": (("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"), ("attention.output.LayerNorm", "output.LayerNorm")),
    "distilbert": (("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1",
                    "ffn.lin2"), ("sa_layer_norm", "output_layer_norm")),
    "albert": (("attention.query", "attention.key", "attention.value", "attention.dense", "ffn", "ffn_output"),
               ("attention.LayerNorm", "full_layer_layer_norm")),
}


def _mobilebert_tensors(cfg: dict, w) -> dict[str, np.ndarray]:
    """MobileBertModel's tensors for ``cfg`` (names as transformers' MobileBertModel.state_dict(), no prefix)."""
    H, E, inter = cfg["hidden_size"], cfg.get("embedding_size", 128), cfg["intermediate_size"]
    bottleneck = cfg.get("use_bottleneck", True)
    T = cfg.get("intra_bottleneck_size", 128) if bottleneck else H
    t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], E, scale=1.0),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], H, scale=0.5),
         "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], H, scale=0.5)}

    def dense(name, out, inp):  # weights ~ 1/sqrt(fan_in): NoNorm does not rescale what grows
        t[name + ".weight"], t[name + ".bias"] = w(out, inp, scale=1 / np.sqrt(inp)), w(out, scale=0.05)

    def norm(name, width):
        t[name + ".weight"], t[name + ".bias"] = 1 + w(width, scale=0.1), w(width, scale=0.1)

    trigram = cfg.get("trigram_input", True)
    if trigram or E != H:
        dense("embeddings.embedding_transformation", H, 3 * E if trigram else E)
    norm("embeddings.LayerNorm", H)
    for i in range(cfg["num_hidden_layers"]):
        L = f"encoder.layer.{i}."
        if bottleneck:
            dense(L + "bottleneck.input.dense", T, H)
            norm(L + "bottleneck.input.LayerNorm", T)
            if cfg.get("key_query_shared_bottleneck", True):
                dense(L + "bottleneck.attention.dense", T, H)
                norm(L + "bottleneck.attention.LayerNorm", T)
            dense(L + "output.bottleneck.dense", H, T)
            norm(L + "output.bottleneck.LayerNorm", H)
        for n in ("query", "key"):
            dense(L + f"attention.self.{n}", T, T)
        dense(L + "attention.self.value", T, T if cfg.get("use_bottleneck_attention", False) else H)
        dense(L + "attention.output.dense", T, T)
        norm(L + "attention.output.LayerNorm", T)
        for f in [f"ffn.{j}." for j in range(cfg.get("num_feedforward_networks", 4) - 1)] + [""]:
            dense(L + f + "intermediate.dense", inter, T)
            dense(L + f + "output.dense", T, inter)
            norm(L + f + "output.LayerNorm", T)
    if cfg.get("classifier_activation", True):
        dense("pooler.dense", H, H)
    return t


def _tensors(family: str, cfg: dict, rng: np.random.Generator, with_head: bool) -> dict[str, np.ndarray]:
    """Random weights under the family's HF names (the encoder's with ``PREFIX`` when ``with_head``)."""
    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if family == "mobilebert":
        out = {(PREFIX[family] if with_head else "") + k: v for k, v in _mobilebert_tensors(cfg, w).items()}
        if with_head:
            out["classifier.weight"] = w(len(LABELS), cfg["hidden_size"], scale=0.2)
            out["classifier.bias"] = w(len(LABELS), scale=0.05)
        return out

    H = cfg.get("hidden_size", cfg.get("dim"))
    inter = cfg.get("intermediate_size", cfg.get("hidden_dim"))
    E = cfg.get("embedding_size", H)
    t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], E, scale=1.0),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], E, scale=0.5),
         "embeddings.LayerNorm.weight": 1 + w(E, scale=0.1), "embeddings.LayerNorm.bias": w(E, scale=0.1)}
    if family != "distilbert":
        t["embeddings.token_type_embeddings.weight"] = w(cfg["type_vocab_size"], E, scale=0.5)

    def dense(name, out, inp):
        t[name + ".weight"], t[name + ".bias"] = w(out, inp), w(out, scale=0.05)

    if family == "electra" and E != H:
        dense("embeddings_project", H, E)
    if family == "albert":
        dense("encoder.embedding_hidden_mapping_in", H, E)
    denses, norms = LAYER_NAMES.get(family, LAYER_NAMES["bert"])
    layer = {"distilbert": "transformer.layer.{i}.", "albert": "encoder.albert_layer_groups.0.albert_layers.0."}
    for i in range(1 if family == "albert" else cfg.get("num_hidden_layers", cfg.get("n_layers"))):
        L = layer.get(family, "encoder.layer.{i}.").format(i=i)
        for name, (o, n) in zip(denses, [(H, H)] * 4 + [(inter, H), (H, inter)], strict=True):
            dense(L + name, o, n)
        for name in norms:
            t[L + name + ".weight"], t[L + name + ".bias"] = 1 + w(H, scale=0.1), w(H, scale=0.1)
    if family == "albert":
        dense("pooler", H, H)
    out = {(PREFIX[family] if with_head else "") + k: v for k, v in t.items()}
    if with_head:
        t = {}
        first, last = {"distilbert": ("pre_classifier", "classifier"),
                       "albert": (None, "classifier")}.get(family, ("classifier.dense", "classifier.out_proj"))
        if first:
            dense(first, H, H)
        dense(last, len(LABELS), H)
        out.update(t)
    return out


def make_encoder(folder: Path, family: str, *, seed: int = 0, with_head: bool = True, hidden: int = 32,
                 layers: int = 2, heads: int = 2, inter: int = 64, max_pos: int = 64, **keys) -> Path:
    """A random-weight ``family`` checkpoint in Hugging Face layout with a tokenizer made by ``tokenizers``
    (``keys``: config.json keys set over the family's tiny defaults)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**_config(family, _tokenizer(folder, family), hidden, layers, heads, inter, max_pos), **keys}
    save_file(_tensors(family, cfg, np.random.default_rng(seed), with_head), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _run_tflite(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Each row through ai_edge_litert's Interpreter (batch 1), the single output stacked."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    runner = interp.get_signature_runner()
    rows = [runner(**{k: v[j : j + 1] for k, v in feed.items()}) for j in range(len(feed["input_ids"]))]
    (name,) = rows[0]
    return np.concatenate([r[name] for r in rows])


def _convert(ck: Path, out: Path, *args: str):
    return run_cli("convert", "--from", "hf-bert", str(ck), "-o", str(out), "--seq-len", str(SEQ), *args)


def test_roberta_and_xlmr_tokenizers_give_the_tokenizers_library_ids(tmp_path):
    """TextEncoder gives the ids the ``tokenizers`` library gives with the file's post-processor (<s> ... </s>),
    padded with ``<pad>`` (id 1, as transformers pads RoBERTa and XLM-R) and truncated to SEQ with </s> kept."""
    from tokenizers import Tokenizer

    long_text = " ".join(_sentences(8))
    for family in ("roberta", "xlm-roberta"):
        folder = tmp_path / family
        folder.mkdir()
        _tokenizer(folder, family)
        texts = [*_sentences(), long_text]
        enc = TextEncoder(folder / "tokenizer.json", SEQ).encode(texts)
        lib = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert lib.token_to_id("<s>") == 0 and lib.token_to_id("<pad>") == 1 and lib.token_to_id("</s>") == 2
        for row, mask, text in zip(enc["input_ids"], enc["attention_mask"], texts, strict=True):
            ids = lib.encode(text).ids
            assert ids[0] == 0 and ids[-1] == 2
            n = min(len(ids), SEQ)
            if len(ids) <= SEQ:
                assert row.tolist() == ids + [1] * (SEQ - n), family
            else:  # truncation keeps the specials
                assert row.tolist() == ids[: SEQ - 1] + [2], family
            assert mask.tolist() == [1] * n + [0] * (SEQ - n)


FAMILIES = ("distilbert", "roberta", "xlm-roberta", "electra", "albert", "mobilebert")


@pytest.mark.parametrize("family", FAMILIES)
def test_config_reads_each_family_and_writes_it_back(tmp_path, family):
    """BertConfig from each family's config.json: its sizes under BERT's names, parameters() equal to the
    classifier checkpoint's tensor sizes (the parameter cap counts what is built), and to_hf_dict read back equal."""
    from litegate.converter.hf import BertConfig, read_checkpoint

    ck = make_encoder(tmp_path / family, family)
    cfg = BertConfig.from_json_file(ck / "config.json")
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (family, 32, 2, 64)
    assert cfg.max_seq_len == 64 and cfg.num_labels == 3 and dict(cfg.id2label) == LABELS
    assert cfg.parameters() == sum(v.size for v in load_file(str(ck / "model.safetensors")).values())
    assert read_checkpoint(ck).prefix == PREFIX[family]
    (tmp_path / "back.json").write_text(json.dumps(cfg.to_hf_dict()))
    assert BertConfig.from_json_file(tmp_path / "back.json") == cfg
    assert cfg.to_hf_dict()["architectures"] == [ARCHS[family]]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["classification", "mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_converted_encoder_matches_numpy_oracle(tmp_path, family, head):
    """fp32 .tflite from the CLI within 1e-4 of the numpy oracle on tokenized real sentences; the classifier
    from a prefixed *ForSequenceClassification checkpoint, the embedding from a bare encoder (no prefix)."""
    ck = make_encoder(tmp_path / family, family, seed=7, with_head=head == "classification")
    out = tmp_path / "m.tflite"
    r = _convert(ck, out, "--head", head)
    assert r.returncode == 0, r.stderr
    enc = TextEncoder(out.with_suffix(".tokenizer.json"), SEQ).encode(_sentences())
    feed = {k: enc[k] for k in ("input_ids", "attention_mask")}
    assert feed["attention_mask"].sum(1).min() < SEQ  # padded rows are checked too
    ours = _run_tflite(out, feed)
    cfg = json.loads((ck / "config.json").read_text())
    ref = forward(load_file(str(ck / "model.safetensors")), cfg, feed["input_ids"], feed["attention_mask"], head)
    assert ours.shape == ref.shape == (6, len(LABELS) if head == "classification" else 32)
    delta = float(np.max(np.abs(ours - ref)))
    print(f"{family} {head}: max |delta| {delta:.2e}")
    assert delta <= 1e-4
    if family == "albert":  # one layer's weights, shared by both applications: 6 + projection + pooler + classifier
        from ai_edge_litert.interpreter import Interpreter

        ops = Interpreter(model_path=str(out))._get_ops_details()
        fc = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
        assert len(fc) == 6 * 2 + 1 + (2 if head == "classification" else 0)
        assert len({op["inputs"][1] for op in fc}) == 6 + 1 + (2 if head == "classification" else 0)


@pytest.mark.slow
def test_gpu_friendly_roberta_keeps_its_positions(tmp_path):
    """--gpu-friendly (1-D gathers, slices without shrink masks) with RoBERTa's offset positions: same numbers."""
    from ai_edge_litert.interpreter import Interpreter

    ck = make_encoder(tmp_path / "roberta", "roberta", seed=11)
    out = tmp_path / "m.tflite"
    r = _convert(ck, out, "--gpu-friendly")
    assert r.returncode == 0, r.stderr
    interp = Interpreter(model_path=str(out))
    shapes = {d["index"]: d["shape"] for d in interp.get_tensor_details()}
    gathers = [op for op in interp._get_ops_details() if op["op_name"] == "GATHER"]
    assert gathers and all(len(shapes[op["inputs"][1]]) == 1 for op in gathers)
    enc = TextEncoder(out.with_suffix(".tokenizer.json"), SEQ).encode(_sentences())
    feed = {k: enc[k] for k in ("input_ids", "attention_mask")}
    ref = forward(load_file(str(ck / "model.safetensors")), json.loads((ck / "config.json").read_text()),
                  feed["input_ids"], feed["attention_mask"])
    assert float(np.max(np.abs(_run_tflite(out, feed) - ref))) <= 1e-4


def _one_line_exit_3(r, out: Path, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and all(n in lines[0] for n in needles), r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_bad_checkpoints_are_one_line_exit_3(tmp_path):
    """A missing tensor, a mismatched shape, ALBERT with two layer groups and Funnel: one line, exit 3, no file."""
    out = tmp_path / "m.tflite"
    ck = make_encoder(tmp_path / "missing", "distilbert")
    t = load_file(str(ck / "model.safetensors"))
    del t["distilbert.transformer.layer.1.attention.k_lin.weight"]
    save_file(t, str(ck / "model.safetensors"))
    _one_line_exit_3(_convert(ck, out), out, "missing tensor 'distilbert.transformer.layer.1.attention.k_lin.weight'")

    ck = make_encoder(tmp_path / "shape", "roberta")
    t = load_file(str(ck / "model.safetensors"))
    t["roberta.encoder.layer.0.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    save_file(t, str(ck / "model.safetensors"))
    _one_line_exit_3(_convert(ck, out), out, "'roberta.encoder.layer.0.intermediate.dense.weight' has shape (63, 32), "
                     "expected (64, 32)")

    ck = make_encoder(tmp_path / "groups", "albert")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "num_hidden_groups": 2}))
    _one_line_exit_3(_convert(ck, out), out, "num_hidden_groups 2 is not supported")

    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "funnel"}))
    r = _convert(ck, out)
    _one_line_exit_3(r, out, "funnel")
    assert re.search(r"distilbert.*roberta.*xlm-roberta.*electra.*albert.*mobilebert", r.stderr), r.stderr


@pytest.mark.slow
def test_distilbert_int8_and_pruned_50_build(tmp_path):
    """The calibrated int8 recipe (residual smoothing, mask penalty) and pruned-50 still build for a non-BERT
    family, and their logits stay near the float model's."""
    ck = make_encoder(tmp_path / "distil", "distilbert", seed=3)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(_texts()[:40]) + "\n")
    fp32, int8, pruned = (tmp_path / f"{n}.tflite" for n in ("fp32", "int8", "pruned"))
    assert _convert(ck, fp32).returncode == 0
    common = ["--calibration", str(calib), "--samples", "40", "--seq-len", str(SEQ), "--from", "hf-bert"]
    r = run_cli("quantize", str(ck), "--recipe", "int8", "-o", str(int8), *common)
    assert r.returncode == 0, r.stderr
    spelling = json.loads(int8.with_suffix(".json").read_text())["int8_spelling"]
    assert set(spelling["residual_smoothing"]["blocks"]) == {"l0_ffn", "l1_ffn"}  # the recipe found each block
    r = run_cli("prune", str(ck), "--recipe", "pruned-50", "-o", str(pruned), *common)
    assert r.returncode == 0, r.stderr
    enc = TextEncoder(fp32.with_suffix(".tokenizer.json"), SEQ).encode(_sentences())
    feed = {k: enc[k] for k in ("input_ids", "attention_mask")}
    ref = _run_tflite(fp32, feed)
    for path in (int8, pruned):
        got = _run_tflite(path, feed)
        assert got.shape == ref.shape and np.isfinite(got).all()
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.8, path.name


MOBILEBERT_VARIANTS = {  # config.json keys over the tiny default (no_norm, relu, shared query/key bottleneck)
    "layer_norm-gelu-first_token-4ffn-gpu": ({"normalization_type": "layer_norm", "hidden_act": "gelu",
                                              "classifier_activation": False, "num_feedforward_networks": 4},
                                             "classification", True),
    "no_bottleneck-no_trigram-1ffn": ({"use_bottleneck": False, "trigram_input": False, "num_feedforward_networks": 1,
                                       "true_hidden_size": 32}, "mean", False),
    "bottleneck_attention-2ffn": ({"use_bottleneck_attention": True, "num_feedforward_networks": 2},
                                  "classification", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", MOBILEBERT_VARIANTS)
def test_mobilebert_variants_match_numpy_oracle(tmp_path, variant):
    """MobileBERT's switches (LayerNorm instead of NoNorm, GELU, the first token as pooled output, no bottleneck,
    no trigram, bottleneck attention, 1 to 4 FFNs, --gpu-friendly): the fp32 .tflite within 1e-4 of the oracle."""
    keys, head, gpu = MOBILEBERT_VARIANTS[variant]
    ck = make_encoder(tmp_path / "mb", "mobilebert", seed=5, with_head=head == "classification", **keys)
    out = tmp_path / "m.tflite"
    r = _convert(ck, out, "--head", head, *(["--gpu-friendly"] if gpu else []))
    assert r.returncode == 0, r.stderr
    enc = TextEncoder(out.with_suffix(".tokenizer.json"), SEQ).encode(_sentences())
    feed = {k: enc[k] for k in ("input_ids", "attention_mask")}
    ref = forward(load_file(str(ck / "model.safetensors")), json.loads((ck / "config.json").read_text()),
                  feed["input_ids"], feed["attention_mask"], head)
    ours = _run_tflite(out, feed)
    delta = float(np.max(np.abs(ours - ref)))
    print(f"mobilebert {variant} {head}: max |delta| {delta:.2e}")
    assert ours.shape == ref.shape and delta <= 1e-4
    if gpu:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(out))
        shapes = {d["index"]: d["shape"] for d in interp.get_tensor_details()}
        gathers = [op for op in interp._get_ops_details() if op["op_name"] == "GATHER"]
        assert gathers and all(len(shapes[op["inputs"][1]]) == 1 for op in gathers)


@pytest.mark.parametrize(("keys", "needle"), [
    ({"normalization_type": "batch_norm"}, "normalization_type 'batch_norm' is not supported"),
    ({"use_bottleneck": "yes"}, "use_bottleneck must be true or false"),
    ({"intra_bottleneck_size": 15}, "not divisible by num_attention_heads 2"),
    ({"key_query_shared_bottleneck": False}, "key_query_shared_bottleneck false"),
    ({"num_feedforward_networks": 0}, "num_feedforward_networks must be a positive integer"),
    ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
])
def test_mobilebert_config_refusals_are_one_line(tmp_path, keys, needle):
    """MobileBERT keys litegate cannot build (or transformers cannot run) are a one-line ModelLoadError naming the key."""
    from litegate.converter.hf import BertConfig
    from litegate.errors import ModelLoadError

    cfg = {**_config("mobilebert", 300, 32, 2, 2, 64, 64), **keys}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as err:
        BertConfig.from_json_file(tmp_path / "config.json")
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_mobilebert_int8_and_dynamic_int8_build_with_builtin_ops(tmp_path):
    """The calibrated int8 recipe and dynamic-int8 build a (no_norm) MobileBERT .tflite of builtin ops only, whose
    logits follow the float model's. Residual smoothing finds no block in MobileBERT (none of its norms has a
    smooth key); quantize.build.int8_spelling recognises litegate's BERT by its LayerNorm layers, so a no_norm
    MobileBERT is quantized in its float spelling (mask penalty 40, float pooling)."""
    from litegate.tflite.flatbuffer import read_model

    ck = make_encoder(tmp_path / "mb", "mobilebert", seed=3)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(_texts()[:40]) + "\n")
    fp32, int8, dyn = (tmp_path / f"{n}.tflite" for n in ("fp32", "int8", "dyn"))
    assert _convert(ck, fp32).returncode == 0
    common = ["--seq-len", str(SEQ), "--from", "hf-bert"]
    r = run_cli("quantize", str(ck), "--recipe", "int8", "-o", str(int8), "--calibration", str(calib),
                "--samples", "40", *common)
    assert r.returncode == 0, r.stderr
    spelling = json.loads(int8.with_suffix(".json").read_text()).get("int8_spelling", {})
    assert spelling.get("residual_smoothing", {}).get("blocks", {}) == {}
    r = run_cli("quantize", str(ck), "--recipe", "dynamic-int8", "-o", str(dyn), *common)
    assert r.returncode == 0, r.stderr
    enc = TextEncoder(fp32.with_suffix(".tokenizer.json"), SEQ).encode(_sentences())
    feed = {k: enc[k] for k in ("input_ids", "attention_mask")}
    ref = _run_tflite(fp32, feed)
    for path in (int8, dyn):
        ops = read_model(path.read_bytes()).ops
        assert ops and not [o.name for o in ops if o.is_custom], path.name
        got = _run_tflite(path, feed)
        assert got.shape == ref.shape and np.isfinite(got).all()
        corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
        print(f"mobilebert {path.stem}: {len(ops)} ops, logits corr {corr:.3f}")
        assert corr > 0.8, path.name

"""A Hugging Face checkpoint's config.json picks the builder, the head and the task (issue #19, part 1)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO, run_cli, write_config
from numpy_bert import forward
from safetensors.numpy import load_file

from litegate.backends.runtime import Runner
from litegate.config import load
from litegate.converter.detect import BUILDERS, detect_checkpoint
from litegate.errors import ModelLoadError
from litegate.tasks import TextEncoder, cosine
from litegate.types import Head, SourceKind, Task

SENTENCES = ["the film is a delight from start to finish", "a dull, lifeless script", "it rains"]


def _folder(tmp_path, name, **config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("config", "expected"), [
    ({"model_type": "bert", "architectures": ["BertModel"]}, (SourceKind.HF_BERT, Task.SENTENCE_EMBEDDING, Head.MEAN)),
    ({"model_type": "bert", "architectures": ["BertForSequenceClassification"]},
     (SourceKind.HF_BERT, Task.TEXT_CLASSIFICATION, Head.CLASSIFICATION)),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, (SourceKind.HF_BERT, Task.SENTENCE_EMBEDDING, Head.MEAN)),
    ({"model_type": "bert", "id2label": {"0": "negative", "1": "positive"}},
     (SourceKind.HF_BERT, Task.TEXT_CLASSIFICATION, Head.CLASSIFICATION)),
    ({"model_type": "bert", "id2label": {"0": "LABEL_0", "1": "LABEL_1"}},
     (SourceKind.HF_BERT, Task.SENTENCE_EMBEDDING, Head.MEAN)),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, (SourceKind.HF_GPT2, Task.TEXT_GENERATION, None)),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, (SourceKind.HF_LLAMA, Task.TEXT_GENERATION, None)),
])
def test_config_json_picks_builder_task_and_head(tmp_path, config, expected):
    found = detect_checkpoint(_folder(tmp_path, "m", **config))
    assert (found.kind, found.task, found.head) == expected
    assert found.model_type == config["model_type"] and found.why.startswith("config.json: model_type")


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
     "model_type 't5' is not supported (supported: " + ", ".join(BUILDERS) + ")"),
    ({"model_type": "bert", "architectures": ["BertForTokenClassification"]},
     "architecture 'BertForTokenClassification' is not supported (supported: *ForSequenceClassification"),
    ({"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"]},
     "architecture 'GPT2ForSequenceClassification' is not supported for gpt2 (supported: *ForCausalLM"),
    ({"architectures": "BertModel", "model_type": "bert"}, "architectures must be a list of class names"),
])
def test_unsupported_checkpoints_are_one_line(tmp_path, config, message):
    with pytest.raises(ModelLoadError) as err:
        detect_checkpoint(_folder(tmp_path, "m", **config))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unsupported_architecture_from_the_cli_is_exit_3_and_leaves_no_file(tmp_path, tiny_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForQuestionAnswering"]}))
    out = tmp_path / "m.tflite"
    r = run_cli("convert", str(ckpt), "-o", str(out), "--seq-len", "16")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "BertForQuestionAnswering' is not supported" in r.stderr
    assert list(tmp_path.glob("m.*")) == []


def _embedding_checkpoint(tmp_path, tiny_checkpoint):
    """The tiny BERT as a bare ``BertModel`` encoder (no classifier tensors), like all-MiniLM-L6-v2."""
    from safetensors.numpy import save_file

    ckpt = tmp_path / "encoder"
    shutil.copytree(tiny_checkpoint, ckpt)
    tensors = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if not k.startswith("classifier.")}
    save_file(tensors, str(ckpt / "model.safetensors"))
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("id2label")
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    return ckpt, tensors, cfg


def test_a_bare_encoder_converts_with_no_flags_to_mean_pooled_embeddings(tmp_path, tiny_checkpoint):
    """The case of the issue: `--from hf-bert` (or nothing) on a BertModel checkpoint used to fail on
    'classifier.weight'; its config.json says it is an encoder, so the embeddings head is built."""
    ckpt, tensors, cfg = _embedding_checkpoint(tmp_path, tiny_checkpoint)
    x = TextEncoder(ckpt / "tokenizer.json", 16).encode(SENTENCES)
    ref = forward(tensors, cfg, x["input_ids"], x["attention_mask"], head="mean")
    for flags in ([], ["--from", "hf-bert"], ["--from", "hf"]):
        out = tmp_path / f"m{len(flags)}.tflite"
        r = run_cli("convert", str(ckpt), "-o", str(out), "--seq-len", "16", *flags)
        assert r.returncode == 0, r.stderr
        ours = Runner(out, threads=1).run_batch(x)["embedding"]
        assert cosine(ours, ref).min() >= 0.9999
    # an explicit head still wins over config.json
    out = tmp_path / "cls.tflite"
    r = run_cli("convert", str(ckpt), "-o", str(out), "--seq-len", "16", "--head", "cls")
    assert r.returncode == 0, r.stderr
    pooled = Runner(out, threads=1).run_batch(x)["pooled"]
    width = cfg["hidden_size"]  # the oracle's classifier as the identity: its logits are the pooler's output
    identity = {**tensors, "classifier.weight": np.eye(width), "classifier.bias": np.zeros(width)}
    assert np.abs(pooled - forward(identity, cfg, x["input_ids"], x["attention_mask"])).max() < 1e-4


def test_source_hf_in_a_release_config_resolves_from_the_checkpoint(tmp_path, tiny_checkpoint):
    ckpt, _, _ = _embedding_checkpoint(tmp_path, tiny_checkpoint)
    path = write_config(tmp_path / "cfg", model=ckpt)
    path.write_text(path.read_text().replace('source = "hf-bert"', 'source = "hf"'))
    source = load(path).model.source
    assert (source.kind, source.task, source.options["head"]) == (SourceKind.HF_BERT, Task.SENTENCE_EMBEDDING, "mean")
    # what the file says wins: a classifier task keeps the classifier's default head
    path.write_text(path.read_text().replace("seq_len = 32", 'seq_len = 32\ntask = "text-classification"\n'
                                             'head = "mean-classification"'))
    source = load(path).model.source
    assert (source.task, source.options["head"]) == (Task.TEXT_CLASSIFICATION, "mean-classification")
    demo = write_config(tmp_path / "demo", model=DEMO / "model")
    demo.write_text(demo.read_text().replace('source = "hf-bert"', 'source = "hf"'))
    source = load(demo).model.source
    assert (source.kind, source.task, source.options["head"]) == (SourceKind.HF_BERT, Task.TEXT_CLASSIFICATION,
                                                                  "classification")


def test_a_pytorch_bin_checkpoint_is_refused_in_one_line_naming_the_fix(tmp_path, tiny_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")  # never unpickled: refused by name
    out = tmp_path / "m.tflite"
    r = run_cli("convert", str(ckpt), "-o", str(out), "--seq-len", "16")
    assert r.returncode == 3 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "not PyTorch .bin pickles" in r.stderr and "safe_serialization=True" in r.stderr and not out.exists()


def test_an_explicit_kind_loads_its_config_before_the_model_is_there_and_hf_does_not(tmp_path):
    """A release config names a checkpoint that a later CI step (or a fix) provides: an explicit kind leaves the
    checks to its builder, at run time; `hf` has no builder until config.json says which."""
    path = write_config(tmp_path / "cfg", model=tmp_path / "later")
    (tmp_path / "later").mkdir()
    source = load(path).model.source
    assert (source.kind, source.task, source.options["head"]) == (SourceKind.HF_BERT, Task.TEXT_CLASSIFICATION,
                                                                  "classification")
    path.write_text(path.read_text().replace('source = "hf-bert"', 'source = "hf"'))
    with pytest.raises(ModelLoadError, match="not a Hugging Face checkpoint folder"):
        load(path)

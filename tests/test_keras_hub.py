"""keras-hub models convert without extra flags: the tokenizer and sequence length come from the .keras file
(issue #19, part 3). The model is a real keras-hub BertTextClassifier, saved by keras-hub in a subprocess (Keras 3)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import DEMO, run_cli, write_config

from litegate.backends.runtime import Runner
from litegate.converter.keras_hub import keras_hub_tokenizer, read_keras_hub
from litegate.tasks import TextEncoder

pytest.importorskip("keras_hub", reason="keras-hub is in the dev extra (pip install -e '.[dev]')")

SENTENCES = ["the film is a delight from start to finish", "a dull, lifeless script", "it rains on the parade"]

MAKE = textwrap.dedent('''
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import keras, keras_hub, numpy as np
    out, vocab, sentences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    keras.utils.set_random_seed(0)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=24)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
                                             hidden_dim=32, intermediate_dim=64, max_sequence_length=48)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=pre)
    model.save(out + "/clf.keras")
    features = pre(sentences)
    np.savez(out + "/keras.npz", logits=model.predict(sentences, verbose=0),
             token_ids=np.asarray(features["token_ids"]), padding_mask=np.asarray(features["padding_mask"]))
''')


@pytest.fixture(scope="module")
def keras_hub_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras-hub")
    words = sorted(set(re.findall(r"[a-z]+|[^\sa-z]", (DEMO / "calibration.txt").read_text().lower())))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *(w for w in words if len(w) > 1)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    r = subprocess.run([sys.executable, "-c", MAKE, str(folder), str(folder / "vocab.txt"), json.dumps(SENTENCES)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (folder / "vocab.txt").unlink()  # the vocabulary now lives only inside clf.keras
    return folder


def test_the_tokenizer_inside_the_keras_file_gives_keras_hubs_token_ids(keras_hub_classifier):
    model = read_keras_hub(keras_hub_classifier / "clf.keras")
    assert model is not None and (model.class_name, model.tokenizer_class) == ("BertTextClassifier", "BertTokenizer")
    assert (model.sequence_length, model.max_sequence_length) == (24, 48)
    tok = keras_hub_tokenizer(keras_hub_classifier / "clf.keras")
    assert tok is not None and tok == keras_hub_tokenizer(keras_hub_classifier / "clf.keras")  # written once
    ours = TextEncoder(tok, 24).encode(SENTENCES)
    theirs = np.load(keras_hub_classifier / "keras.npz")
    np.testing.assert_array_equal(ours["input_ids"], theirs["token_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["padding_mask"].astype(np.int32))
    assert (ours["input_ids"] == 1).sum() < ours["attention_mask"].sum() / 4  # real words, not [UNK]s


def test_a_keras_hub_classifier_converts_with_no_flags_and_matches_keras(keras_hub_classifier, tmp_path):
    out = tmp_path / "clf.tflite"
    r = run_cli("convert", "--from", "keras", str(keras_hub_classifier / "clf.keras"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["seq_len"] == 24 and sorted(meta["inputs"]) == ["padding_mask", "segment_ids", "token_ids"]
    sidecar = out.with_suffix(".tokenizer.json")
    assert sidecar.is_file()
    x = TextEncoder(sidecar, 24).encode(SENTENCES)
    logits = Runner(out, threads=1).run_batch(x)
    ours = next(iter(logits.values()))
    assert np.abs(ours - np.load(keras_hub_classifier / "keras.npz")["logits"]).max() <= 1e-4


def test_a_keras_hub_model_in_a_release_run_and_a_too_long_sequence(keras_hub_classifier, tmp_path):
    cfg = write_config(tmp_path / "cfg", model=keras_hub_classifier / "clf.keras")
    cfg.write_text(cfg.read_text().replace('source = "hf-bert"', 'source = "keras"').replace("seq_len = 32\n", ""))
    r = run_cli("run", str(cfg))
    assert r.returncode in (0, 1), r.stderr
    report = json.loads((tmp_path / "cfg" / "out" / "report.json").read_text())
    fp32 = report["variants"][0]
    assert fp32["name"] == "fp32" and fp32["status"] == "ok", fp32
    assert fp32["accuracy"][0]["n_samples"] == 40 and 0 <= fp32["accuracy"][0]["value"] <= 100
    out = tmp_path / "long.tflite"
    r = run_cli("convert", "--from", "keras", str(keras_hub_classifier / "clf.keras"), "-o", str(out), "--seq-len", "64")
    assert r.returncode == 3 and "seq_len 64 is larger than the model's max_sequence_length 48" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not out.exists()

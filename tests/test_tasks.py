from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO

from litegate.errors import DataError
from litegate.tasks import TextEncoder, classification_metrics, cosine, read_labelled_tsv, read_texts


def test_shipped_eval_set_is_balanced_and_large_enough():
    data = read_labelled_tsv(DEMO / "eval.tsv")
    assert len(data.sentences) >= 150
    assert set(data.labels) == {0, 1}
    assert abs(sum(data.labels) - len(data.labels) / 2) < len(data.labels) * 0.1


def test_read_labelled_tsv_errors_name_file_and_line(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match="has no rows"):
        read_labelled_tsv(empty)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"sentence\tlabel\ngood film\t1\nbad \xff film\t0\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: .*not valid UTF-8"):
        read_labelled_tsv(bad)
    lab = tmp_path / "lab.tsv"
    lab.write_text("a film\tpositive\n")
    with pytest.raises(DataError, match=r"lab.tsv:1: label 'positive'"):
        read_labelled_tsv(lab)
    with pytest.raises(DataError, match="not found"):
        read_labelled_tsv(tmp_path / "missing.tsv")


def test_read_texts_rejects_empty_and_reads_tsv_sentence_column(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\n  \n")
    with pytest.raises(DataError, match="calibration text is empty"):
        read_texts(f)
    assert read_texts(DEMO / "eval.tsv", limit=2) == list(read_labelled_tsv(DEMO / "eval.tsv").sentences[:2])


def test_text_encoder_pads_truncates_and_masks(tiny_checkpoint):
    enc = TextEncoder(tiny_checkpoint / "tokenizer.json", 16)
    out = enc.encode(["a film", "the film " * 20])
    assert out["input_ids"].shape == (2, 16) and out["input_ids"].dtype == np.int32
    assert out["attention_mask"][0].sum() == 4  # [CLS] a film [SEP]
    assert out["attention_mask"][1].sum() == 16
    assert out["input_ids"][0, 0] == enc.tokenizer.token_to_id("[CLS]")
    assert np.all(out["input_ids"][0, 4:] == enc.tokenizer.token_to_id("[PAD]"))
    assert np.all(out["input_ids"] < enc.vocab_size)


def test_classification_metrics_known_values():
    logits = np.array([[0, 1], [1, 0], [0, 1], [0, 1]], float)
    m = classification_metrics(logits, np.array([1, 0, 0, 1]))
    assert m["accuracy"] == 75.0
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 0.8
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2 * 100)
    assert cosine(np.array([[1.0, 0]]), np.array([[2.0, 0]]))[0] == pytest.approx(1.0)


def test_text_encoder_adds_bert_template_when_tokenizer_file_lacks_it(tmp_path):
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(["a good film", "a bad film"] * 5, vocab_size=60, min_frequency=1,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tokenizer.json"))  # saved without a post-processor
    enc = TextEncoder(tmp_path / "tokenizer.json", 8)
    ids = enc.encode(["a good film"])["input_ids"][0]
    assert ids[0] == enc.tokenizer.token_to_id("[CLS]")
    assert ids[4] == enc.tokenizer.token_to_id("[SEP]")


def test_labels_outside_the_models_classes_are_refused_and_names_are_mapped(tmp_path):
    names = {0: "negative", 1: "positive"}
    ok = tmp_path / "ok.tsv"
    ok.write_text("sentence\tlabel\na fine film\tPositive\na dull film\tnegative\nan odd film\t1\n")
    assert read_labelled_tsv(ok, label_names=names).labels == (1, 0, 1)
    seven = tmp_path / "seven.tsv"
    seven.write_text("sentence\tlabel\na fine film\t1\na dull film\t7\n")
    assert read_labelled_tsv(seven).labels == (1, 7)  # without the model's classes, any integer is read as is
    with pytest.raises(DataError, match=r"seven.tsv:3: label 7 is not one of the model's labels "
                                        r"\(0\.\.1 or negative, positive\)"):
        read_labelled_tsv(seven, label_names=names)
    with pytest.raises(DataError, match=r"ok.tsv:1: label 'great' is not an integer or one of the model's labels"):
        (tmp_path / "ok.tsv").write_text("a fine film\tgreat\n")
        read_labelled_tsv(ok, label_names=names)


def test_a_run_with_a_label_the_model_cannot_predict_exits_4_naming_file_and_line(tmp_path):
    from conftest import run_cli, write_config

    bad = tmp_path / "eval.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\na dull film\t7\n")
    r = run_cli("run", str(write_config(tmp_path / "cfg", model=DEMO / "model", eval_path=bad)))
    assert r.returncode == 4, r.stderr
    assert f"{bad}:3: label 7 is not one of the model's labels (0..1 or negative, positive)" in r.stderr
    assert not list((tmp_path / "cfg" / "out").glob("litegate-run-*"))  # nothing half-written left behind

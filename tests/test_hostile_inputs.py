"""Hostile inputs (issue 20, parts 5 and 8): text files, tokenizers, config.json values and budgets an attacker chose.

Each is refused with one line and its documented exit code, before anything slow starts, and leaves no work
directory behind.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import DEMO, ROOT, write_config

from litegate import tasks
from litegate.config import load
from litegate.converter.hf import MAX_PARAMETERS, BertConfig, GPT2Config
from litegate.errors import ConfigError, DataError, ModelLoadError
from litegate.tasks import TextEncoder, load_tokenizer, read_labelled_tsv, read_texts, token_ids

TEXTGEN = ROOT / "examples" / "textgen" / "char-gpt2"
BACKTRACKING = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}
# a template naming a token the vocabulary lacks: tokenizers panics ("no entry found for key") on every encode
MISSING_TOKEN_TEMPLATE = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[ZZZ]", "type_id": 0}}],
                          "pair": [], "special_tokens": {}}


def _tokenizer(tmp_path: Path, name: str, **changes: object) -> Path:
    raw = copy.deepcopy(json.loads((DEMO / "model" / "tokenizer.json").read_text()))
    raw.update(changes)
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


# --- part 5: text files are read a bounded line at a time ------------------------------------------------

def test_a_line_over_the_limit_is_refused_naming_file_and_line_without_reading_it(tmp_path):
    path = tmp_path / "eval.txt"
    with path.open("wb") as f:  # a sparse 8 MiB file: one short line, then 8 MiB of NULs without a newline
        f.write(b"a fine film\n")
        f.truncate(8 * tasks.MAX_LINE_BYTES)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"eval\.txt:2: calibration text line is longer than 1 MiB"):
            read_texts(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * tasks.MAX_LINE_BYTES, peak  # bounded by the line limit, not by the line
    tsv = tmp_path / "eval.tsv"
    tsv.write_bytes(b"sentence\tlabel\ngood\t1\n" + b"x" * (tasks.MAX_LINE_BYTES + 1) + b"\t0\n")
    with pytest.raises(DataError, match=r"eval\.tsv:3: evaluation data line is longer than 1 MiB"):
        read_labelled_tsv(tsv)


def test_a_file_over_the_size_limit_is_refused_and_reading_stops_at_the_lines_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "MAX_TEXT_FILE_BYTES", 1 << 20)
    big = tmp_path / "calibration.txt"
    big.write_bytes(b"a fine film\n" * 100_000)  # 1.1 MiB
    with pytest.raises(DataError, match=r"calibration\.txt: calibration text file is 1 MiB, over the 1 MiB limit"):
        read_texts(big)
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"one\ntwo\n\xff\xfe not UTF-8 past the lines asked for\n")
    assert read_texts(ok, limit=2) == ["one", "two"]


# --- part 5: tokenizers' failures and panics are one line ------------------------------------------------

def test_a_tokenizer_that_panics_on_load_is_a_model_load_error_without_rust_output(tmp_path, capfd):
    bad = _tokenizer(tmp_path, "tokenizer.json", post_processor=MISSING_TOKEN_TEMPLATE)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: cannot load tokenizer: the tokenizers library "
                                             r"panicked: no entry found for key"):
        TextEncoder(bad, 16)
    with pytest.raises(ModelLoadError, match="panicked"):
        load_tokenizer(bad)
    assert "panicked at" not in capfd.readouterr().err  # Rust's own panic report is held back
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": ')
    with pytest.raises(ModelLoadError, match=r"broken\.json: cannot load tokenizer"):
        TextEncoder(broken, 16)


def test_a_backtracking_regex_panic_while_encoding_is_a_data_error(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    tok = _tokenizer(tmp_path, "tokenizer.json", pre_tokenizer=BACKTRACKING)
    enc = TextEncoder(tok, 16)
    assert enc.encode(["a fine film"])["input_ids"].shape == (1, 16)
    with pytest.raises(DataError, match=r"eval\.tsv: cannot be tokenized with .*tokenizer\.json: the tokenizers "
                                        r"library panicked: Onig: Regex search error: retry-limit-in-match over"):
        enc.encode(["a" * 40 + "!"], source="eval.tsv")
    with pytest.raises(DataError, match=r"corpus\.txt: cannot be tokenized: the tokenizers library panicked"):
        token_ids(load_tokenizer(tok), "a" * 40 + "!", source="corpus.txt")
    err = capfd.readouterr().err
    assert "panicked at" not in err and "stack backtrace" not in err, err


def test_encoding_that_does_not_finish_is_abandoned_at_the_time_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "TOKENIZE_MIN_S", 0.3)
    tok = TextEncoder(_tokenizer(tmp_path, "tokenizer.json", pre_tokenizer=BACKTRACKING), 16)
    slow = ("a" * 20 + " ") * 60 + "!"  # ~20 ms of backtracking per run of a's, each under Oniguruma's retry limit
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"eval\.tsv: cannot be tokenized .*did not finish in 0\.3\d* s"):
        tok.encode([slow], source="eval.tsv")
    assert time.monotonic() - t0 < 1.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    return subprocess.run([sys.executable, "-m", "litegate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("case", ["long-line", "panic-on-load", "panic-on-text"])
def test_hostile_text_or_tokenizer_stops_the_run_with_one_line_and_no_work_directory(tmp_path, tiny_checkpoint, case):
    ev = tmp_path / "eval.tsv"
    ev.write_text("sentence\tlabel\na fine film\t1\n" + ("a" * 40 + "!\t0\n" if case == "panic-on-text" else ""))
    if case == "long-line":
        with ev.open("a") as f:
            f.write("x" * (2 << 20) + "\t0\n")
    cfg = write_config(tmp_path, model=tiny_checkpoint, eval_path=ev)
    if case != "long-line":
        changes = {"post_processor": MISSING_TOKEN_TEMPLATE} if case == "panic-on-load" else {"pre_tokenizer": BACKTRACKING}
        tok = _tokenizer(tmp_path, "tokenizer.json", **changes)
        cfg.write_text(cfg.read_text().replace("seq_len = 32", f'seq_len = 32\ntokenizer = "{tok}"'))
    r = _run("run", str(cfg))
    code, pattern = {"long-line": (4, "eval.tsv:3: evaluation data line is longer than 1 MiB"),
                     "panic-on-load": (3, "cannot load tokenizer: the tokenizers library panicked"),
                     "panic-on-text": (4, "eval.tsv: cannot be tokenized with")}[case]
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("litegate:")]
    assert len(lines) == 1 and pattern in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "panicked at" not in r.stderr, r.stderr
    out = tmp_path / "out"
    assert not list(out.glob("litegate-run-*")) and not (out / "report.json").exists()


# --- part 8: config.json values are checked before any conversion ----------------------------------------

def _bert_config(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads((DEMO / "model" / "config.json").read_text())
    raw.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))  # json writes NaN and Infinity as Python's json reads them
    return path


@pytest.mark.parametrize("changes,pattern", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer (at most 2147483647), got 0"),
    ({"vocab_size": "abc"}, "vocab_size must be a positive integer (at most 2147483647), got 'abc'"),
    ({"vocab_size": None}, "vocab_size must be a positive integer (at most 2147483647), got None"),
    ({"vocab_size": -5}, "vocab_size must be a positive integer (at most 2147483647), got -5"),
    ({"hidden_size": 1.5}, "hidden_size must be a positive integer (at most 2147483647), got 1.5"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer (at most 2147483647), got True"),
    ({"type_vocab_size": 0}, "type_vocab_size must be a positive integer"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size 30 is not divisible by num_attention_heads 4"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_eps must be a finite number in (0, 1), got nan"),
    ({"layer_norm_eps": float("inf")}, "layer_norm_eps must be a finite number in (0, 1), got inf"),
    ({"layer_norm_eps": 0}, "layer_norm_eps must be a finite number in (0, 1), got 0"),
    ({"layer_norm_eps": "1e-12"}, "layer_norm_eps must be a finite number in (0, 1), got '1e-12'"),
    ({"id2label": ["negative", "positive"]}, "id2label must be an object of class index -> name, got ['negative'"),
    ({"id2label": {"zero": "negative"}}, "id2label key 'zero' is not a class index"),
    ({"id2label": {"0": 1}}, "id2label['0'] must be a string, got 1"),
    ({"id2label": {"0": "a", "3": "b"}}, "id2label has class 3, but num_labels is 2"),
    ({"label2id": {"negative": 1, "positive": 0}}, "label2id['negative'] = 1 contradicts id2label"),
    ({"label2id": ["negative"]}, "label2id must be an object of name -> class index"),
    ({"num_labels": 0}, "num_labels must be a positive integer"),
    ({"num_hidden_layers": 1_000_000}, "the config describes a model of about 198 billion parameters (vocab_size 4096"),
    ({"hidden_size": 2**20, "num_attention_heads": 2}, "billion parameters"),
])
def test_malformed_bert_config_values_are_one_model_load_error_naming_key_and_value(tmp_path, changes, pattern):
    path = _bert_config(tmp_path, **changes)
    with pytest.raises(ModelLoadError) as exc:
        BertConfig.from_json_file(path)
    assert exc.value.message.startswith(f"{path}: ") and pattern in exc.value.message, exc.value.message


def test_good_configs_still_read_and_stale_label2id_defaults_are_left_alone(tmp_path):
    cfg = BertConfig.from_json_file(_bert_config(tmp_path, label2id={"LABEL_0": 0, "LABEL_1": 1}, vocab_size=30522.0))
    assert cfg.vocab_size == 30522 and dict(cfg.id2label) == {"0": "negative", "1": "positive"}
    assert cfg.parameters() < MAX_PARAMETERS
    assert GPT2Config.from_json_file(TEXTGEN / "config.json").n_layer == 4


@pytest.mark.parametrize("changes,pattern", [
    ({"n_head": 0}, "n_head must be a positive integer"),
    ({"n_embd": "128"}, "n_embd must be a positive integer (at most 2147483647), got '128'"),
    ({"n_positions": None}, "n_positions must be a positive integer"),
    ({"n_embd": 130}, "n_embd 130 is not divisible by n_head 4"),
    ({"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a finite number in (0, 1), got nan"),
    ({"n_layer": 100_000, "n_embd": 4096}, "billion parameters"),
])
def test_malformed_gpt2_config_values_are_one_model_load_error(tmp_path, changes, pattern):
    raw = {**json.loads((TEXTGEN / "config.json").read_text()), **changes}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="config.json: ") as exc:
        GPT2Config.from_json_file(path)
    assert pattern in exc.value.message, exc.value.message


def test_cli_refuses_a_malformed_config_json_with_exit_3_before_converting(tmp_path, tiny_checkpoint):
    ck = tmp_path / "ck"
    ck.mkdir()
    for f in tiny_checkpoint.iterdir():
        (ck / f.name).symlink_to(f)
    (ck / "config.json").unlink()
    (ck / "config.json").write_text(json.dumps({**json.loads((tiny_checkpoint / "config.json").read_text()),
                                                "num_attention_heads": 0}))
    out = tmp_path / "m.tflite"
    r = _run("convert", str(ck), "--seq-len", "16", "-o", str(out))
    assert r.returncode == 3, r.stderr
    assert "num_attention_heads must be a positive integer" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# --- part 8: release-config numbers are finite and in range ----------------------------------------------

@pytest.mark.parametrize("where,text,key", [
    ("budgets", "[budgets]\nmax_accuracy_drop = nan", "'budgets.max_accuracy_drop' must be a finite number, got nan"),
    ("budgets", "[budgets]\nmax_size_mb = inf", "'budgets.max_size_mb' must be a finite number, got inf"),
    ("budgets", "[budgets]\nmax_latency_p50_ms = -inf", "'budgets.max_latency_p50_ms' must be a finite number"),
    ("budgets", "[budgets]\nmin_accuracy = -1", "'budgets.min_accuracy' must be >= 0, got -1"),
    ("budgets", "[budgets.fp32]\nmin_cosine = nan", "'budgets.fp32.min_cosine' must be a finite number, got nan"),
    ("budgets", "[budgets]\nmin_delegated_ops_pct = { gpu = nan }",
     "'budgets.min_delegated_ops_pct.gpu' must be a finite number, got nan"),
    ("budgets", "[budgets]\nmin_delegated_ops_pct = { gpu = 101 }",
     "'budgets.min_delegated_ops_pct.gpu' must be >= 0 and <= 100, got 101"),
    ("bench", "timeout_s = nan", "'bench.timeout_s' must be a finite number, got nan"),
    ("bench", "timeout_s = 0", "'bench.timeout_s' must be > 0, got 0"),
    ("bench", "min_seconds = inf", "'bench.min_seconds' must be a finite number, got inf"),
    ("bench", "eval_threads = 0", "'bench.eval_threads' must be >= 1, got 0"),
    ("extra", "[limits]\nconvert_timeout_s = nan", "'limits.convert_timeout_s' must be a finite number, got nan"),
    ("extra", "[limits]\nmemory_mb = -1", "'limits.memory_mb' must be >= 0, got -1"),
    ("extra", "[gate]\nregression_threshold = nan", "'gate.regression_threshold' must be a finite number, got nan"),
    ("extra", "[gate]\nmax_size_increase = -0.5", "'gate.max_size_increase' must be >= 0, got -0.5"),
])
def test_non_finite_or_negative_numbers_in_the_release_config_are_refused_naming_the_key(
        tmp_path, tiny_checkpoint, where, text, key):
    if where == "budgets":
        path = write_config(tmp_path, model=tiny_checkpoint, budgets=text)
    elif where == "bench":
        path = write_config(tmp_path, model=tiny_checkpoint)
        name = text.split(" = ")[0]
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(f"{name} = ")]  # min_seconds is there
        path.write_text("\n".join(lines).replace("[bench]", f"[bench]\n{text}") + "\n")
    else:
        path = write_config(tmp_path, model=tiny_checkpoint, extra=text)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert key in exc.value.message and str(path) in exc.value.message, exc.value.message


def test_a_base_exception_that_is_no_exception_is_an_internal_error_not_exit_1(tmp_path, monkeypatch, capsys):
    """pyo3's PanicException derives from BaseException: one that slips through any guard still exits 10, one line."""
    from litegate import cli

    class PanicException(BaseException):
        pass

    def panic(*_args: object, **_kwargs: object) -> None:
        raise PanicException("no entry found for key\nsecond line")

    monkeypatch.setattr(cli, "load_config", panic)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(tmp_path / "release.toml")])
    assert exc.value.code == 10
    assert capsys.readouterr().err.strip() == ("litegate: internal error: PanicException: no entry found for key "
                                                "(rerun with -v for the traceback)")

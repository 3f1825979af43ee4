"""Tasks: turning text into model inputs, reading labelled data, and scoring outputs.

Nothing here imports TensorFlow: evaluation and cache-hit runs must not pay for it.

Text files are read as a stream, a bounded line at a time (:data:`MAX_LINE_BYTES`, :data:`MAX_TEXT_FILE_BYTES`), and
only as far as the lines asked for: a hostile file is refused before it is held in memory. Every call into the
``tokenizers`` library goes through :func:`_tokenizers_call`, so a Rust panic (a BaseException) or a tokenizer that
never returns becomes one line: :class:`ModelLoadError` while a tokenizer loads, :class:`DataError` while text encodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers.processors import BertProcessing

from litegate.errors import DataError, LitegateError, ModelLoadError

MAX_LINE_BYTES = 1 << 20  # 1 MiB: one evaluation, calibration or benchmark line (a sentence is ~100 bytes)
MAX_TEXT_FILE_BYTES = 512 << 20  # 512 MiB: a whole text or labelled-data file
# Encoding is bounded in time too: a pre-tokenizer regex that backtracks (within Oniguruma's retry limit) at every
# position of a long line takes hours. The bound grows with the text: a floor plus this slow a rate.
TOKENIZE_MIN_S = 60.0
TOKENIZE_MIN_CHARS_PER_S = 100_000
PROBE_TEXT = "A fine film, isn't it? 123 \u00e9t\u00e9."  # encoded once at load: a tokenizer that breaks on it is broken

_T = TypeVar("_T")
_NOT_OURS = (KeyboardInterrupt, SystemExit, GeneratorExit)  # what a tokenizer call must let through


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """Sentences with integer labels, read from ``path``."""

    path: str
    sentences: tuple[str, ...]
    labels: tuple[int, ...]


def _iter_lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of ``path``, read as a stream.

    Each line is read with a bounded ``readline``, so no more than :data:`MAX_LINE_BYTES` + 1 bytes are held however
    long the line is; a longer line, or more than :data:`MAX_TEXT_FILE_BYTES` in all, is refused (the size is checked
    up front, and again while reading: a file may grow, and /proc-like files report no size).

    Raises:
        DataError: missing file, a file or line over the limits, invalid UTF-8 (file and line named).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found")
    size = p.stat().st_size
    if size > MAX_TEXT_FILE_BYTES:
        raise DataError(f"{p}: {what} file is {size / 2**20:.0f} MiB, over the {MAX_TEXT_FILE_BYTES >> 20} MiB limit")
    total = 0
    try:
        f = p.open("rb")
    except OSError as exc:
        raise DataError(f"{p}: cannot read {what}: {exc.strerror or exc}") from None
    with f:
        for no in itertools.count(1):
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            total += len(line)
            body = line.rstrip(b"\n")
            if len(body) > MAX_LINE_BYTES:
                raise DataError(f"{p}:{no}: {what} line is longer than {MAX_LINE_BYTES >> 20} MiB (the limit per line)")
            if total > MAX_TEXT_FILE_BYTES:
                raise DataError(f"{p}: {what} file is over the {MAX_TEXT_FILE_BYTES >> 20} MiB limit")
            try:
                text = body.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as exc:
                raise DataError(f"{p}:{no}: {what} is not valid UTF-8 (byte {exc.start})") from None
            if text.strip():
                yield no, text


def read_labelled_tsv(path: str | Path, *, limit: int | None = None,
                      label_names: Mapping[int, str] | None = None) -> LabelledText:
    """Read ``sentence<TAB>label`` rows (a header row with ``label`` is skipped).

    With the model's ``label_names`` (class index -> name), a label is a class index or a class name (any case), and
    anything else is refused: a label the model cannot predict would only lower the accuracy quietly.

    Raises:
        DataError: missing file, invalid UTF-8, a malformed row, a label outside the model's classes, or no rows.
    """
    by_name = {name.lower(): i for i, name in (label_names or {}).items()}
    known = (f"{min(label_names)}..{max(label_names)} or {', '.join(label_names[i] for i in sorted(label_names))}"
             if label_names else "")
    sentences, labels = [], []
    for i, (no, text) in enumerate(_iter_lines(path, "evaluation data")):
        if i == 0 and text.lower().split("\t")[-1].strip() == "label":
            continue  # a header row
        parts = text.split("\t")
        if len(parts) < 2:
            raise DataError(f"{path}:{no}: expected 'sentence<TAB>label'")
        raw = parts[-1].strip()
        try:
            label = int(raw)
        except ValueError:
            if raw.lower() not in by_name:
                raise DataError(f"{path}:{no}: label {raw!r} is not an integer"
                                + (f" or one of the model's labels ({known})" if known else "")) from None
            label = by_name[raw.lower()]
        if label_names and label not in label_names:
            raise DataError(f"{path}:{no}: label {label} is not one of the model's labels ({known})")
        sentences.append("\t".join(parts[:-1]).strip())
        labels.append(label)
        if limit and len(sentences) >= limit:
            break
    if not sentences:
        raise DataError(f"{path}: evaluation data has no rows")
    return LabelledText(str(path), tuple(sentences), tuple(labels))


def read_texts(path: str | Path, *, limit: int | None = None) -> list[str]:
    """Read calibration text: one sentence per line, or the sentence column of a TSV.

    Raises:
        DataError: missing file, invalid UTF-8 (file and line named) or no text.
    """
    texts: list[str] = []
    for i, (_, line) in enumerate(_iter_lines(path, "calibration text")):
        if i == 0 and "\t" in line and line.lower().split("\t")[-1].strip() == "label":
            continue  # a TSV's header row
        text = line.split("\t")[0].strip() if "\t" in line else line.strip()
        if text:
            texts.append(text)
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise DataError(f"{path}: calibration text is empty")
    return texts


@contextlib.contextmanager
def _stderr_held() -> Iterator[list[bool]]:
    """Hold what is written to file descriptor 2 inside the block; give it back unless the block sets ``[0]`` False.

    Rust prints a panic on stderr itself (with ``RUST_BACKTRACE`` set, a backtrace of dozens of lines) before pyo3
    raises it in Python: a failure that litegate reports in one line must not leave that behind.
    """
    keep = [True]
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 to hold: run the block as is
        yield keep
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield keep
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if keep[0]:
                sink.seek(0)
                held = sink.read()
                if held:
                    os.write(2, held)


def _tokenizers_call(fn: Callable[[], _T], fail: Callable[[str], LitegateError], *,
                     timeout_s: float | None = None) -> _T:
    """``fn()``, a call into the ``tokenizers`` library, with any failure raised as ``fail(reason)``.

    tokenizers raises plain Exceptions for what it checks, but a Rust panic for what it does not (a pre-tokenizer
    regex over Oniguruma's retry limit, a template naming a token the vocabulary lacks): pyo3's ``PanicException``
    derives from BaseException, so ``except Exception`` lets it through as a traceback and exit 1. Both become
    ``fail``; Ctrl-C and exits pass. The panic Rust prints itself is held back (:func:`_stderr_held`).

    With ``timeout_s`` the call runs in a daemon thread (tokenizers releases the GIL while it encodes) and is
    abandoned, still running, when it has not returned in time: Rust code cannot be interrupted, and the thread
    ends with the process, which stops on the error raised here.
    """
    result: list[_T] = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException; _NOT_OURS is re-raised below
            failure.append(exc)

    with _stderr_held() as keep:
        if timeout_s is None:
            call()
        else:
            worker = threading.Thread(target=call, name="litegate-tokenize", daemon=True)
            worker.start()
            worker.join(timeout_s)
            if worker.is_alive():
                keep[0] = False
                raise fail(f"tokenizing did not finish in {timeout_s:.3g} s (a pre-tokenizer regex that backtracks?)")
        if failure:
            keep[0] = False
    if failure:
        exc = failure[0]
        if isinstance(exc, _NOT_OURS):
            raise exc
        if isinstance(exc, LitegateError):
            raise exc
        panic = not isinstance(exc, Exception)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise fail(f"{'the tokenizers library panicked: ' if panic else ''}{first}") from None
    return result[0]


def _pad_token(tok: Any) -> str:
    """The padding token: the tokenizer.json's own, else BERT's ``[PAD]``, else ``<pad>`` (RoBERTa, XLM-R:
    id 1, where id 0 is ``<s>``), else ``[PAD]`` (id 0 when the vocabulary has no such token)."""
    own = tok.padding.get("pad_token") if tok.padding else None
    if own and tok.token_to_id(own) is not None:
        return str(own)
    return next((t for t in ("[PAD]", "<pad>") if tok.token_to_id(t) is not None), "[PAD]")


def _encode_timeout(texts: list[str] | tuple[str, ...]) -> float:
    return TOKENIZE_MIN_S + sum(len(t) for t in texts) / TOKENIZE_MIN_CHARS_PER_S


class TextEncoder:
    """WordPiece/BPE tokenization (the ``tokenizers`` library) to fixed-length model inputs."""

    def __init__(self, tokenizer_path: str | Path, seq_len: int) -> None:
        p = Path(tokenizer_path)
        self.path = p
        self.tokenizer = _tokenizers_call(lambda: self._load(p, seq_len),
                                          lambda why: ModelLoadError(f"{p}: cannot load tokenizer: {why}"),
                                          timeout_s=TOKENIZE_MIN_S)
        self.seq_len = seq_len

    @staticmethod
    def _load(p: Path, seq_len: int) -> Any:
        tok = Tokenizer.from_file(str(p)) if p.suffix == ".json" else BertWordPieceTokenizer(str(p), lowercase=True)._tokenizer
        pad_token = _pad_token(tok)
        tok.no_padding()
        tok.no_truncation()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is not None and sep_id is not None and tok.encode("a").ids[:1] != [cls_id]:
            # A WordPiece vocab whose tokenizer.json lacks BERT's template (e.g. trained from an
            # iterator): without [CLS] first, the pooler reads the first word instead.

            tok.post_processor = BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
        tok.enable_truncation(max_length=seq_len)
        pad_id = tok.token_to_id(pad_token)
        tok.enable_padding(length=seq_len, pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
        tok.encode_batch([PROBE_TEXT, ""])  # a tokenizer that fails on plain text is broken, not the data
        return tok

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def to_json(self) -> str:
        return str(self.tokenizer.to_str())

    def encode(self, texts: list[str] | tuple[str, ...], *, source: str | Path | None = None) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids`` as int32 arrays [N, seq_len].

        Raises:
            DataError: the tokenizer fails (or panics, or does not finish) on the text; ``source`` names its file.
        """
        batch = list(texts)
        encs = _tokenizers_call(
            lambda: self.tokenizer.encode_batch(batch),
            lambda why: DataError(f"{source or 'text'}: cannot be tokenized with {self.path}: {why}"),
            timeout_s=_encode_timeout(batch))
        ids = np.array([e.ids for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        types = np.array([e.type_ids for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# Model input names seen in the wild, per role (HF, TF-Hub BERT, older TF BERT exports).
INPUT_ROLES: dict[str, tuple[str, ...]] = {
    "input_ids": ("input_ids", "input_word_ids", "word_ids", "token_ids", "ids"),
    "attention_mask": ("attention_mask", "input_mask", "padding_mask", "mask"),
    "token_type_ids": ("token_type_ids", "input_type_ids", "segment_ids", "type_ids"),
}


def role_of(input_name: str) -> str | None:
    """The role (``input_ids`` / ``attention_mask`` / ``token_type_ids``) of a model input name."""
    name = input_name.lower()
    for prefix in ("serving_default_",):
        name = name.removeprefix(prefix)
    name = name.split(":")[0]
    for role, aliases in INPUT_ROLES.items():
        if name in aliases:
            return role
    for role, aliases in INPUT_ROLES.items():  # e.g. "bert_input_word_ids"
        if any(name.endswith(a) for a in aliases if len(a) > 3):
            return role
    return None


def feed_for(input_names: list[str], encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map encoded text onto a model's input names by role.

    Raises:
        ModelLoadError: an input whose role cannot be recognised.
    """
    feed = {}
    for name in input_names:
        role = name if name in encoded else role_of(name)
        if role is None or role not in encoded:
            raise ModelLoadError(f"model input {name!r} is not a recognised text input "
                                 f"(expected one of {', '.join(a for v in INPUT_ROLES.values() for a in v)})")
        feed[name] = encoded[role]
    return feed


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 in percent."""
    pred = np.argmax(logits, axis=-1)
    labels = np.asarray(labels)
    acc = float(np.mean(pred == labels) * 100.0)
    f1s = []
    for c in np.unique(np.concatenate([labels, pred])):
        tp = float(np.sum((pred == c) & (labels == c)))
        fp = float(np.sum((pred == c) & (labels != c)))
        fn = float(np.sum((pred != c) & (labels == c)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "f1_macro": float(np.mean(f1s) * 100.0)}


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Percent of samples whose argmax matches the reference's argmax."""
    return float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)) * 100.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


# --- text generators: tokenizers and token windows -------------------------------------------------

HELD_OUT_FRACTION = 0.1  # the training scripts hold out the last 10% of a text corpus


def load_tokenizer(path: Path) -> Any:
    """A ``tokenizers`` Tokenizer from tokenizer.json, or GPT-2's vocab.json + merges.txt folder.

    Raises:
        ModelLoadError: no tokenizer there, or one that cannot be read or fails (or panics) on plain text.
    """
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
            raise ModelLoadError(f"{path}: no tokenizer.json, or vocab.json + merges.txt")

    def load() -> Any:
        if path.is_dir():
            tok = ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))._tokenizer
        else:
            tok = Tokenizer.from_file(str(path))
            tok.no_padding()
            tok.no_truncation()
        tok.encode(PROBE_TEXT)
        return tok

    return _tokenizers_call(load, lambda why: ModelLoadError(f"{path}: cannot load tokenizer: {why}"),
                            timeout_s=TOKENIZE_MIN_S)


def token_ids(tokenizer: Any, text: str, *, source: str | Path | None = None) -> list[int]:
    """The token ids of ``text`` under a tokenizer from :func:`load_tokenizer` (no special tokens added).

    Raises:
        DataError: the tokenizer fails (or panics, or does not finish) on the text; ``source`` names its file.
    """
    return _tokenizers_call(lambda: list(tokenizer.encode(text).ids),
                            lambda why: DataError(f"{source or 'text'}: cannot be tokenized: {why}"),
                            timeout_s=_encode_timeout([text]))


def generator_windows(tokenizer_path: Path, texts: list[str], seq_len: int, limit: int, *,
                      source: str | Path | None = None) -> dict[str, np.ndarray]:
    """Token windows for a text generator: ``tokens`` [N, seq_len] and next-token ``labels``.

    The texts are joined with newlines, tokenized once, and cut into non-overlapping windows of
    ``seq_len + 1`` tokens (inputs are the first ``seq_len``, labels the last ``seq_len``).

    Raises:
        DataError: the text is shorter than one window, or cannot be tokenized.
    """
    tok = load_tokenizer(tokenizer_path)
    ids = np.asarray(token_ids(tok, "\n".join(texts), source=source), dtype=np.int32)
    n = min(len(ids) // (seq_len + 1), limit)
    if n < 1:
        raise DataError(f"recovery text has {len(ids)} tokens, fewer than one window of {seq_len + 1}")
    windows = ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    return {"tokens": windows[:, :-1].copy(), "labels": windows[:, 1:].copy()}


def lm_windows(text_ids: list[int], window: int, count: int) -> np.ndarray:
    """``count`` evenly spaced windows of ``window`` token ids from the held-out tail of a corpus."""
    start = int(len(text_ids) * (1 - HELD_OUT_FRACTION))
    tail = np.asarray(text_ids[start:], np.int32)
    if len(tail) < window + 1:
        tail = np.asarray(text_ids, np.int32)
    span = len(tail) - window
    if span < 0:
        raise ValueError(f"text has {len(tail)} tokens, fewer than one window of {window}")
    offsets = np.linspace(0, span, num=max(1, count)).astype(int)
    return np.stack([tail[o : o + window] for o in offsets])

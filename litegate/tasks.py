"""Tasks: turning text into model inputs, reading labelled data, and scoring outputs.

Nothing here imports TensorFlow: evaluation and cache-hit runs must not pay for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers.processors import BertProcessing

from litegate.errors import DataError, ModelLoadError


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """Sentences with integer labels, read from ``path``."""

    path: str
    sentences: tuple[str, ...]
    labels: tuple[int, ...]


def _read_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found")
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for no, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}:{no}: {what} is not valid UTF-8 (byte {exc.start})") from None
        if text.strip():
            out.append((no, text))
    return out


def read_labelled_tsv(path: str | Path, *, limit: int | None = None,
                      label_names: Mapping[int, str] | None = None) -> LabelledText:
    """Read ``sentence<TAB>label`` rows (a header row with ``label`` is skipped).

    With the model's ``label_names`` (class index -> name), a label is a class index or a class name (any case), and
    anything else is refused: a label the model cannot predict would only lower the accuracy quietly.

    Raises:
        DataError: missing file, invalid UTF-8, a malformed row, a label outside the model's classes, or no rows.
    """
    rows = _read_lines(path, "evaluation data")
    if rows and rows[0][1].lower().split("\t")[-1].strip() == "label":
        rows = rows[1:]
    by_name = {name.lower(): i for i, name in (label_names or {}).items()}
    known = (f"{min(label_names)}..{max(label_names)} or {', '.join(label_names[i] for i in sorted(label_names))}"
             if label_names else "")
    sentences, labels = [], []
    for no, text in rows:
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
    rows = _read_lines(path, "calibration text")
    if rows and "\t" in rows[0][1] and rows[0][1].lower().split("\t")[-1].strip() == "label":
        rows = rows[1:]
    texts = [t.split("\t")[0].strip() if "\t" in t else t.strip() for _, t in rows]
    texts = [t for t in texts if t]
    if limit:
        texts = texts[:limit]
    if not texts:
        raise DataError(f"{path}: calibration text is empty")
    return texts


class TextEncoder:
    """WordPiece/BPE tokenization (the ``tokenizers`` library) to fixed-length model inputs."""

    def __init__(self, tokenizer_path: str | Path, seq_len: int) -> None:
        p = Path(tokenizer_path)
        try:
            if p.suffix == ".json":
                tok = Tokenizer.from_file(str(p))
            else:
                tok = BertWordPieceTokenizer(str(p), lowercase=True)._tokenizer
        except Exception as exc:  # tokenizers raises plain Exceptions
            raise ModelLoadError(f"{p}: cannot load tokenizer: {exc}") from None
        tok.no_padding()
        tok.no_truncation()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is not None and sep_id is not None and tok.encode("a").ids[:1] != [cls_id]:
            # A WordPiece vocab whose tokenizer.json lacks BERT's template (e.g. trained from an
            # iterator): without [CLS] first, the pooler reads the first word instead.

            tok.post_processor = BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
        tok.enable_truncation(max_length=seq_len)
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(length=seq_len, pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.tokenizer = tok
        self.seq_len = seq_len

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def to_json(self) -> str:
        return str(self.tokenizer.to_str())

    def encode(self, texts: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids`` as int32 arrays [N, seq_len]."""
        encs = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        types = np.array([e.type_ids for e in encs], dtype=np.int32).reshape(len(encs), self.seq_len)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# Model input names seen in the wild, per role (HF, TF-Hub BERT, older TF BERT exports).
INPUT_ROLES: dict[str, tuple[str, ...]] = {
    "input_ids": ("input_ids", "input_word_ids", "word_ids", "token_ids", "ids"),
    "attention_mask": ("attention_mask", "input_mask", "mask"),
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
    """A ``tokenizers`` Tokenizer from tokenizer.json, or GPT-2's vocab.json + merges.txt folder."""
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return ByteLevelBPETokenizer(str(path / "vocab.json"), str(path / "merges.txt"))._tokenizer
        else:
            raise ModelLoadError(f"{path}: no tokenizer.json, or vocab.json + merges.txt")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise ModelLoadError(f"{path}: cannot load tokenizer: {exc}") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def generator_windows(tokenizer_path: Path, texts: list[str], seq_len: int, limit: int) -> dict[str, np.ndarray]:
    """Token windows for a text generator: ``tokens`` [N, seq_len] and next-token ``labels``.

    The texts are joined with newlines, tokenized once, and cut into non-overlapping windows of
    ``seq_len + 1`` tokens (inputs are the first ``seq_len``, labels the last ``seq_len``).

    Raises:
        DataError: the text is shorter than one window.
    """
    tok = load_tokenizer(tokenizer_path)
    ids = np.asarray(tok.encode("\n".join(texts)).ids, dtype=np.int32)
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

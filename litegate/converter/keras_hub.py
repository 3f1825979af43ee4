"""What a keras-hub ``.keras`` file carries besides the graph: its tokenizer and its sequence lengths.

A keras-hub task (``BertTextClassifier``, ``DistilBertTextClassifier``, ``RobertaTextClassifier``, ...) saves its
preprocessor inside the ``.keras`` archive: the tokenizer's class and options in ``config.json`` and its vocabulary
as an asset (``assets/preprocessor/tokenizer/vocabulary.txt`` for WordPiece, ``vocabulary.json`` + ``merges.txt``
for byte-pair encoding). The exported graph takes token ids, so litegate rebuilds the same tokenizer as a
``tokenizers`` tokenizer.json (:func:`keras_hub_tokenizer`), which then travels with the .tflite like any other.
Nothing here imports Keras or TensorFlow, and nothing in the archive is run: the archive is read as a zip.

The backbone's ``max_sequence_length`` bounds the static sequence length, and the preprocessor's
``sequence_length`` is the default one (:func:`read_keras_hub`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from litegate.errors import ModelLoadError

WORDPIECE = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer", "WordPieceTokenizer")
BYTE_PAIR = ("RobertaTokenizer", "GPT2Tokenizer", "BytePairTokenizer")


@dataclasses.dataclass(frozen=True)
class KerasHubModel:
    """A keras-hub model's class, tokenizer and sequence lengths, read from its ``.keras`` archive."""

    class_name: str
    tokenizer_class: str | None
    tokenizer_config: dict[str, Any]
    assets: dict[str, str]  # asset file name (vocabulary.txt, ...) -> its path in the archive
    sequence_length: int | None  # the preprocessor's
    max_sequence_length: int | None  # the backbone's


def _objects(config: Any) -> Iterator[dict[str, Any]]:
    """Every serialised Keras object in a config tree."""
    if isinstance(config, dict):
        if "class_name" in config:
            yield config
        for value in config.values():
            yield from _objects(value)
    elif isinstance(config, list):
        for value in config:
            yield from _objects(value)


def _keras_hub(obj: dict[str, Any]) -> bool:
    return str(obj.get("registered_name") or "").startswith("keras_hub>") or \
        str(obj.get("module") or "").startswith("keras_hub")


def _int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_keras_hub(path: Path) -> KerasHubModel | None:
    """The :class:`KerasHubModel` of the ``.keras`` file at ``path``, or None when it is not a keras-hub model."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            names = z.namelist()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path}: cannot read the .keras archive: {exc}") from None
    if not isinstance(config, dict) or not _keras_hub(config):
        return None
    hub = [o for o in _objects(config) if _keras_hub(o)]
    tokenizers = [o for o in hub if str(o["class_name"]).endswith("Tokenizer")]
    preprocessors = [o for o in hub if "sequence_length" in (o.get("config") or {}) and o not in tokenizers]
    backbones = [o for o in hub if str(o["class_name"]).endswith("Backbone")]
    assets = {n.rsplit("/", 1)[-1]: n for n in names if n.startswith("assets/") and "/tokenizer/" in n}
    return KerasHubModel(
        class_name=str(config["class_name"]),
        tokenizer_class=str(tokenizers[0]["class_name"]) if tokenizers else None,
        tokenizer_config=dict(tokenizers[0].get("config") or {}) if tokenizers else {},
        assets=assets,
        sequence_length=_int(preprocessors[0]["config"], "sequence_length") if preprocessors else None,
        max_sequence_length=_int(backbones[0].get("config") or {}, "max_sequence_length") if backbones else None,
    )


def _build(model: KerasHubModel, z: zipfile.ZipFile, workdir: Path) -> Any:
    """The ``tokenizers`` tokenizer the keras-hub tokenizer describes."""
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    cfg = model.tokenizer_config
    if model.tokenizer_class in WORDPIECE and "vocabulary.txt" in model.assets:
        vocab = workdir / "vocabulary.txt"
        vocab.write_bytes(z.read(model.assets["vocabulary.txt"]))
        return BertWordPieceTokenizer(str(vocab), lowercase=bool(cfg.get("lowercase", False)),
                                      strip_accents=bool(cfg.get("strip_accents", False)),
                                      wordpieces_prefix=str(cfg.get("suffix_indicator", "##")),
                                      unk_token=str(cfg.get("oov_token", "[UNK]")))
    if model.tokenizer_class in BYTE_PAIR and {"vocabulary.json", "merges.txt"} <= set(model.assets):
        vocab, merges = workdir / "vocab.json", workdir / "merges.txt"
        vocab.write_bytes(z.read(model.assets["vocabulary.json"]))
        merges.write_bytes(z.read(model.assets["merges.txt"]))
        tok = ByteLevelBPETokenizer(str(vocab), str(merges))
        if model.tokenizer_class == "RobertaTokenizer":
            bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
            if bos is not None and eos is not None:
                tok.post_processor = RobertaProcessing(("</s>", eos), ("<s>", bos))
        return tok
    return None


def keras_hub_tokenizer(path: Path) -> Path | None:
    """A tokenizer.json equal to the tokenizer inside the keras-hub ``.keras`` file at ``path``.

    None when the file is not a keras-hub model or holds no tokenizer (a bare backbone). The file is written once
    per archive content under the system's temporary directory and reused.

    Raises:
        ModelLoadError: a keras-hub tokenizer litegate cannot rebuild (SentencePiece ones: pass ``--tokenizer``).
    """
    model = read_keras_hub(path)
    if model is None or model.tokenizer_class is None:
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"litegate-{os.getuid()}" / "keras-hub" / f"{digest}.tokenizer.json"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, zipfile.ZipFile(path) as z:
        tok = _build(model, z, Path(tmp))
        if tok is None:
            raise ModelLoadError(f"{path}: its {model.tokenizer_class} (assets: {', '.join(model.assets) or 'none'}) "
                                 "cannot be rebuilt as a tokenizers tokenizer; pass --tokenizer tokenizer.json")
        scratch = Path(tmp) / "tokenizer.json"
        tok.save(str(scratch))
        os.replace(scratch, out)
    return out

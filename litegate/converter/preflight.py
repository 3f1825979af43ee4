"""Cheap checks of a model source in the parent process, before any child starts (no TensorFlow here).

What the source is (architecture, sizes, labels), whether ``seq_len`` fits it, and which tokenizer
travels with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litegate.converter.hf import BertConfig, GPT2Config, tokenizer_file
from litegate.errors import ModelLoadError
from litegate.tflite.verify import verify_tflite
from litegate.types import ModelSource, SourceKind


def source_tokenizer(source: ModelSource) -> Path | None:
    """The tokenizer that travels with ``source``: an explicit option, or the checkpoint's own."""
    if source.options.get("tokenizer"):
        return Path(str(source.options["tokenizer"]))
    if source.kind in (SourceKind.HF_BERT, SourceKind.HF_GPT2):
        return tokenizer_file(Path(source.path))
    if source.kind is SourceKind.KERAS and (Path(source.path).parent / "tokenizer.json").is_file():
        return Path(source.path).parent / "tokenizer.json"
    if source.kind is SourceKind.TFLITE:
        return find_tokenizer(Path(source.path))
    return None


def check_source(source: ModelSource) -> dict[str, Any]:
    """Cheap checks before any child process starts; returns what is known about the model."""
    path, seq_len = Path(source.path), source.seq_len
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if source.kind is SourceKind.HF_BERT:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        bert = BertConfig.from_json_file(path / "config.json")
        if seq_len > bert.max_position_embeddings:
            raise ModelLoadError(f"{path}: seq_len {seq_len} is larger than the model's max_position_embeddings "
                                 f"{bert.max_position_embeddings}")
        return {"architecture": "bert", "layers": bert.num_hidden_layers, "hidden": bert.hidden_size,
                "heads": bert.num_attention_heads, "intermediate": bert.intermediate_size,
                "vocab_size": bert.vocab_size,
                "labels": ({str(i): str(lab) for i, lab in enumerate(source.options["labels"])}
                           if source.options.get("labels") else dict(bert.id2label))}
    if source.kind is SourceKind.HF_GPT2:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        gpt2 = GPT2Config.from_json_file(path / "config.json")
        dims = {"vocab_size": gpt2.vocab_size, "n_positions": gpt2.n_positions, "n_embd": gpt2.n_embd,
                "n_layer": gpt2.n_layer, "n_head": gpt2.n_head}
        max_len = int(source.options.get("max_len", dims["n_positions"]))
        if max_len > dims["n_positions"] or seq_len > max_len:
            raise ModelLoadError(f"{path}: prefill length {seq_len} and cache length {max_len} must not exceed the "
                                 f"model's n_positions {dims['n_positions']}")
        return {"architecture": "gpt2", **dims}
    if source.kind is SourceKind.SAVED_MODEL:
        if not path.is_dir() or not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path}: not a TensorFlow SavedModel folder (no saved_model.pb)")
        return {"architecture": "saved_model"}
    if source.kind is SourceKind.KERAS:
        if not path.is_file():
            raise ModelLoadError(f"{path}: a keras source must be a .keras or .h5 file")
        return {"architecture": "keras"}
    verify_tflite(path)
    return {"architecture": "tflite"}


def find_tokenizer(model: Path) -> Path:
    for cand in (model.with_suffix(".tokenizer.json"), model.parent / "tokenizer.json"):
        if cand.is_file():
            return cand
    raise ModelLoadError(f"{model}: no tokenizer sidecar ({model.with_suffix('.tokenizer.json').name} "
                         "or tokenizer.json next to it); pass --tokenizer")

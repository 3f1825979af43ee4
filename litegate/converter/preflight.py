"""Cheap checks of a model source in the parent process, before any child starts (no TensorFlow here).

What the source is (architecture, sizes, labels), whether ``seq_len`` fits it, and which tokenizer
travels with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litegate.converter.detect import resolve
from litegate.converter.hf import BertConfig, GPT2Config, tokenizer_file
from litegate.converter.hf_llama import LlamaConfig
from litegate.converter.keras_hub import keras_hub_tokenizer, read_keras_hub
from litegate.errors import ModelLoadError
from litegate.tflite.verify import verify_tflite
from litegate.types import ModelSource, SourceKind


def source_tokenizer(source: ModelSource) -> Path | None:
    """The tokenizer that travels with ``source``: an explicit option, or the checkpoint's own."""
    if source.options.get("tokenizer"):
        return Path(str(source.options["tokenizer"]))
    if source.kind in (SourceKind.HF, *SourceKind.checkpoints()):
        return tokenizer_file(Path(source.path))
    if source.kind is SourceKind.KERAS:
        inside = keras_hub_tokenizer(Path(source.path)) if Path(source.path).is_file() else None
        if inside is not None:  # a keras-hub model's own tokenizer, from its preprocessor's assets
            return inside
        if (Path(source.path).parent / "tokenizer.json").is_file():
            return Path(source.path).parent / "tokenizer.json"
    if source.kind is SourceKind.TFLITE:
        return find_tokenizer(Path(source.path))
    return None


def check_source(source: ModelSource) -> dict[str, Any]:
    """Cheap checks before any child process starts; returns what is known about the model."""
    path, seq_len = Path(source.path), source.seq_len
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if source.kind is SourceKind.HF:  # callers that did not resolve it (the CLI and the config loader do)
        source = resolve(source, head_given=True, task_given=True)
    if source.kind is SourceKind.HF_BERT:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        bert = BertConfig.from_json_file(path / "config.json")
        if seq_len > bert.max_seq_len:
            raise ModelLoadError(f"{path}: seq_len {seq_len} is larger than the model's max_position_embeddings "
                                 f"{bert.max_position_embeddings}" + (f" less its first {bert.position_offset} "
                                 "(padding_idx + 1)" if bert.position_offset else ""))
        return {"architecture": bert.model_type, "layers": bert.num_hidden_layers, "hidden": bert.hidden_size,
                "heads": bert.num_attention_heads, "intermediate": bert.intermediate_size,
                "vocab_size": bert.vocab_size,
                "labels": ({str(i): str(lab) for i, lab in enumerate(source.options["labels"])}
                           if source.options.get("labels") else dict(bert.id2label))}
    if source.kind in SourceKind.decoders():
        dims, positions = _decoder_dims(source)
        max_len = int(source.options.get("max_len", _default_cache(source.kind, positions)))
        if max_len > positions or seq_len > max_len:
            key = "n_positions" if source.kind is SourceKind.HF_GPT2 else "max_position_embeddings"
            raise ModelLoadError(f"{path}: prefill length {seq_len} and cache length {max_len} must not exceed the "
                                 f"model's {key} {positions}")
        return dims
    if source.kind is SourceKind.SAVED_MODEL:
        if not path.is_dir() or not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path}: not a TensorFlow SavedModel folder (no saved_model.pb)")
        return {"architecture": "saved_model"}
    if source.kind is SourceKind.KERAS:
        if not path.is_file():
            raise ModelLoadError(f"{path}: a keras source must be a .keras or .h5 file")
        hub = read_keras_hub(path)
        if hub is None:
            return {"architecture": "keras"}
        if hub.max_sequence_length and seq_len > hub.max_sequence_length:
            raise ModelLoadError(f"{path}: seq_len {seq_len} is larger than the model's max_sequence_length "
                                 f"{hub.max_sequence_length}")
        return {"architecture": f"keras-hub {hub.class_name}"}
    verify_tflite(path)
    return {"architecture": "tflite"}


DEFAULT_CACHE = 1024  # a Llama-family export's KV-cache positions when max_len is not given (at most the model's)


def _decoder_dims(source: ModelSource) -> tuple[dict[str, Any], int]:
    """A decoder checkpoint's architecture and sizes, and its maximum positions, from its config.json."""
    path = Path(source.path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
    if source.kind is SourceKind.HF_GPT2:
        gpt2 = GPT2Config.from_json_file(path / "config.json")
        return {"architecture": "gpt2", "vocab_size": gpt2.vocab_size, "n_positions": gpt2.n_positions,
                "n_embd": gpt2.n_embd, "n_layer": gpt2.n_layer, "n_head": gpt2.n_head}, gpt2.n_positions
    llama = LlamaConfig.from_json_file(path / "config.json")
    positions = llama.max_position_embeddings
    return {"architecture": llama.model_type, "vocab_size": llama.vocab_size,
            "max_position_embeddings": positions, "layers": llama.num_hidden_layers, "hidden": llama.hidden_size,
            "heads": llama.num_attention_heads, "kv_heads": llama.num_key_value_heads}, positions


def decoder_positions(source: ModelSource) -> int:
    """The default KV-cache length of a decoder export: GPT-2's n_positions; a Llama-family model's maximum
    positions up to :data:`DEFAULT_CACHE` (their configs allow 2k to 128k positions, too large a cache for a phone)."""
    return _default_cache(source.kind, _decoder_dims(source)[1])


def _default_cache(kind: SourceKind, positions: int) -> int:
    return positions if kind is SourceKind.HF_GPT2 else min(positions, DEFAULT_CACHE)


def find_tokenizer(model: Path) -> Path:
    for cand in (model.with_suffix(".tokenizer.json"), model.parent / "tokenizer.json"):
        if cand.is_file():
            return cand
    raise ModelLoadError(f"{model}: no tokenizer sidecar ({model.with_suffix('.tokenizer.json').name} "
                         "or tokenizer.json next to it); pass --tokenizer")

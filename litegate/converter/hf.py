"""Reading Hugging Face checkpoint folders (config.json, model.safetensors, vocab.txt / tokenizer.json).

No TensorFlow here: this module is imported on cache hits and by the evaluators.
"""

from __future__ import annotations

import dataclasses
import dataclasses as _dc
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from litegate.errors import ModelLoadError

SUPPORTED_BERT_TYPES = ("bert",)
SUPPORTED_ACTS = ("gelu", "gelu_new", "relu")


def read_config_json(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict, or a one-line ModelLoadError."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: config is not a JSON object")
    return raw


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The subset of a Hugging Face ``BertConfig`` that decides the graph."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    num_labels: int = 2
    id2label: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: Path) -> BertConfig:
        raw = read_config_json(path)
        model_type = raw.get("model_type", "bert")
        if model_type not in SUPPORTED_BERT_TYPES:
            raise ModelLoadError(
                f"{path}: model_type {model_type!r} is not supported by the hf-bert source "
                f"(supported: {', '.join(SUPPORTED_BERT_TYPES)})"
            )
        act = raw.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTS:
            raise ModelLoadError(f"{path}: hidden_act {act!r} is not supported (supported: {', '.join(SUPPORTED_ACTS)})")
        try:
            id2label = {str(k): str(v) for k, v in (raw.get("id2label") or {}).items()}
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                hidden_act=act,
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                num_labels=int(raw.get("num_labels", len(id2label) or 2)),
                id2label=id2label,
            )
        except KeyError as exc:
            raise ModelLoadError(f"{path}: missing key {exc.args[0]!r}") from None
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ModelLoadError(f"{path}: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads")
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = "bert"
        d["architectures"] = ["BertForSequenceClassification"]
        d["id2label"] = dict(self.id2label)
        d["label2id"] = {v: int(k) for k, v in self.id2label.items()}
        return d


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder, read."""

    root: Path
    config: BertConfig
    tensors: Mapping[str, np.ndarray]
    prefix: str  # "bert." for *ForSequenceClassification checkpoints, "" for bare encoders

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` (without the prefix), checked against the expected shape."""
        full = self.prefix + name if not name.startswith("classifier.") else name
        candidates = [full]
        if full.endswith(".weight") and "LayerNorm" in full:
            candidates.append(full[: -len("weight")] + "gamma")
        if full.endswith(".bias") and "LayerNorm" in full:
            candidates.append(full[: -len("bias")] + "beta")
        for c in candidates:
            if c in self.tensors:
                arr = self.tensors[c]
                if tuple(arr.shape) != tuple(shape):
                    raise ModelLoadError(
                        f"{self.root}: tensor {c!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}"
                    )
                return np.asarray(arr, dtype=np.float32)
        raise ModelLoadError(f"{self.root}: checkpoint is missing tensor {full!r}")


def tokenizer_file(root: Path) -> Path:
    for name in ("tokenizer.json", "vocab.txt"):
        if (root / name).is_file():
            return root / name
    raise ModelLoadError(f"{root}: no tokenizer.json or vocab.txt next to the checkpoint")


def _config_path(root: Path) -> Path:
    path = root / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{root}: not a Hugging Face checkpoint (no config.json)")
    return path


def _safetensors(root: Path) -> dict[str, np.ndarray]:
    """The tensors of ``root/model.safetensors`` (the only checkpoint format read)."""
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{root}: no model.safetensors (only safetensors checkpoints are read)")
    try:
        return load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{weights}: cannot read safetensors: {exc}") from None


def read_checkpoint(path: str | Path, extra_weights: str | Path | None = None) -> Checkpoint:
    """Read a Hugging Face BERT checkpoint folder, optionally with extra tensors (e.g. a trained head).

    ``extra_weights`` is a safetensors file whose tensors are added to (never replace) the
    checkpoint's; a ``classifier.weight`` there sets ``num_labels``.

    Raises:
        ModelLoadError: the folder, config or weights are missing or unreadable.
    """
    root = Path(path)
    if not root.exists():
        raise ModelLoadError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise ModelLoadError(f"{root}: an hf-bert source must be a checkpoint folder")
    config = BertConfig.from_json_file(_config_path(root))
    tensors = _safetensors(root)
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    if extra_weights:
        extra_path = Path(extra_weights)
        try:
            extra = load_file(str(extra_path))
        except Exception as exc:  # missing file or bad safetensors
            raise ModelLoadError(f"{extra_path}: cannot read extra weights: {exc}") from None
        clash = sorted(set(extra) & set(tensors))
        if clash:
            raise ModelLoadError(f"{extra_path}: tensor {clash[0]!r} is already in the checkpoint")
        tensors = {**tensors, **extra}
        if "classifier.weight" in extra:
            config = _dc.replace(config, num_labels=int(extra["classifier.weight"].shape[0]))
    return Checkpoint(root=root, config=config, tensors=tensors, prefix=prefix)


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The subset of a Hugging Face ``GPT2Config`` that decides the graph."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_json_file(cls, path: Path) -> GPT2Config:
        raw = read_config_json(path)
        if raw.get("model_type", "gpt2") != "gpt2":
            raise ModelLoadError(f"{path}: model_type {raw.get('model_type')!r} is not supported by the hf-gpt2 "
                                 "source (supported: gpt2)")
        act = raw.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu", "relu"):
            raise ModelLoadError(f"{path}: activation_function {act!r} is not supported")
        try:
            cfg = cls(vocab_size=int(raw["vocab_size"]), n_positions=int(raw["n_positions"]), n_embd=int(raw["n_embd"]),
                      n_layer=int(raw["n_layer"]), n_head=int(raw["n_head"]),
                      layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)), activation_function=act)
        except KeyError as exc:
            raise ModelLoadError(f"{path}: missing key {exc.args[0]!r}") from None
        if cfg.n_embd % cfg.n_head:
            raise ModelLoadError(f"{path}: n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}


def read_gpt2(path: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray], str]:
    """Read a Hugging Face GPT-2 checkpoint folder: config, tensors, name prefix (no TensorFlow needed)."""
    root = Path(path)
    cfg = GPT2Config.from_json_file(_config_path(root))
    tensors = _safetensors(root)
    prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
    return cfg, tensors, prefix

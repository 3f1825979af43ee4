"""Reading Hugging Face checkpoint folders (config.json, model.safetensors, vocab.txt / tokenizer.json).

No TensorFlow here: this module is imported on cache hits and by the evaluators.

Every config.json value litegate builds a graph from is checked before any conversion starts (the rules are the
tables :data:`BERT_SIZES` and :data:`GPT2_SIZES`, and the helpers below them): sizes are positive integers, the
hidden size divides into the heads, layer-norm epsilons are finite and in (0, 1), ``id2label`` maps class indices to
names (and ``label2id`` does not contradict it), and the model the sizes describe has at most
:data:`MAX_PARAMETERS` parameters. Anything else is a one-line :class:`ModelLoadError` naming the file, the key and
the value, not a NaN model, a division by zero in the conversion child or a conversion that runs out its timeout.
"""

from __future__ import annotations

import dataclasses
import dataclasses as _dc
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from litegate.errors import ModelLoadError

# model_type -> (tensor-name prefix of its *ForSequenceClassification checkpoints, that class's name)
BERT_FAMILIES: dict[str, tuple[str, str]] = {
    "bert": ("bert.", "BertForSequenceClassification"),
    "distilbert": ("distilbert.", "DistilBertForSequenceClassification"),
    "roberta": ("roberta.", "RobertaForSequenceClassification"),
    "xlm-roberta": ("roberta.", "XLMRobertaForSequenceClassification"),
    "electra": ("electra.", "ElectraForSequenceClassification"),
    "albert": ("albert.", "AlbertForSequenceClassification"),
    "mobilebert": ("mobilebert.", "MobileBertForSequenceClassification"),
}
SUPPORTED_BERT_TYPES = tuple(BERT_FAMILIES)
HEAD_TENSORS = ("classifier.", "pre_classifier.")  # task-head tensors, named without the encoder's prefix
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


_REQUIRED = object()
MAX_SIZE = 2**31 - 1  # any one size: TFLite shapes are int32
MAX_PARAMETERS = 2_000_000_000  # a bigger model is not a mobile model, and its conversion would only run out the timeout

# config.json sizes read, per architecture: key -> default (_REQUIRED: the key must be there)
BERT_SIZES: dict[str, Any] = {"vocab_size": _REQUIRED, "hidden_size": _REQUIRED, "num_hidden_layers": _REQUIRED,
                              "num_attention_heads": _REQUIRED, "intermediate_size": _REQUIRED,
                              "max_position_embeddings": _REQUIRED, "type_vocab_size": 2}
DISTILBERT_SIZES: dict[str, Any] = {"vocab_size": _REQUIRED, "dim": _REQUIRED, "n_layers": _REQUIRED,
                                    "n_heads": _REQUIRED, "hidden_dim": _REQUIRED, "max_position_embeddings": _REQUIRED}
DISTILBERT_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                    "hidden_dim": "intermediate_size", "activation": "hidden_act"}  # DistilBERT key -> BertConfig field
MOBILEBERT_SIZES: dict[str, Any] = {"embedding_size": 128, "intra_bottleneck_size": 128, "num_feedforward_networks": 4}
# MobileBERT's switches: config.json key -> transformers' default
MOBILEBERT_FLAGS = {"trigram_input": True, "use_bottleneck": True, "use_bottleneck_attention": False,
                    "key_query_shared_bottleneck": True, "classifier_activation": True}
NORMALIZATION_TYPES = ("no_norm", "layer_norm")
GPT2_SIZES: dict[str, Any] = {"vocab_size": _REQUIRED, "n_positions": _REQUIRED, "n_embd": _REQUIRED,
                              "n_layer": _REQUIRED, "n_head": _REQUIRED}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sizes(raw: Mapping[str, Any], rules: Mapping[str, Any], path: Path) -> dict[str, int]:
    """The sizes ``rules`` names, each a positive integer (an integral float such as ``768.0`` is read as one)."""
    out = {}
    for key, default in rules.items():
        if key not in raw:
            if default is _REQUIRED:
                raise ModelLoadError(f"{path}: missing key {key!r}")
            out[key] = int(default)
            continue
        value = raw[key]
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or not 1 <= value <= MAX_SIZE:
            raise ModelLoadError(f"{path}: {key} must be a positive integer (at most {MAX_SIZE}), got {_shown(value)}")
        out[key] = int(value)
    return out


def _epsilon(raw: Mapping[str, Any], key: str, default: float, path: Path) -> float:
    """A layer-norm epsilon: a finite number in (0, 1) (NaN would make every output NaN)."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and 0 < value < 1):
        raise ModelLoadError(f"{path}: {key} must be a finite number in (0, 1), got {_shown(value)}")
    return float(value)


def _divisible(sizes: Mapping[str, int], hidden: str, heads: str, path: Path) -> None:
    if sizes[hidden] % sizes[heads]:
        raise ModelLoadError(f"{path}: {hidden} {sizes[hidden]} is not divisible by {heads} {sizes[heads]}")


def _class_index(key: Any) -> int | None:
    """A class index written as JSON allows it (``"3"`` as an object key, ``3`` as a value), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():
        return int(key)
    return None


def _labels(raw: Mapping[str, Any], path: Path) -> tuple[dict[str, str], int]:
    """``id2label`` (class index -> name, keys as decimal strings, by index) and ``num_labels``.

    ``label2id``, when there, must be a name -> index object that does not contradict ``id2label`` (names that
    ``id2label`` does not have, such as transformers' stale ``LABEL_0`` defaults, are left alone).
    """
    id2label = raw.get("id2label")
    if id2label is None:
        id2label = {}
    if not isinstance(id2label, dict):
        raise ModelLoadError(f"{path}: id2label must be an object of class index -> name, got {_shown(id2label)}")
    names: dict[int, str] = {}
    for key, name in id2label.items():
        index = _class_index(key)
        if index is None:
            raise ModelLoadError(f"{path}: id2label key {_shown(key)} is not a class index (0, 1, ...)")
        if not isinstance(name, str):
            raise ModelLoadError(f"{path}: id2label[{key!r}] must be a string, got {_shown(name)}")
        if index in names:
            raise ModelLoadError(f"{path}: id2label names class {index} twice")
        names[index] = name
    label2id = raw.get("label2id")
    if label2id is not None:
        if not isinstance(label2id, dict):
            raise ModelLoadError(f"{path}: label2id must be an object of name -> class index, got {_shown(label2id)}")
        by_name = {name: index for index, name in names.items()}
        for name, value in label2id.items():
            index = _class_index(value)
            if index is None:
                raise ModelLoadError(f"{path}: label2id[{name!r}] must be a class index, got {_shown(value)}")
            if name in by_name and by_name[name] != index:
                raise ModelLoadError(f"{path}: label2id[{name!r}] = {index} contradicts id2label, which gives "
                                     f"{name!r} class {by_name[name]}")
    num_labels = _sizes(raw, {"num_labels": len(names) or 2}, path)["num_labels"]
    if names and max(names) >= num_labels:
        raise ModelLoadError(f"{path}: id2label has class {max(names)}, but num_labels is {num_labels}")
    return {str(i): names[i] for i in sorted(names)}, num_labels


def _at_most_max_parameters(count: int, sizes: Mapping[str, int], path: Path) -> None:
    if count > MAX_PARAMETERS:
        described = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ModelLoadError(f"{path}: the config describes a model of about {count / 1e9:.3g} billion parameters "
                             f"({described}); litegate refuses more than {MAX_PARAMETERS / 1e9:g} billion")


def _activation(raw: Mapping[str, Any], key: str, default: str, path: Path) -> str:
    act = raw.get(key, default)
    if act not in SUPPORTED_ACTS:
        raise ModelLoadError(f"{path}: {key} {_shown(act)} is not supported (supported: {', '.join(SUPPORTED_ACTS)})")
    return str(act)


def _flag(raw: Mapping[str, Any], key: str, default: bool, path: Path) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ModelLoadError(f"{path}: {key} must be true or false, got {_shown(value)}")
    return value


@dataclasses.dataclass(frozen=True)
class MobileBertOptions:
    """MobileBERT's own config.json keys (transformers' ``MobileBertConfig``), read under their names."""

    intra_bottleneck_size: int = 128
    num_feedforward_networks: int = 4
    trigram_input: bool = True
    use_bottleneck: bool = True
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    classifier_activation: bool = True
    normalization_type: str = "no_norm"  # "no_norm": x * weight + bias; "layer_norm"

    def true_hidden_size(self, hidden_size: int) -> int:
        """The width attention and the feed-forward networks work in (transformers recomputes it from these keys)."""
        return self.intra_bottleneck_size if self.use_bottleneck else hidden_size

    @property
    def shared_query_key(self) -> bool:
        """Query and key read ``bottleneck.attention``'s output and value the layer input (transformers' default)."""
        return self.use_bottleneck and not self.use_bottleneck_attention and self.key_query_shared_bottleneck


def _mobilebert_fields(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """MobileBERT's :class:`BertConfig` fields; its combinations transformers cannot run are one line."""
    sizes = _sizes(raw, {**BERT_SIZES, **MOBILEBERT_SIZES}, path)
    norm = raw.get("normalization_type", "no_norm")
    if norm not in NORMALIZATION_TYPES:
        raise ModelLoadError(f"{path}: normalization_type {_shown(norm)} is not supported "
                             f"(supported: {', '.join(NORMALIZATION_TYPES)})")
    options = MobileBertOptions(intra_bottleneck_size=sizes.pop("intra_bottleneck_size"),
                                num_feedforward_networks=sizes.pop("num_feedforward_networks"),
                                normalization_type=str(norm),
                                **{k: _flag(raw, k, d, path) for k, d in MOBILEBERT_FLAGS.items()})
    true_hidden = options.true_hidden_size(sizes["hidden_size"])
    if true_hidden % sizes["num_attention_heads"]:
        raise ModelLoadError(f"{path}: the attention width {true_hidden} (intra_bottleneck_size with use_bottleneck, "
                             f"else hidden_size) is not divisible by num_attention_heads {sizes['num_attention_heads']}")
    if (options.use_bottleneck and not options.use_bottleneck_attention and not options.key_query_shared_bottleneck
            and true_hidden != sizes["hidden_size"]):
        raise ModelLoadError(f"{path}: key_query_shared_bottleneck false (with use_bottleneck_attention false) feeds "
                             f"the hidden state ({sizes['hidden_size']} wide) to query and key of width "
                             f"intra_bottleneck_size {true_hidden}; transformers cannot run it either")
    return {**sizes, "layer_norm_eps": _epsilon(raw, "layer_norm_eps", 1e-12, path),
            "hidden_act": _activation(raw, "hidden_act", "relu", path), "mobilebert": options}


def _family_fields(raw: Mapping[str, Any], model_type: str, path: Path) -> dict[str, Any]:
    """The :class:`BertConfig` fields (labels aside) a config.json of ``model_type`` describes, checked."""
    if model_type == "distilbert":  # its own key names; no token types, layer-norm epsilon fixed at 1e-12
        sizes = _sizes(raw, DISTILBERT_SIZES, path)
        _divisible(sizes, "dim", "n_heads", path)
        return {**{DISTILBERT_NAMES.get(k, k): v for k, v in sizes.items()}, "type_vocab_size": 0,
                "hidden_act": _activation(raw, "activation", "gelu", path)}
    if model_type == "mobilebert":  # its own keys: MobileBertOptions
        return _mobilebert_fields(raw, path)
    sizes = _sizes(raw, BERT_SIZES, path)
    _divisible(sizes, "hidden_size", "num_attention_heads", path)
    fields: dict[str, Any] = {**sizes, "layer_norm_eps": _epsilon(raw, "layer_norm_eps", 1e-12, path),
                              "hidden_act": _activation(raw, "hidden_act", "gelu_new" if model_type == "albert" else "gelu", path)}
    if model_type in ("roberta", "xlm-roberta"):  # positions count from padding_idx + 1
        fields["position_offset"] = _sizes(raw, {"pad_token_id": 1}, path)["pad_token_id"] + 1
    if model_type in ("electra", "albert"):
        fields["embedding_size"] = _sizes(raw, {"embedding_size": 128}, path)["embedding_size"]
    for key in ("num_hidden_groups", "inner_group_num") if model_type == "albert" else ():
        if _sizes(raw, {key: 1}, path)[key] != 1:
            raise ModelLoadError(f"{path}: {key} {raw[key]} is not supported (litegate converts ALBERT with one "
                                 f"shared layer: num_hidden_groups 1, inner_group_num 1)")
    return fields


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The subset of a Hugging Face BERT-family config that decides the graph (``model_type``: see
    :data:`BERT_FAMILIES`; DistilBERT's keys are read under BERT's names, :data:`DISTILBERT_NAMES`)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2  # 0: no token-type table (DistilBERT)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    num_labels: int = 2
    id2label: Mapping[str, str] = dataclasses.field(default_factory=dict)
    model_type: str = "bert"
    embedding_size: int = 0  # factorised embeddings (ELECTRA, ALBERT); 0: hidden_size
    position_offset: int = 0  # first position row used (RoBERTa, XLM-R: padding_idx + 1)
    mobilebert: MobileBertOptions | None = None  # MobileBERT's own keys (model_type "mobilebert" only)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def projects_embeddings(self) -> bool:
        """Embeddings projected to hidden_size (ALBERT always, ELECTRA when the sizes differ)."""
        return self.model_type == "albert" or self.embedding_width != self.hidden_size

    @property
    def shared_layers(self) -> bool:
        """One layer's weights applied num_hidden_layers times (ALBERT)."""
        return self.model_type == "albert"

    @property
    def max_seq_len(self) -> int:
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_json_file(cls, path: Path) -> BertConfig:
        raw = read_config_json(path)
        model_type = raw.get("model_type", "bert")
        if model_type not in SUPPORTED_BERT_TYPES:
            raise ModelLoadError(
                f"{path}: model_type {_shown(model_type)} is not supported by the hf-bert source "
                f"(supported: {', '.join(SUPPORTED_BERT_TYPES)})"
            )
        fields = _family_fields(raw, model_type, path)
        id2label, num_labels = _labels(raw, path)
        cfg = cls(**fields, num_labels=num_labels, id2label=id2label, model_type=model_type)
        if cfg.max_seq_len < 1:
            raise ModelLoadError(f"{path}: max_position_embeddings {cfg.max_position_embeddings} leaves no position "
                                 f"after the first {cfg.position_offset} (pad_token_id + 1)")
        _at_most_max_parameters(cfg.parameters(), {k: v for k, v in fields.items() if isinstance(v, int)}, path)
        return cfg

    def parameters(self) -> int:
        """How many parameters the graph built from this config holds (pooler and classifier included)."""
        h, i, e = self.hidden_size, self.intermediate_size, self.embedding_width
        if self.mobilebert is not None:
            return self._mobilebert_parameters(self.mobilebert)
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * e + 2 * e
        projection = e * h + h if self.projects_embeddings else 0
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        layers = 1 if self.shared_layers else self.num_hidden_layers
        return embeddings + projection + layers * layer + h * h + h + self.num_labels * (h + 1)

    def _mobilebert_parameters(self, m: MobileBertOptions) -> int:
        h, i, e, t = self.hidden_size, self.intermediate_size, self.embedding_width, m.true_hidden_size(self.hidden_size)
        embeddings = self.vocab_size * e + (self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        if m.trigram_input or e != h:
            embeddings += (3 * e if m.trigram_input else e) * h + h
        bottleneck = 0
        if m.use_bottleneck:
            bottleneck = (h * t + 3 * t) * (2 if m.shared_query_key else 1) + t * h + 3 * h
        value_in = t if m.use_bottleneck_attention or not m.use_bottleneck else h
        attention = 4 * (t * t + t) + (value_in - t) * t + 2 * t  # query, key, value, output dense; norm
        ffn = 2 * t * i + i + 3 * t
        layer = bottleneck + attention + m.num_feedforward_networks * ffn
        pooler = h * h + h if m.classifier_activation else 0
        return embeddings + self.num_hidden_layers * layer + pooler + self.num_labels * (h + 1)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json :meth:`from_json_file` reads back as this config (in its family's key names)."""
        d = dataclasses.asdict(self)
        mobilebert = d.pop("mobilebert")
        if mobilebert is not None:
            d.update(mobilebert)
        for key, absent in (("model_type", None), ("embedding_size", 0), ("position_offset", 0)):
            if d.pop(key) != absent and key == "embedding_size":
                d["embedding_size"] = self.embedding_size
        if self.position_offset:
            d["pad_token_id"] = self.position_offset - 1
        if self.model_type == "distilbert":
            names = {v: k for k, v in DISTILBERT_NAMES.items()}
            d = {names.get(k, k): v for k, v in d.items() if k not in ("type_vocab_size", "layer_norm_eps")}
        d["model_type"] = self.model_type
        d["architectures"] = [BERT_FAMILIES[self.model_type][1]]
        d["id2label"] = dict(self.id2label)
        d["label2id"] = {v: int(k) for k, v in self.id2label.items()}
        return d


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder, read."""

    root: Path
    config: BertConfig
    tensors: Mapping[str, np.ndarray]
    prefix: str  # "bert." ("roberta.", ...) for *ForSequenceClassification checkpoints, "" for bare encoders

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` (without the prefix), checked against the expected shape."""
        full = prefixed(name, self.prefix)
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


def prefixed(name: str, prefix: str) -> str:
    """A tensor's checkpoint name: the encoder's under ``prefix``, the task head's (:data:`HEAD_TENSORS`) as is."""
    return name if name.startswith(HEAD_TENSORS) else prefix + name


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
        if any(root.glob("pytorch_model*.bin")) or any(root.glob("model*.safetensors.index.json")):
            raise ModelLoadError(f"{root}: no model.safetensors; litegate reads one safetensors file, not PyTorch "
                                 ".bin pickles (reading them needs torch and runs the pickle's code) or sharded "
                                 "checkpoints: save it with transformers' save_pretrained(safe_serialization=True, "
                                 "max_shard_size='100GB')")
        raise ModelLoadError(f"{root}: no model.safetensors (only safetensors checkpoints are read)")
    try:
        return load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{weights}: cannot read safetensors: {exc}") from None


def read_checkpoint(path: str | Path, extra_weights: str | Path | None = None) -> Checkpoint:
    """Read a Hugging Face BERT-family checkpoint folder, optionally with extra tensors (e.g. a trained head).

    ``extra_weights`` is a safetensors file whose tensors are added to (never replace) the
    checkpoint's; a ``classifier.weight`` (or ``classifier.out_proj.weight``) there sets ``num_labels``.

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
    family_prefix = BERT_FAMILIES[config.model_type][0]
    prefix = family_prefix if any(k.startswith(family_prefix) for k in tensors) else ""
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
        head = next((k for k in ("classifier.weight", "classifier.out_proj.weight") if k in extra), None)
        if head is not None:
            config = _dc.replace(config, num_labels=int(extra[head].shape[0]))
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
        sizes = _sizes(raw, GPT2_SIZES, path)
        _divisible(sizes, "n_embd", "n_head", path)
        cfg = cls(**sizes, layer_norm_epsilon=_epsilon(raw, "layer_norm_epsilon", 1e-5, path), activation_function=act)
        _at_most_max_parameters(cfg.parameters(), sizes, path)
        return cfg

    def parameters(self) -> int:
        """How many parameters the graph built from this config holds (the LM head is tied to the embeddings)."""
        e = self.n_embd
        return (self.vocab_size + self.n_positions) * e + self.n_layer * (12 * e * e + 13 * e) + 2 * e

    def to_hf_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}


def read_gpt2(path: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray], str]:
    """Read a Hugging Face GPT-2 checkpoint folder: config, tensors, name prefix (no TensorFlow needed)."""
    root = Path(path)
    cfg = GPT2Config.from_json_file(_config_path(root))
    tensors = _safetensors(root)
    prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
    return cfg, tensors, prefix

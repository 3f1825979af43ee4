"""Reading Hugging Face Llama-architecture checkpoints (``llama``, ``qwen2``, ``mistral``): config and tensors.

No TensorFlow here (preflight and the evaluators import it). The graph is built by :mod:`litegate.converter.llama`.

Every config.json value the graph is built from is checked with the helpers of :mod:`litegate.converter.hf`: sizes
are positive integers, ``num_attention_heads`` is a multiple of ``num_key_value_heads``, ``rms_norm_eps`` is in
(0, 1), ``rope_theta`` is a finite positive number, ``rope_scaling`` is absent, ``linear`` or ``llama3`` (with its
factors), ``hidden_act`` is ``silu`` and the model has at most :data:`~litegate.converter.hf.MAX_PARAMETERS`
parameters. Anything else is a one-line :class:`~litegate.errors.ModelLoadError`.

``qwen2`` adds biases to the q/k/v projections; ``llama``'s ``attention_bias`` adds them to q/k/v/o and ``mlp_bias``
to the MLP. Mistral's (and Qwen2's) sliding-window attention is not built: a cache longer than ``sliding_window`` is
refused when the signatures are traced (shorter, the window never drops a position, so the graphs are the same).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from litegate.converter.hf import (
    _REQUIRED,
    _at_most_max_parameters,
    _config_path,
    _divisible,
    _epsilon,
    _safetensors,
    _shown,
    _sizes,
    read_config_json,
)
from litegate.errors import ModelLoadError

SUPPORTED_LLAMA_TYPES = ("llama", "qwen2", "mistral")
ROPE_SCALINGS = ("linear", "llama3")
LLAMA_SIZES: dict[str, Any] = {"vocab_size": _REQUIRED, "hidden_size": _REQUIRED, "intermediate_size": _REQUIRED,
                               "num_hidden_layers": _REQUIRED, "num_attention_heads": _REQUIRED,
                               "max_position_embeddings": _REQUIRED}


def _number(raw: Mapping[str, Any], key: str, default: float, path: Path, *, at_least: float = 0.0,
            label: str = "") -> float:
    """A finite number > 0 (``at_least`` 0), or >= ``at_least``; errors name ``label + key``."""
    value = raw.get(key, default)
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or not (value > at_least if at_least == 0.0 else value >= at_least):
        bound = "> 0" if at_least == 0.0 else f">= {at_least:g}"
        raise ModelLoadError(f"{path}: {label}{key} must be a finite number {bound}, got {_shown(value)}")
    return float(value)


def _flag(raw: Mapping[str, Any], key: str, default: bool, path: Path) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelLoadError(f"{path}: {key} must be true or false, got {_shown(value)}")
    return value


def _rope_parameters(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``raw`` with transformers 5's ``rope_parameters`` (``rope_theta`` and the scaling in one object) read as the
    ``rope_theta`` and ``rope_scaling`` keys of earlier configs."""
    params = raw.get("rope_parameters")
    if params is None:
        return raw
    if not isinstance(params, dict):
        raise ModelLoadError(f"{path}: rope_parameters must be an object, got {_shown(params)}")
    out = dict(raw)
    if "rope_theta" in params:
        out["rope_theta"] = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    out["rope_scaling"] = scaling if scaling.get("rope_type", scaling.get("type", "default")) != "default" else None
    return out


def _rope_scaling(raw: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """``rope_scaling`` as ``{"type": "linear", "factor"}`` or ``{"type": "llama3", "factor", ...}``, or None."""
    value = raw.get("rope_scaling")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: rope_scaling must be an object or null, got {_shown(value)}")
    kind = value.get("rope_type", value.get("type"))
    if kind == "default":
        return None
    if kind not in ROPE_SCALINGS:
        raise ModelLoadError(f"{path}: rope_scaling type {kind!r} is not supported (supported: "
                             f"{', '.join(ROPE_SCALINGS)} or none)")
    where = "rope_scaling."
    out: dict[str, Any] = {"type": kind, "factor": _number(value, "factor", math.nan, path, at_least=1.0, label=where)}
    if kind == "llama3":
        out["low_freq_factor"] = _number(value, "low_freq_factor", 1.0, path, label=where)
        out["high_freq_factor"] = _number(value, "high_freq_factor", 4.0, path, label=where)
        orig = _sizes(value, {"original_max_position_embeddings": 8192}, path)
        out["original_max_position_embeddings"] = orig["original_max_position_embeddings"]
        if out["high_freq_factor"] <= out["low_freq_factor"]:
            raise ModelLoadError(f"{path}: rope_scaling high_freq_factor {out['high_freq_factor']:g} must be larger "
                                 f"than low_freq_factor {out['low_freq_factor']:g}")
    return out


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The subset of a Hugging Face ``LlamaConfig`` (or ``Qwen2Config``, ``MistralConfig``) that decides the graph."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"

    @classmethod
    def from_json_file(cls, path: Path) -> LlamaConfig:
        raw = _rope_parameters(read_config_json(path), path)
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_LLAMA_TYPES:
            raise ModelLoadError(f"{path}: model_type {model_type!r} is not a Llama-architecture model "
                                 f"(supported: {', '.join(SUPPORTED_LLAMA_TYPES)})")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ModelLoadError(f"{path}: hidden_act {act!r} is not supported (supported: silu)")
        sizes = _sizes(raw, LLAMA_SIZES, path)
        heads = sizes["num_attention_heads"]
        extra = _sizes({k: v for k, v in raw.items() if not (k == "num_key_value_heads" and v is None)},
                       {"num_key_value_heads": heads}, path)
        if raw.get("head_dim") is None:  # transformers writes null for "hidden_size // num_attention_heads"
            _divisible(sizes, "hidden_size", "num_attention_heads", path)
            extra["head_dim"] = sizes["hidden_size"] // heads
        else:
            extra |= _sizes(raw, {"head_dim": _REQUIRED}, path)
        _divisible({**sizes, **extra}, "num_attention_heads", "num_key_value_heads", path)
        if extra["head_dim"] % 2:
            raise ModelLoadError(f"{path}: head_dim {extra['head_dim']} must be even (rotary embeddings)")
        qwen = model_type == "qwen2"
        attention_bias = _flag(raw, "attention_bias", False, path)
        window: int | None = None
        sliding = raw.get("sliding_window")
        if sliding is not None and (not qwen or _flag(raw, "use_sliding_window", False, path)):
            window = _sizes(raw, {"sliding_window": _REQUIRED}, path)["sliding_window"]
        cfg = cls(**sizes, **extra, rms_norm_eps=_epsilon(raw, "rms_norm_eps", 1e-6, path),
                  rope_theta=_number(raw, "rope_theta", 10000.0, path), rope_scaling=_rope_scaling(raw, path),
                  tie_word_embeddings=_flag(raw, "tie_word_embeddings", False, path),
                  qkv_bias=qwen or attention_bias, o_bias=attention_bias and not qwen,
                  mlp_bias=_flag(raw, "mlp_bias", False, path), sliding_window=window, model_type=model_type)
        _at_most_max_parameters(cfg.parameters(), {**sizes, **extra}, path)
        return cfg

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def parameters(self) -> int:
        """How many parameters the graph built from this config holds (the LM head counted when untied)."""
        h, i = self.hidden_size, self.intermediate_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        attn += (self.q_size + 2 * self.kv_size) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        layer = attn + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * layer + h + head

    def inv_freq(self) -> np.ndarray:
        """The rotary inverse frequencies ``[head_dim / 2]`` (float64), with ``rope_scaling`` applied."""
        d = self.head_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        s = self.rope_scaling
        if s is None:
            return inv
        factor = float(s["factor"])
        if s["type"] == "linear":
            return inv / factor
        low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)

    def rope_tables(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin ``[length, head_dim]`` (float32) for positions ``0 .. length - 1``, halves repeated."""
        freqs = np.outer(np.arange(length, dtype=np.float64), self.inv_freq())
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def to_hf_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("qkv_bias", "o_bias", "mlp_bias", "sliding_window")}
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        d["hidden_act"] = "silu"
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
        d["architectures"] = [arch[self.model_type]]
        if self.model_type == "llama":
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = self.mlp_bias
        return d


def tensor_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the graph reads, by Hugging Face name without the ``model.`` prefix (``lm_head.weight`` when
    untied, with its own name), and its shape (``nn.Linear`` weights are ``[out, in]``)."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    out: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, h)}
    for n in range(cfg.num_hidden_layers):
        p = f"layers.{n}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        for name, size in (("q_proj", cfg.q_size), ("k_proj", cfg.kv_size), ("v_proj", cfg.kv_size)):
            out[p + f"self_attn.{name}.weight"] = (size, h)
            if cfg.qkv_bias:
                out[p + f"self_attn.{name}.bias"] = (size,)
        out[p + "self_attn.o_proj.weight"] = (h, cfg.q_size)
        if cfg.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        for name, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            out[p + f"mlp.{name}.weight"] = shape
            if cfg.mlp_bias:
                out[p + f"mlp.{name}.bias"] = (shape[0],)
    out["norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    return out


def full_name(name: str, prefix: str) -> str:
    """The checkpoint's name of ``name`` (``lm_head.weight`` carries no prefix)."""
    return name if name == "lm_head.weight" else prefix + name


INDEX = "model.safetensors.index.json"


def _sharded(root: Path) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint: ``model.safetensors.index.json``'s ``weight_map`` names the shard files
    (in the folder itself) that hold each tensor."""
    index = read_config_json(root / INDEX)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"{root / INDEX}: weight_map must be an object of tensor name -> shard file")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise ModelLoadError(f"{root / INDEX}: shard {_shown(shard)} is not a .safetensors file in the folder")
        if not (root / shard).is_file():
            raise ModelLoadError(f"{root}: shard {shard} named by {INDEX} is missing")
        try:
            tensors.update(load_file(str(root / shard)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{root / shard}: cannot read safetensors: {exc}") from None
    return tensors


def read_llama(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray], str]:
    """Read a Hugging Face Llama-architecture checkpoint folder: config, tensors, name prefix (``model.`` or "").

    The tensors come from ``model.safetensors``, or from the shards ``model.safetensors.index.json`` names; float32,
    float16 and bfloat16 tensors are read alike (:func:`checked_tensors` makes them float32)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"{root}: no such checkpoint folder")
    cfg = LlamaConfig.from_json_file(_config_path(root))
    sharded = not (root / "model.safetensors").is_file() and (root / INDEX).is_file()
    tensors = _sharded(root) if sharded else _safetensors(root)
    prefix = "model." if any(k.startswith("model.") for k in tensors) else ""
    return cfg, tensors, prefix


def checked_tensors(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """The config and every tensor the graph reads (by name without prefix, float32), each checked for presence
    and shape (one-line :class:`ModelLoadError`)."""
    cfg, tensors, prefix = read_llama(path)
    out = {}
    for name, shape in tensor_shapes(cfg).items():
        key = full_name(name, prefix)
        if key not in tensors:
            raise ModelLoadError(f"{path}: checkpoint is missing tensor {key!r}")
        arr = tensors[key]
        if tuple(arr.shape) != shape:
            raise ModelLoadError(f"{path}: tensor {key!r} has shape {tuple(arr.shape)}, expected {shape}")
        out[name] = np.asarray(arr, np.float32)
    return cfg, out

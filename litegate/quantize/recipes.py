"""Quantization recipes: JSON data files shipped with the package, resolved by name or path."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from litegate.errors import ConfigError
from litegate.types import Recipe, RecipeKind

_ALLOWED_PARAMS = {
    "optimizations": list,
    "supported_types": list,
    "supported_ops": list,
    "inference_input_type": str,
    "inference_output_type": str,
    "allow_select_tf_ops": bool,
    "denylisted_ops": list,
    "denylisted_nodes": list,
    "budget": float,
    "min_cosine": float,
    "max_steps": int,
    "rank_samples": int,
    "smooth_residual": float,
    "mask_penalty": float,
    "integer_pooling": bool,
    "litert_quantizer": dict,
    "fp32_guard": bool,
    "max_fp32_latency_ratio": float,
    "islands": str,
    "plain_gather": bool,
    "qat": dict,
    "generator_quantizer": str,
    "weight_rounding": str,
    "symmetric_matmul_operands": bool,
}
# The params that respell litegate's BERT for integer quantization (litegate.quantize.build.int8_spelling): calibrated
# recipes of one model with equal values share one calibration.
SPELLING = ("smooth_residual", "mask_penalty", "integer_pooling", "plain_gather")


def spelling(recipe: Recipe) -> tuple[Any, Any, bool, bool]:
    """``recipe``'s int8 spelling: (smooth_residual, mask_penalty, integer_pooling, plain_gather), None or False where
    not set."""
    target, penalty, pooling, gather = (recipe.params.get(k) for k in SPELLING)
    return target, penalty, bool(pooling), bool(gather)
# ``litert_quantizer``: the float model's weights rewritten by Google's litert-quantizer after the conversion
# (:func:`litegate.quantize.ptq.litert_quantize`); key -> allowed values
LITERT_QUANTIZER_SPEC: dict[str, tuple[Any, ...]] = {
    "mode": ("dynamic", "weight-only"),
    "bits": (4, 8),
    "block_size": (0, 32, 64, 128, 256),
}
LITERT_QUANTIZER_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "EMBEDDING_LOOKUP")
_ENUMS: dict[str, tuple[str, ...]] = {
    "optimizations": ("DEFAULT",),
    "supported_types": ("float16", "int8", "int16"),
    "supported_ops": ("TFLITE_BUILTINS", "TFLITE_BUILTINS_INT8", "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",
                      "SELECT_TF_OPS"),
    "inference_input_type": ("float32", "int8", "uint8", "int16"),
    "inference_output_type": ("float32", "int8", "uint8", "int16"),
    "islands": ("float", "int16"),
    # who quantizes a multi-signature text generator (prefill + decode/step): TFLiteConverter, or litert-quantizer
    # (:func:`litegate.quantize.ptq.quantize_signatures`) on the converted float model
    "generator_quantizer": ("tflite-converter", "litert-quantizer"),
    # how int8 weights are rounded: to nearest (the converter), or by GPTQ on calibration data
    # (:mod:`litegate.quantize.gptq`) onto the same grid
    "weight_rounding": ("nearest", "gptq"),
}


def builtin_names() -> list[str]:
    """Names of the recipes shipped with litegate."""
    folder = resources.files("litegate.quantize") / "recipes"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def validate(data: Mapping[str, Any], where: str) -> Recipe:
    """Build a :class:`Recipe` from parsed JSON/TOML, naming ``where`` in every error."""
    unknown = set(data) - {"name", "kind", "params", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown recipe key {sorted(unknown)[0]!r}")
    if data.get("kind") == "prune":
        return _prune_recipe(data, where)
    params = dict(data.get("params", {}))
    for key, value in params.items():
        if key not in _ALLOWED_PARAMS:
            raise ConfigError(f"{where}: unknown recipe parameter {key!r} (known: {', '.join(sorted(_ALLOWED_PARAMS))})")
        if _ALLOWED_PARAMS[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = params[key] = float(value)
        if not isinstance(value, _ALLOWED_PARAMS[key]):
            raise ConfigError(f"{where}: recipe parameter {key!r} must be a {_ALLOWED_PARAMS[key].__name__}")
        if key in ("smooth_residual", "mask_penalty", "max_fp32_latency_ratio") and not (isinstance(value, float) and value > 0):
            raise ConfigError(f"{where}: recipe parameter {key!r} must be > 0")
        if key == "litert_quantizer":
            _check_litert_quantizer(value, where)
            continue
        if key == "generator_quantizer" and data.get("kind") not in (RecipeKind.FULL_INTEGER.value,
                                                                    RecipeKind.INT16X8.value):
            raise ConfigError(f"{where}: generator_quantizer applies to full-integer and int16x8 recipes only")
        if key == "weight_rounding" and value != "nearest" and data.get("kind") not in (
                RecipeKind.DYNAMIC_RANGE.value, RecipeKind.INT16X8.value, RecipeKind.FULL_INTEGER.value):
            raise ConfigError(f"{where}: weight_rounding applies to dynamic-range, int16x8 and full-integer recipes only")
        if key == "symmetric_matmul_operands" and value and data.get("kind") not in (
                RecipeKind.FULL_INTEGER.value, RecipeKind.AUTO.value):
            raise ConfigError(f"{where}: symmetric_matmul_operands applies to full-integer and auto recipes only")
        if key == "qat":
            if data.get("kind") != RecipeKind.FULL_INTEGER.value:
                raise ConfigError(f"{where}: qat (quantization-aware distillation) applies to full-integer recipes only")
            params[key] = check_qat_params(value if isinstance(value, dict) else {}, where)
            continue
        allowed = _ENUMS.get(key)
        for item in value if isinstance(value, list) else [value]:
            if allowed and item not in allowed:
                raise ConfigError(f"{where}: {key} value {item!r} is not one of {', '.join(allowed)}")
    try:
        name = str(data.get("name", ""))
        return Recipe(name=name, kind=Recipe.kind_of(name, str(data.get("kind", ""))), params=params,
                      description=str(data.get("description", "")))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_QAT_PARAMS: dict[str, type] = {"steps": int, "batch_size": int, "learning_rate": float, "seed": int}


def check_qat_params(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``qat = {steps, batch_size, learning_rate, seed}`` (:mod:`litegate.quantize.qat`): known keys, types, ranges.

    Raises:
        ConfigError: an unknown or mistyped key, or a value out of range.
    """
    out = dict(spec)
    for key, value in out.items():
        if key not in _QAT_PARAMS:
            raise ConfigError(f"{where}: unknown qat key {key!r} (known: {', '.join(_QAT_PARAMS)})")
        if _QAT_PARAMS[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = out[key] = float(value)
        if isinstance(value, bool) or not isinstance(value, _QAT_PARAMS[key]):
            raise ConfigError(f"{where}: qat.{key} must be a{'n integer' if _QAT_PARAMS[key] is int else ' number'}, "
                              f"got {value!r}")
    for key in ("steps", "batch_size"):
        if out.get(key, 1) < 1:
            raise ConfigError(f"{where}: qat.{key} must be >= 1, got {out[key]}")
    if out.get("learning_rate", 1.0) <= 0:
        raise ConfigError(f"{where}: qat.learning_rate must be > 0, got {out['learning_rate']}")
    return out


def _check_litert_quantizer(spec: Any, where: str) -> None:
    """``litert_quantizer = {mode, bits, block_size, ops}``: known keys and values; blockwise only with ``dynamic``
    (litert-quantizer 0.11 refuses blockwise weight-only weights)."""
    for key, value in spec.items():
        if key == "ops":
            if not isinstance(value, list) or not value or any(op not in LITERT_QUANTIZER_OPS for op in value):
                raise ConfigError(f"{where}: litert_quantizer.ops must be a non-empty list of "
                                  f"{', '.join(LITERT_QUANTIZER_OPS)}, got {value!r}")
            continue
        if key not in LITERT_QUANTIZER_SPEC:
            raise ConfigError(f"{where}: unknown litert_quantizer key {key!r} "
                              f"(known: {', '.join([*LITERT_QUANTIZER_SPEC, 'ops'])})")
        allowed = LITERT_QUANTIZER_SPEC[key]
        if isinstance(value, bool) or value not in allowed:
            raise ConfigError(f"{where}: litert_quantizer.{key} must be one of {', '.join(map(str, allowed))}, "
                              f"got {value!r}")
    if "bits" not in spec:
        raise ConfigError(f"{where}: litert_quantizer needs bits (4 or 8)")
    if spec.get("block_size", 0) and spec.get("mode", "dynamic") != "dynamic":
        raise ConfigError(f"{where}: litert_quantizer block_size needs mode \"dynamic\" (litert-quantizer has no "
                          "blockwise weight-only kernel)")


def load(name_or_path: str, base: Path | None = None) -> Recipe:
    """Resolve a built-in recipe by name, or read a recipe JSON file by path.

    Raises:
        ConfigError: unknown name, unreadable file or invalid recipe.
    """
    if name_or_path in builtin_names():
        text = (resources.files("litegate.quantize") / "recipes" / f"{name_or_path}.json").read_text()
        return validate(json.loads(text), f"recipe {name_or_path}")
    path = Path(name_or_path)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"recipe file {path} not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read recipe: {exc}") from None
        return validate(data, str(path))
    raise ConfigError(f"unknown recipe {name_or_path!r} (built-in: {', '.join(builtin_names())}; or a path to a .json file)")


# Pruning recipes (kind "prune"): magnitude pruning with tensorflow-model-optimization, run by
# litegate.quantize.prune. Their params are checked here, with no TensorFlow import.
PRUNE_SCHEDULES = ("polynomial", "constant")
RECOVERY_MODES = ("auto", "labels", "distill")
_PRUNE_PARAMS: dict[str, tuple[type, ...]] = {
    "target_sparsity": (int, float),
    "schedule": (str,),
    "begin_step": (int,),
    "end_step": (int,),
    "steps": (int,),  # alias of end_step
    "frequency": (int,),
    "block_size": (list,),
    "structured_2_4": (bool,),
    "prune_embeddings": (bool,),
    "recovery": (dict,),
    "seed": (int,),
}
_RECOVERY_PARAMS: dict[str, tuple[type, ...]] = {
    "steps": (int,),
    "batch_size": (int,),
    "learning_rate": (int, float),
    "mode": (str,),
}


def _typed(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join("number" if t is float else t.__name__ for t in types if not (t is int and float in types))
        raise ConfigError(f"{where}: pruning parameter {key!r} must be a {names}, got {value!r}")


def check_prune_params(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the params of a ``kind = "prune"`` recipe; return them with numbers normalised.

    Known params (all optional; :mod:`litegate.quantize.prune` fills the defaults):
    ``target_sparsity`` (0 < s < 1), ``schedule`` (``polynomial`` | ``constant``), ``begin_step``,
    ``end_step`` (or its alias ``steps``: the training step at which the target sparsity is
    reached), ``frequency`` (mask update interval; ``end_step - begin_step`` must be a multiple of
    it so the last update lands on ``end_step``), ``block_size`` ([rows, cols] of rank-2 weights),
    ``structured_2_4`` (2 zeros in every 4 consecutive input weights; excludes ``block_size`` and a
    ``target_sparsity`` other than 0.5), ``prune_embeddings`` (also prune the word-embedding
    table: ``tf_keras`` ``Embedding`` and litegate's BERT ``Embeddings``), ``recovery`` (``{steps, batch_size, learning_rate, mode}``
    with mode ``auto`` | ``labels`` | ``distill``) and ``seed``.

    Raises:
        ConfigError: an unknown or mistyped parameter, a value out of range, or a contradiction.
    """
    out = dict(params)
    for key, value in out.items():
        if key not in _PRUNE_PARAMS:
            raise ConfigError(f"{where}: unknown pruning parameter {key!r} (known: {', '.join(sorted(_PRUNE_PARAMS))})")
        _typed(where, key, value, _PRUNE_PARAMS[key])
    if "end_step" in out and "steps" in out:
        raise ConfigError(f"{where}: give end_step or its alias steps, not both")
    if "target_sparsity" in out:
        out["target_sparsity"] = float(out["target_sparsity"])
        if not 0.0 < out["target_sparsity"] < 1.0:
            raise ConfigError(f"{where}: target_sparsity must be between 0 and 1 (exclusive), got {out['target_sparsity']}")
    if out.get("schedule", "polynomial") not in PRUNE_SCHEDULES:
        raise ConfigError(f"{where}: schedule {out['schedule']!r} is not one of {', '.join(PRUNE_SCHEDULES)}")
    begin = out.get("begin_step", 0)
    end = out.get("end_step", out.get("steps", 100))
    freq = out.get("frequency", 10)
    if begin < 0:
        raise ConfigError(f"{where}: begin_step must be >= 0, got {begin}")
    if freq < 1:
        raise ConfigError(f"{where}: frequency must be >= 1, got {freq}")
    if end <= begin:
        raise ConfigError(f"{where}: end_step ({end}) must be larger than begin_step ({begin})")
    if (end - begin) % freq:
        raise ConfigError(f"{where}: end_step - begin_step ({end - begin}) must be a multiple of frequency ({freq}), "
                          "or the last mask update falls short of target_sparsity")
    block = out.get("block_size", [1, 1])
    if len(block) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block):
        raise ConfigError(f"{where}: block_size must be two positive integers [rows, cols], got {block!r}")
    if out.get("structured_2_4"):
        if list(block) != [1, 1]:
            raise ConfigError(f"{where}: structured_2_4 and block_size {block} cannot be combined")
        if out.get("target_sparsity", 0.5) != 0.5:
            raise ConfigError(f"{where}: structured_2_4 means 50% sparsity; target_sparsity "
                              f"{out['target_sparsity']} contradicts it")
    recovery = dict(out.get("recovery", {}))
    for key, value in recovery.items():
        if key not in _RECOVERY_PARAMS:
            raise ConfigError(f"{where}: unknown recovery parameter {key!r} (known: {', '.join(sorted(_RECOVERY_PARAMS))})")
        _typed(where, f"recovery.{key}", value, _RECOVERY_PARAMS[key])
    if recovery.get("steps", 0) < 0:
        raise ConfigError(f"{where}: recovery.steps must be >= 0, got {recovery['steps']}")
    if recovery.get("batch_size", 1) < 1:
        raise ConfigError(f"{where}: recovery.batch_size must be >= 1, got {recovery['batch_size']}")
    if "learning_rate" in recovery:
        recovery["learning_rate"] = float(recovery["learning_rate"])
        if not recovery["learning_rate"] > 0:
            raise ConfigError(f"{where}: recovery.learning_rate must be > 0, got {recovery['learning_rate']}")
    if recovery.get("mode", "auto") not in RECOVERY_MODES:
        raise ConfigError(f"{where}: recovery.mode {recovery['mode']!r} is not one of {', '.join(RECOVERY_MODES)}")
    if "recovery" in out:
        out["recovery"] = recovery
    return out


def _prune_recipe(data: Mapping[str, Any], where: str) -> Recipe:
    params = check_prune_params(dict(data.get("params", {})), where)
    try:
        return Recipe(name=str(data.get("name", "")), kind=RecipeKind.PRUNE, params=params,
                      description=str(data.get("description", "")))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None

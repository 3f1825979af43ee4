"""Quantization recipes: JSON data files shipped with the package, resolved by name or path."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from litegate.errors import ConfigError
from litegate.types import Recipe

_ALLOWED_PARAMS = {
    "optimizations": list,
    "supported_types": list,
    "supported_ops": list,
    "inference_input_type": str,
    "inference_output_type": str,
    "allow_select_tf_ops": bool,
}
_ENUMS: dict[str, tuple[str, ...]] = {
    "optimizations": ("DEFAULT",),
    "supported_types": ("float16", "int8", "int16"),
    "supported_ops": ("TFLITE_BUILTINS", "TFLITE_BUILTINS_INT8", "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",
                      "SELECT_TF_OPS"),
    "inference_input_type": ("float32", "int8", "uint8", "int16"),
    "inference_output_type": ("float32", "int8", "uint8", "int16"),
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
    params = dict(data.get("params", {}))
    for key, value in params.items():
        if key not in _ALLOWED_PARAMS:
            raise ConfigError(f"{where}: unknown recipe parameter {key!r} (known: {', '.join(sorted(_ALLOWED_PARAMS))})")
        if not isinstance(value, _ALLOWED_PARAMS[key]):
            raise ConfigError(f"{where}: recipe parameter {key!r} must be a {_ALLOWED_PARAMS[key].__name__}")
        allowed = _ENUMS.get(key)
        for item in value if isinstance(value, list) else [value]:
            if allowed and item not in allowed:
                raise ConfigError(f"{where}: {key} value {item!r} is not one of {', '.join(allowed)}")
    try:
        return Recipe(name=str(data.get("name", "")), kind=str(data.get("kind", "")), params=params,
                      description=str(data.get("description", "")))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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

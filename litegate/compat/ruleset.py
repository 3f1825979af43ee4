"""The delegate rule files (data, one per delegate under ``rules/``): loading by name or path, and validation."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from litegate.compat.constraints import CHECKS, Constraint
from litegate.errors import ConfigError

DELEGATES = ("gpu", "hexagon", "coreml", "xnnpack")

_MODEL_CHECKS = ("static_shapes", "no_variable_tensors")


def load_rules(name_or_path: str | Path) -> dict[str, Any]:
    """Load a delegate rule file by built-in name (``gpu``) or from a path to a .json file.

    Raises:
        ConfigError: unknown name, unreadable or malformed file.
    """
    text: str
    if isinstance(name_or_path, Path) or str(name_or_path).endswith(".json"):
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read delegate rules {path}: {exc.strerror}") from None
        where = str(path)
    else:
        name = str(name_or_path)
        if name not in DELEGATES:
            raise ConfigError(f"unknown delegate {name!r} (known: {', '.join(DELEGATES)})")
        text = resources.files("litegate.compat").joinpath("rules", f"{name}.json").read_text()
        where = f"rules/{name}.json"
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    problems = validate_rules(rules)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems[:5]))
    return dict(rules)


def validate_rules(rules: Mapping[str, Any]) -> list[str]:
    """Problems with a rule file: missing fields, unknown check kinds, constraints without reason or source."""
    problems = [f"missing {k!r}" for k in ("delegate", "sources", "partitioning", "ops", "unlisted_op", "flex_ops",
                                           "version") if k not in rules]
    sources = rules.get("sources", {})

    def check_list(where: str, items: Iterable[Constraint], kinds: Iterable[str] | None = None) -> None:
        known = set(kinds if kinds is not None else CHECKS)
        for i, c in enumerate(items):
            kind = c.get("check")
            if kind not in known:
                problems.append(f"{where}[{i}]: unknown check {kind!r}")
            if not c.get("reason"):
                problems.append(f"{where}[{i}]: no reason")
            if c.get("source") not in sources:
                problems.append(f"{where}[{i}]: source {c.get('source')!r} is not in 'sources'")

    for key in ("before", "after"):
        check_list(key, rules.get(key, ()))
    check_list("model_requirements", rules.get("model_requirements", ()), _MODEL_CHECKS)
    for name, op in {**rules.get("ops", {}), **rules.get("custom_ops", {}).get("supported", {})}.items():
        check_list(f"ops.{name}", op.get("constraints", ()))
        if "source" not in op or op["source"] not in sources:
            problems.append(f"ops.{name}: source {op.get('source')!r} is not in 'sources'")
    for key in ("unlisted_op", "flex_ops", "custom_ops", "version", "partitioning", "fp16_constant_dequantize"):
        if key in rules and rules[key].get("source") not in sources:
            problems.append(f"{key}: source {rules[key].get('source')!r} is not in 'sources'")
    return problems


# --- one op -----------------------------------------------------------------------------------

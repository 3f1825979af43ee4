"""Static delegate compatibility: apply a delegate's rule file (data) to a parsed .tflite model.

The rules live in ``litegate/compat/rules/<delegate>.json``, one file per delegate, each constraint with
the reason a user sees and the delegate source it comes from. This module is the one small
engine that applies them:

1. per op: Flex and custom ops, ops the delegate does not list, op versions, then the rule's
   constraints in order (``before`` for every op, the op's own, ``after`` for every op); the first
   failing constraint gives the reason, so a rule lists its constraints in the order the
   delegate's own checks run;
2. per subgraph: model-level requirements (static shapes), then partitions of supported ops, of
   which the delegate takes the ``max_delegated_partitions`` largest with at least
   ``min_nodes_per_partition`` ops (``GraphPartitionHelper::GetFirstNLargestPartitions``); the
   rest fall back to the CPU. Partitions are either TFLite's own (``"algorithm": "tflite"``:
   ``PartitionGraphIntoIndependentNodeSubsets``, which groups supported ops greedily by data
   dependencies, so ops on both sides of an unsupported one can share a partition) or contiguous
   runs in execution order (a conservative count). Delegates built on ``FP16GraphPartitionHelper``
   (GPU, Core ML) refuse DEQUANTIZE ops of fp16 constants, which then split partitions like any
   refused op, unless every other op is supported: then the whole subgraph is delegated;
3. the delegated fraction by op count and by multiply-accumulates, and the CPU fallback ops.

:func:`delegate_views` turns a report back into what such a delegate prints per subgraph: its
sorted, de-duplicated ``OP: reason`` list and its ``N operations will run on the GPU, and the
remaining M operations will run on the CPU`` split.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from litegate.errors import ConfigError
from litegate.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo
from litegate.tflite.verify import load_model
from litegate.types import CompatPartition, CompatReport, OpCompat

__all__ = [
    "DELEGATES",
    "DelegateView",
    "check_model",
    "delegate_views",
    "evaluate",
    "evaluate_op",
    "load_rules",
    "render_table",
    "tflite_node_subsets",
    "validate_rules",
]

DELEGATES = ("gpu", "hexagon", "coreml", "xnnpack")

Constraint = Mapping[str, Any]
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
        known = set(kinds if kinds is not None else _CHECKS)
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


class _View:
    """An op as a rule sees it: its tensors (fp16 constants remapped), options and consumers."""

    def __init__(self, op: OpInfo, inputs: tuple[TensorInfo | None, ...],
                 consumers: Mapping[int, list[OpInfo]]) -> None:
        self.op = op
        self.inputs = inputs
        self.outputs = op.outputs
        self.consumers = consumers

    def tensors(self, ref: str) -> list[TensorInfo | None] | None:
        """Resolve ``input:N``/``output:N``/``inputs``/``outputs``/``runtime_inputs``/``tensors``.

        Returns None when an indexed tensor does not exist (too few inputs), and [None] for an
        optional input that is absent (-1).
        """
        if ref.startswith(("input:", "output:")):
            kind, _, num = ref.partition(":")
            seq: Sequence[TensorInfo | None] = self.inputs if kind == "input" else self.outputs
            k = int(num)
            return [seq[k]] if 0 <= k < len(seq) else None
        present = [t for t in self.inputs if t is not None]
        if ref == "inputs":
            return list(present)
        if ref == "runtime_inputs":
            return [t for t in present if not t.is_const]
        if ref == "outputs":
            return list(self.outputs)
        if ref == "tensors":
            return [*present, *self.outputs]
        raise ConfigError(f"unknown tensor reference {ref!r} in delegate rules")

    def option(self, name: str) -> Any:
        return self.op.options.get(name)


def _cmp(value: Any, c: Constraint) -> bool:
    """Compare one value with the ``equals``/``not``/``in``/``not_in``/``min``/``max`` of a constraint."""
    if "equals" in c and value != c["equals"]:
        return False
    if "not" in c and value == c["not"]:
        return False
    if "in" in c and value not in c["in"]:
        return False
    if "not_in" in c and value in c["not_in"]:
        return False
    if "min" in c and (value is None or value < c["min"]):
        return False
    return not ("max" in c and (value is None or value > c["max"]))


def _when_holds(view: _View, when: Mapping[str, Any]) -> bool:
    for name, cond in when.items():
        value = view.option(name)
        if isinstance(cond, Mapping):
            if not _cmp(value, cond):
                return False
        elif value != cond:
            return False
    return True


def _fmt(template: str, **values: Any) -> str:
    class _Keep(dict[str, Any]):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    return template.format_map(_Keep(values))


def _shape(t: TensorInfo) -> list[int]:
    return list(t.shape)


def _check_option(view: _View, c: Constraint) -> dict[str, Any] | None:
    value = view.option(c["name"])
    if value is None:
        if "default" not in c:
            return None  # absent option: nothing to prove wrong
        value = c["default"]
    return None if _cmp(value, c) else {"value": value}


def _check_count(view: _View, c: Constraint) -> dict[str, Any] | None:
    of = c["of"]
    if of == "inputs":
        n = len(view.inputs)
    elif of == "present_inputs":
        n = sum(1 for t in view.inputs if t is not None)
    elif of == "runtime_inputs":
        n = sum(1 for t in view.inputs if t is not None and not t.is_const)
    elif of == "const_inputs":
        n = sum(1 for t in view.inputs if t is not None and t.is_const)
    elif of == "outputs":
        n = len(view.outputs)
    else:
        raise ConfigError(f"unknown count {of!r} in delegate rules")
    return None if _cmp(n, c) else {"count": n}


def _check_operands(view: _View, c: Constraint) -> dict[str, Any] | None:
    runtime = sum(1 for t in view.inputs if t is not None and not t.is_const)
    const = sum(1 for t in view.inputs if t is not None and t.is_const)
    for combo in c["any_of"]:
        if combo.get("runtime", runtime) == runtime and combo.get("const", const) == const and \
                combo.get("outputs", len(view.outputs)) == len(view.outputs):
            return None
    return {"runtime": runtime, "const": const, "count": len(view.outputs)}


def _each_tensor(view: _View, c: Constraint,
                 test: Callable[[TensorInfo], dict[str, Any] | None]) -> dict[str, Any] | None:
    ref = c.get("tensor_for", {}).get(view.op.op, c["tensor"])
    tensors = view.tensors(ref)
    if tensors is None:
        return None if c.get("optional_ok") else {"tensor": ref, "value": "missing", "type": "missing",
                                                   "rank": "missing", "shape": "missing"}
    for t in tensors:
        if t is None:
            if c.get("optional_ok", True):
                continue
            return {"tensor": ref, "type": "absent"}
        bad = test(t)
        if bad is not None:
            return {"tensor": t.name or ref, "type": t.type, "rank": t.rank, "shape": _shape(t), **bad}
    return None


def _check_rank(view: _View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if _cmp(t.rank, c) else {"value": t.rank})


def _check_type(view: _View, c: Constraint) -> dict[str, Any] | None:
    def test(t: TensorInfo) -> dict[str, Any] | None:
        if t.is_const and t.type in c.get("const_in", ()):
            return None
        if c.get("runtime_only") and t.is_const:
            return None
        return None if _cmp(t.type, c) else {"value": t.type}

    return _each_tensor(view, c, test)


def _check_zero_point(view: _View, c: Constraint) -> dict[str, Any] | None:
    """A quantized tensor's (first) zero point; float and unquantized tensors pass."""
    return _each_tensor(view, c, lambda t: None if t.zero_point is None or not t.quantized or _cmp(t.zero_point, c)
                        else {"value": t.zero_point})


def _check_const(view: _View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if t.is_const == c["is"] else {"value": t.is_const})


def _check_shape(view: _View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if _shape(t) in [list(s) for s in c["in"]] else {"value": _shape(t)})


def _check_dim(view: _View, c: Constraint) -> dict[str, Any] | None:
    def test(t: TensorInfo) -> dict[str, Any] | None:
        axis = c["axis"]
        if not -t.rank <= axis < t.rank:
            return None if c.get("missing_ok") else {"value": "none"}
        return None if _cmp(t.shape[axis], c) else {"value": t.shape[axis]}

    return _each_tensor(view, c, test)


def _check_numel(view: _View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if _cmp(t.num_elements, c) else {"value": t.num_elements})


def _check_values(view: _View, c: Constraint) -> dict[str, Any] | None:
    def test(t: TensorInfo) -> dict[str, Any] | None:
        if t.values is None:
            return {"value": "unknown"} if c.get("require_known") else None
        vals = list(t.values)
        if "all_equal" in c and any(v != c["all_equal"] for v in vals):
            return {"value": vals}
        if "in" in c and vals not in [list(v) for v in c["in"]]:
            return {"value": vals}
        if "each_in" in c and any(v not in c["each_in"] for v in vals):
            return {"value": vals}
        if "zero_at" in c and any(k < len(vals) and vals[k] != 0 for k in c["zero_at"]):
            return {"value": vals}
        if "each_max" in c and any(v > c["each_max"] for v in vals):
            return {"value": vals}
        if "each_min" in c and any(v < c["each_min"] for v in vals):
            return {"value": vals}
        return None

    return _each_tensor(view, c, test)


def _check_input_types(view: _View, c: Constraint) -> dict[str, Any] | None:
    """Hexagon's ``InputsWithCorrectTypes``: exactly len(per_input) inputs, each of one of the types."""
    per_input = c["per_input"]
    if len(view.inputs) != len(per_input):
        return {"count": len(view.inputs),
                "value": f"it has {len(view.inputs)} inputs, the delegate expects {len(per_input)}"}
    for k, (t, allowed) in enumerate(zip(view.inputs, per_input, strict=True)):
        if t is None:
            continue
        if t.type not in allowed:
            return {"tensor": t.name or f"input:{k}", "type": t.type, "index": k,
                    "value": f"input {k} is {t.type}, expected {'/'.join(allowed)}"}
    return None


def _broadcastable(a: Sequence[int], b: Sequence[int]) -> bool:
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y and x != 1 and y != 1:
            return False
    return True


def _check_gpu_broadcast(view: _View, c: Constraint) -> dict[str, Any] | None:
    """GPU ``CheckAddMulBroadcastCompatibility`` with enhanced broadcast (offline checks assume it)."""
    if len(view.inputs) < 2 or view.inputs[0] is None or view.inputs[1] is None:
        return None
    a, b = view.inputs[0].shape, view.inputs[1].shape
    if len(a) > 1 and len(b) > 1 and len(a) != len(b) and not _broadcastable(a, b):
        return {"value": f"[{','.join(map(str, a))}] vs [{','.join(map(str, b))}]"}
    return None


def _check_coreml_broadcast(view: _View, c: Constraint) -> dict[str, Any] | None:
    """Core ML ``IsBroadcastable``: shapes in [B, H, W, C]; B equal (or a 1-element constant), (H, W) equal
    or one side (1, 1), C equal or one side 1; rank at most 4."""
    if len(view.inputs) < 2 or view.inputs[0] is None or view.inputs[1] is None:
        return None
    t0, t1 = view.inputs[0], view.inputs[1]
    if t0.rank > 4 or t1.rank > 4:
        return {"value": "rank > 4"}

    def four(t: TensorInfo) -> list[int]:
        return [1] * (4 - t.rank) + list(t.shape)

    s0, s1 = four(t0), four(t1)
    text = {"value": f"{s0} vs {s1}"}
    if s0[0] != s1[0] and not ((t0.is_const and t0.num_elements == 1) or (t1.is_const and t1.num_elements == 1)):
        return text
    if (s0[1], s0[2]) != (s1[1], s1[2]) and not ((s0[1], s0[2]) == (1, 1) or (s1[1], s1[2]) == (1, 1)):
        return text
    if s0[3] != s1[3] and s0[3] != 1 and s1[3] != 1:
        return text
    return None


def _check_single_batch(view: _View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if not t.shape or t.shape[-1] == t.num_elements
                        else {"value": _shape(t)})


def _check_axis_is_last(view: _View, c: Constraint) -> dict[str, Any] | None:
    axis = view.option(c["option"])
    tensors = view.tensors(c["tensor"]) or []
    t = tensors[0] if tensors else None
    if axis is None or t is None:
        return None
    return None if axis in (-1, t.rank - 1) else {"value": axis, "rank": t.rank}


def _check_same_shape_as_output_or_scalar(view: _View, c: Constraint) -> dict[str, Any] | None:
    out = view.outputs[0].shape if view.outputs else ()
    return _each_tensor(view, c, lambda t: None if (not t.shape or t.shape == out or
                                                    (t.rank == 1 and t.shape[0] <= 1)) else {"value": _shape(t)})


def _check_sole_consumer(view: _View, c: Constraint) -> dict[str, Any] | None:
    """The op's first output has one consumer, of one of ``ops``, whose output type is in ``output_type_in``."""
    if not view.outputs:
        return {"value": "no output"}
    users = view.consumers.get(view.outputs[0].index, [])
    if len(users) != 1:
        return {"value": f"{len(users)} consumers"}
    user = users[0]
    if user.op not in c["ops"]:
        return {"value": user.op}
    if not user.outputs or user.outputs[0].type not in c.get("output_type_in", [user.outputs[0].type]):
        return {"value": f"{user.op} -> {user.outputs[0].type if user.outputs else 'nothing'}"}
    return None


def _check_type_pairs(view: _View, c: Constraint) -> dict[str, Any] | None:
    """(input:0 type, output:0 type) must be one of ``pairs``."""
    if not view.inputs or view.inputs[0] is None or not view.outputs:
        return {"value": "missing input or output"}
    pair = [view.inputs[0].type, view.outputs[0].type]
    return None if pair in [list(p) for p in c["pairs"]] else {"value": f"{pair[0]} -> {pair[1]}"}


def _present(view: _View, refs: Iterable[str]) -> list[TensorInfo]:
    """The first tensor of each reference, where the op has one."""
    out = []
    for ref in refs:
        found = view.tensors(ref)
        if found and found[0] is not None:
            out.append(found[0])
    return out


def _check_same_rank(view: _View, c: Constraint) -> dict[str, Any] | None:
    ranks = [t.rank for t in _present(view, c["tensors"])]
    return None if len(set(ranks)) <= 1 else {"value": ranks}


def _check_tensor_types(view: _View, c: Constraint) -> dict[str, Any] | None:
    """Types of the op's runtime (non-constant) inputs and of its outputs, with per-op extra types."""
    name = view.op.op
    for side, tensors in (("inputs", view.inputs), ("outputs", view.outputs)):
        allowed = set(c[side]) | set(c.get(f"extra_{side}", {}).get(name, ()))
        for t in tensors:
            if t is None or (c.get("runtime_only", True) and t.is_const):
                continue
            if t.type not in allowed:
                return {"tensor": t.name or f"#{t.index}", "type": t.type, "value": t.type}
    return None


def _check_allowed_tensors(view: _View, c: Constraint) -> dict[str, Any] | None:
    """ML Drift's ``IsAllAllowedTensors``: inputs then outputs, each tensor's rank, then its type.

    The rank limit (``max_rank``, reason ``rank_reason``) applies to every tensor, constants too;
    the type check (``reason``) only to tensors the runtime allocates in its arena: constants and
    variable tensors are skipped. ``extra_inputs`` / ``extra_outputs`` add types per op.
    """
    name = view.op.op
    max_rank = c.get("max_rank")
    for side, tensors in (("inputs", view.inputs), ("outputs", view.outputs)):
        allowed = set(c[side]) | set(c.get(f"extra_{side}", {}).get(name, ()))
        for t in tensors:
            if t is None:
                continue
            label = t.name or f"#{t.index}"
            if max_rank is not None and t.rank > max_rank:
                return {"tensor": label, "type": t.type, "value": t.rank, "rank": t.rank,
                        "_reason": c.get("rank_reason", c["reason"])}
            if not (t.is_const or t.is_variable) and t.type not in allowed:
                return {"tensor": label, "type": t.type, "value": t.type}
    return None


def _check_param_rank(view: _View, c: Constraint) -> dict[str, Any] | None:
    """A slice's begin/starts vector has one entry per input dimension (or one fewer: no batch).

    ``missing_batch``: ``always`` (STRIDED_SLICE: rank or rank - 1 entries), ``rank4`` (SLICE: a
    4-D input also takes 3 entries), ``never``.
    """
    data = view.tensors(c["tensor"])
    params = view.tensors(c["params"])
    if not data or not params or data[0] is None or params[0] is None:
        return None
    rank, n = data[0].rank, params[0].num_elements
    mode = c.get("missing_batch", "never")
    allowed = [rank]
    if mode == "always" or (mode == "rank4" and rank == 4):
        allowed.insert(0, rank - 1)
    if n in allowed:
        return None
    return {"value": n, "rank": rank, "allowed": " or ".join(str(a) for a in allowed)}


def _check_same_type(view: _View, c: Constraint) -> dict[str, Any] | None:
    types = [t.type for t in _present(view, c["tensors"])]
    return None if len(set(types)) <= 1 else {"value": " vs ".join(types)}


_CHECKS: dict[str, Callable[[_View, Constraint], dict[str, Any] | None]] = {
    "option": _check_option,
    "count": _check_count,
    "operands": _check_operands,
    "rank": _check_rank,
    "type": _check_type,
    "const": _check_const,
    "zero_point": _check_zero_point,
    "shape": _check_shape,
    "dim": _check_dim,
    "numel": _check_numel,
    "values": _check_values,
    "input_types": _check_input_types,
    "gpu_broadcast": _check_gpu_broadcast,
    "coreml_broadcast": _check_coreml_broadcast,
    "single_batch": _check_single_batch,
    "axis_is_last": _check_axis_is_last,
    "same_shape_as_output_or_scalar": _check_same_shape_as_output_or_scalar,
    "sole_consumer": _check_sole_consumer,
    "type_pairs": _check_type_pairs,
    "same_rank": _check_same_rank,
    "tensor_types": _check_tensor_types,
    "allowed_tensors": _check_allowed_tensors,
    "param_rank": _check_param_rank,
    "same_type": _check_same_type,
}


def _applies(c: Constraint, view: _View) -> bool:
    if "ops" in c and view.op.op not in c["ops"]:
        return False
    if "except_ops" in c and view.op.op in c["except_ops"]:
        return False
    if "when_runtime_inputs" in c and \
            sum(1 for t in view.inputs if t is not None and not t.is_const) != c["when_runtime_inputs"]:
        return False
    for ref, types in c.get("when_types", {}).items():  # e.g. only for statically quantized ops
        tensors = view.tensors(ref)
        if not tensors or any(t is None or t.type not in types for t in tensors):
            return False
    return _when_holds(view, c.get("when", {}))


def _run(constraints: Iterable[Constraint], view: _View, rules: Mapping[str, Any]) -> tuple[str, str] | None:
    for c in constraints:
        if not _applies(c, view):
            continue
        bad = _CHECKS[c["check"]](view, c)
        if bad is not None:
            template = bad.pop("_reason", c["reason"])
            values = {"op": view.op.name, "version": view.op.version, "inputs": len(view.inputs),
                      "outputs": len(view.outputs), **{k: c[k] for k in ("min", "max", "equals") if k in c}, **bad}
            return _fmt(template, **values), _source(rules, c["source"])
    return None


def _source(rules: Mapping[str, Any], key: str) -> str:
    return str(rules["sources"].get(key, key))


def evaluate_op(op: OpInfo, rules: Mapping[str, Any], *, inputs: tuple[TensorInfo | None, ...] | None = None,
                consumers: Mapping[int, list[OpInfo]] | None = None) -> tuple[bool, str, str]:
    """Apply a rule file to one op.

    Args:
        op: the op.
        rules: a loaded rule file.
        inputs: the op's inputs as the delegate sees them (fp16 constant DEQUANTIZE outputs replaced
            by their fp16 constants); default ``op.inputs``.
        consumers: tensor index -> ops reading it (for rules about an op's consumer).

    Returns:
        (supported, reason, source): ``reason`` and ``source`` are empty when supported.
    """
    if op.is_flex:
        f = rules["flex_ops"]
        return False, _fmt(f["reason"], op=op.name, custom=op.custom_code), _source(rules, f["source"])
    if op.is_custom:
        custom = rules.get("custom_ops", {})
        rule = custom.get("supported", {}).get(op.custom_code or "")
        if rule is None:
            return False, _fmt(custom.get("reason", rules["unlisted_op"]["reason"]), op=op.name,
                               custom=op.custom_code), _source(rules, custom.get("source", rules["unlisted_op"]["source"]))
    else:
        rule = rules["ops"].get(op.op)
        if rule is None:
            u = rules["unlisted_op"]
            return False, _fmt(u["reason"], op=op.name), _source(rules, u["source"])
    view = _View(op, inputs if inputs is not None else op.inputs, consumers or {})
    failed = _run(rules.get("before", ()), view, rules)
    if failed is None and "unsupported" in rule:
        failed = (_fmt(rule["unsupported"], op=op.name, version=op.version), _source(rules, rule["source"]))
    if failed is None:
        failed = _check_version(op, rule, rules)
    if failed is None:
        failed = _run(rule.get("constraints", ()), view, rules)
    if failed is None:
        failed = _run(rules.get("after", ()), view, rules)
    if failed is not None:
        return False, failed[0], failed[1]
    return True, "", ""


def _check_version(op: OpInfo, rule: Mapping[str, Any], rules: Mapping[str, Any]) -> tuple[str, str] | None:
    spec = rule.get("version", rules.get("version", {}).get("default"))
    if not spec:
        return None
    if _cmp(op.version, spec):
        return None
    v = rules["version"]
    lo, hi = spec.get("min", 1), spec.get("max", spec.get("equals"))
    allowed = f"{hi}" if lo == hi else (f"<= {hi}" if hi is not None else f">= {lo}")
    return (_fmt(v["reason"], op=op.name, version=op.version, max=hi, min=lo, allowed=allowed),
            _source(rules, v["source"]))


# --- a whole model ----------------------------------------------------------------------------


def evaluate(model: ModelInfo, rules: Mapping[str, Any], *, model_name: str = "") -> CompatReport:
    """Apply a rule file to every op of every subgraph, partition, and sum up.

    Args:
        model: a parsed model (:func:`litegate.tflite.flatbuffer.read_model`).
        rules: a loaded rule file (:func:`load_rules`).
        model_name: how the report names the model.
    """
    delegate = rules["delegate"]
    part = rules["partitioning"]
    min_nodes = int(part.get("min_nodes_per_partition", 1))
    max_parts = part.get("max_delegated_partitions")
    fp16 = rules.get("fp16_constant_dequantize", {})
    verdicts: list[OpCompat] = []
    partitions: list[CompatPartition] = []
    model_reasons: list[str] = []
    for s in range(len(model.subgraph_tensors)):
        ops = model.subgraph_ops(s)
        if not ops:
            continue
        consumers: dict[int, list[OpInfo]] = {}
        for o in ops:
            for t in o.inputs:
                if t is not None:
                    consumers.setdefault(t.index, []).append(o)
        folded = {o.index: o.inputs[0] for o in ops
                  if fp16 and o.op == "DEQUANTIZE" and o.inputs and o.inputs[0] is not None
                  and o.inputs[0].is_const and o.inputs[0].type in fp16.get("input_types", ["FLOAT16"])}
        remap = {ops_out.index: folded[o.index] for o in ops if o.index in folded for ops_out in o.outputs}
        refused = _model_refusal(model, s, rules)
        if refused:
            model_reasons.append(refused[0])
        raw: dict[int, tuple[bool, str, str]] = {}
        for o in ops:
            if refused:
                raw[o.index] = (False, refused[0], refused[1])
            elif o.index not in folded:
                inputs = tuple(remap.get(t.index, t) if t is not None else None for t in o.inputs)
                raw[o.index] = evaluate_op(o, rules, inputs=inputs, consumers=consumers)
        if fp16.get("mode") == "partition_helper":
            # FP16GraphPartitionHelper::IsNodeSupported refuses every fp16 constant DEQUANTIZE; when all
            # the other ops are supported it still delegates the whole subgraph ("Scenario 1").
            whole = not refused and all(raw[o.index][0] for o in ops if o.index not in folded)
            fp16_verdict = (True, "", "") if whole else (False, fp16["reason"], _source(rules, fp16["source"]))
            for k in folded:
                raw[k] = raw.get(k, fp16_verdict) if refused else fp16_verdict
            neutral: set[int] = set()
        else:
            for k in folded:
                raw.setdefault(k, (True, "", ""))
            neutral = set(folded)  # absorbed: neither joins nor splits a partition
        sub_parts, delegated, why = _partition(ops, raw, neutral, consumers, min_nodes, max_parts, rules)
        partitions.extend(sub_parts)
        for o in ops:
            ok, reason, source = raw[o.index]
            if ok and not delegated.get(o.index, False):
                reason, source = why.get(o.index, ("", ""))
            verdicts.append(OpCompat(index=o.index, op=o.name, version=o.version, delegate=delegate, supported=ok,
                                     reason=reason, delegated=delegated.get(o.index, False), subgraph=s,
                                     macs=o.macs, source=source))
    total_macs = sum(v.macs for v in verdicts)
    delegated_macs = sum(v.macs for v in verdicts if v.delegated)
    n = len(verdicts)
    fallback = Counter(v.op for v in verdicts if not v.delegated)
    return CompatReport(
        delegate=delegate, ops=tuple(verdicts), partitions=tuple(partitions),
        delegated_fraction=(sum(1 for v in verdicts if v.delegated) / n) if n else 0.0,
        delegated_mac_fraction=(delegated_macs / total_macs) if total_macs else None,
        fallback_ops=dict(sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0]))),
        total_macs=total_macs, delegated_macs=delegated_macs, min_nodes_per_partition=min_nodes,
        max_delegated_partitions=max_parts, model_reason="; ".join(dict.fromkeys(model_reasons)),
        model=model_name, notes=tuple(rules.get("notes", ())))


def _model_refusal(model: ModelInfo, subgraph: int, rules: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why the delegate (or the runtime that hosts it) refuses every op of ``subgraph``, if it does.

    ``static_shapes``: a tensor of this subgraph has a dynamic dimension. ``no_variable_tensors``:
    some subgraph of the model has a variable tensor (LiteRT's CompiledModel does not load such a
    model at all, so every subgraph is refused).
    """
    for req in rules.get("model_requirements", ()):
        if req["check"] == "static_shapes":
            dynamic = model.dynamic_tensors(subgraph)
            if dynamic:
                t = dynamic[0]
                more = f" and {len(dynamic) - 1} more" if len(dynamic) > 1 else ""
                return (_fmt(req["reason"], tensor=t.name or f"#{t.index}", signature=list(t.shape_signature),
                             more=more), _source(rules, req["source"]))
        elif req["check"] == "no_variable_tensors":
            variables = [(k, t) for k, tensors in enumerate(model.subgraph_tensors) for t in tensors if t.is_variable]
            if variables:
                k, t = variables[0]
                more = f" and {len(variables) - 1} more" if len(variables) > 1 else ""
                where = model.subgraph_names[k] if k < len(model.subgraph_names) and model.subgraph_names[k] else k
                return (_fmt(req["reason"], tensor=t.name or f"#{t.index}", subgraph=where, more=more),
                        _source(rules, req["source"]))
    return None


def _partition(ops: Sequence[OpInfo], raw: Mapping[int, tuple[bool, str, str]], neutral: set[int],
               consumers: Mapping[int, list[OpInfo]], min_nodes: int, max_parts: int | None,
               rules: Mapping[str, Any]) -> tuple[list[CompatPartition], dict[int, bool], dict[int, tuple[str, str]]]:
    """Partitions of supported ops; the delegate takes the largest ``max_parts`` of >= ``min_nodes`` ops.

    ``neutral`` ops (constant DEQUANTIZEs a delegate absorbs) neither join nor split a partition;
    they are delegated when all their consumers are.
    """
    part = rules["partitioning"]
    if part.get("algorithm") == "tflite":
        supported = {o.index for o in ops if o.index not in neutral and raw[o.index][0]}
        runs = [members for kind, members in tflite_node_subsets(ops, supported, skip=neutral) if kind]
    else:
        runs = _contiguous_runs(ops, raw, neutral)
    fp16 = rules.get("fp16_constant_dequantize", {})
    # FP16GraphPartitionHelper ("Scenario 1"): when every node but the fp16 constant DEQUANTIZEs is
    # supported, the whole graph is delegated without looking at partition sizes or counts.
    whole = fp16.get("mode") == "partition_helper" and all(raw[o.index][0] for o in ops)
    # GetFirstNLargestPartitions: std::sort by size, largest first (ties: execution order here; the
    # delegate's sort is not stable, so equal-sized partitions may be taken in another order)
    order = sorted(range(len(runs)), key=lambda k: -len(runs[k]))
    limit = len(runs) if max_parts is None else int(max_parts)
    chosen: set[int] = set(range(len(runs))) if whole else set()
    for rank, k in enumerate(order):
        if whole or rank >= limit or len(runs[k]) < min_nodes:
            break  # GetFirstNLargestPartitions stops at the first partition below the minimum
        chosen.add(k)
    src = _source(rules, part["source"])
    delegated: dict[int, bool] = {}
    why: dict[int, tuple[str, str]] = {}
    result: list[CompatPartition] = []
    s = ops[0].subgraph if ops else 0
    for k, run in enumerate(runs):
        take = k in chosen
        reason = ""
        if not take:
            if len(run) < min_nodes:
                reason = _fmt(part.get("min_nodes_reason", "partition of {size} ops is below min_nodes_per_partition "
                                       "{min}: runs on the CPU"), size=len(run), min=min_nodes)
            else:
                reason = _fmt(part.get("max_partitions_reason", "only the {max} largest partitions are delegated: "
                                       "runs on the CPU"), size=len(run), max=max_parts)
        for o in run:
            delegated[o.index] = take
            if not take:
                why[o.index] = (reason, src)
        result.append(CompatPartition(subgraph=s, ops=tuple(o.index for o in run), delegated=take, reason=reason,
                                      macs=sum(o.macs for o in run)))
    for o in ops:
        if o.index not in neutral:
            continue
        users = [u for t in o.outputs for u in consumers.get(t.index, [])]
        take = bool(users) and all(delegated.get(u.index, False) for u in users)
        delegated[o.index] = take
        if not take:
            why[o.index] = (fp16["reason"], _source(rules, fp16["source"]))
    return result, delegated, why


def _contiguous_runs(ops: Sequence[OpInfo], raw: Mapping[int, tuple[bool, str, str]],
                     neutral: set[int]) -> list[list[OpInfo]]:
    runs: list[list[OpInfo]] = []
    current: list[OpInfo] = []
    for o in ops:
        if o.index in neutral:
            continue
        if raw[o.index][0]:
            current.append(o)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


_SIDE_EFFECT_OPS = frozenset({"IF", "WHILE", "CALL_ONCE"})


def tflite_node_subsets(ops: Sequence[OpInfo], supported: set[int], *,
                        skip: set[int] | None = None) -> list[tuple[bool, list[OpInfo]]]:
    """TFLite's ``PartitionGraphIntoIndependentNodeSubsets`` (greedy, as delegates run it).

    Epoch by epoch, the first ready op (all its inputs computed) fixes the epoch's kind (supported
    or not); then every ready op of that kind joins, repeatedly, until none can. Ops with side
    effects (resource tensors, IF/WHILE/CALL_ONCE) keep their relative order (control edges).

    Args:
        ops: one subgraph's ops in execution order.
        supported: indices of the ops the delegate accepts.
        skip: ops to leave out entirely (their outputs count as always available).

    Returns:
        (kind, ops) per epoch, in order: ``kind`` is True for a group of supported ops.
    """
    skip = skip or set()
    nodes = [o for o in ops if o.index not in skip]
    produced = {t.index for o in nodes for t in o.outputs}
    side = [o.index for o in nodes if o.op in _SIDE_EFFECT_OPS or any(
        t is not None and t.type == "RESOURCE" for t in (*o.inputs, *o.outputs))]
    after = dict(zip(side[1:], side[:-1], strict=False))  # op -> the side-effect op that must run first
    ready: set[int] = set()
    done: set[int] = set()
    subsets: list[tuple[bool, list[OpInfo]]] = []
    while len(done) < len(nodes):
        kind: bool | None = None
        members: list[OpInfo] = []
        progress = True
        while progress:
            progress = False
            for o in nodes:
                if o.index in done or (o.index in after and after[o.index] not in done):
                    continue
                if any(t is not None and t.index in produced and t.index not in ready for t in o.inputs):
                    continue
                this = o.index in supported
                if kind is None:
                    kind = this
                if this != kind:
                    continue
                done.add(o.index)
                members.append(o)
                ready.update(t.index for t in o.outputs)
                progress = True
        if not members:  # a cycle: not a valid TFLite graph; keep the rest as one unsupported group
            subsets.append((False, [o for o in nodes if o.index not in done]))
            break
        subsets.append((bool(kind), members))
    return subsets


@dataclasses.dataclass(frozen=True)
class DelegateView:
    """One subgraph as a TFLite-style delegate reports it (``GetOpsToReplace`` in the GPU delegate).

    Attributes:
        subgraph: the subgraph index.
        name: its name (the signature key for converted signatures).
        total_ops: ops in the subgraph (the delegate's ``num_total_nodes``).
        on_delegate: ops the delegate takes.
        on_cpu: ops left to the CPU.
        unsupported: the refused ops as the delegate lists them: ``(op, reason)`` pairs, unique and in
            the order of ``OP: reason`` strings (a ``std::set``); custom ops as ``CUSTOM <code>``.
        refused: why the whole subgraph never reaches the delegate (e.g. the runtime refuses the model).
    """

    subgraph: int
    name: str
    total_ops: int
    on_delegate: int
    on_cpu: int
    unsupported: tuple[tuple[str, str], ...]
    refused: str = ""

    @property
    def prints_report(self) -> bool:
        """The delegate prints its ``Following operations are not supported`` block for this subgraph."""
        return not self.refused and bool(self.unsupported) and self.on_cpu > 0

    @property
    def fully_delegated(self) -> bool:
        return not self.refused and self.on_cpu == 0 and self.total_ops > 0


def delegate_views(report: CompatReport, model: ModelInfo, rules: Mapping[str, Any]) -> tuple[DelegateView, ...]:
    """Per subgraph, what the delegate itself would print about ``model`` given the static ``report``.

    Reasons are the rule file's reasons, except where the delegate prints another text than the one
    shown to users (``log_reason`` of ``fp16_constant_dequantize`` - the GPU delegate lists fp16
    DEQUANTIZEs with an empty reason - and of ``flex_ops``).

    Args:
        report: :func:`evaluate` of ``model`` with ``rules``.
        model: the parsed model.
        rules: the rule file the report was made with.
    """
    fp16 = rules.get("fp16_constant_dequantize", {})
    fp16_types = fp16.get("input_types", ["FLOAT16"])
    by_key = {(o.subgraph, o.index): o for o in model.ops}
    views: list[DelegateView] = []
    for s in sorted({v.subgraph for v in report.ops}):
        verdicts = [v for v in report.ops if v.subgraph == s]
        refused = _model_refusal(model, s, rules)
        entries: set[tuple[str, str]] = set()
        for v in verdicts:
            if v.supported:
                continue
            op = by_key[(s, v.index)]
            name = f"CUSTOM {op.custom_code}" if op.is_custom and op.custom_code else op.op
            reason = v.reason
            if op.op == "DEQUANTIZE" and op.inputs and op.inputs[0] is not None and op.inputs[0].is_const \
                    and op.inputs[0].type in fp16_types and "log_reason" in fp16:
                reason = fp16["log_reason"]
            elif op.is_flex and "log_reason" in rules.get("flex_ops", {}):
                reason = rules["flex_ops"]["log_reason"]
            entries.add((name, reason.strip()))
        taken = sum(1 for v in verdicts if v.delegated)
        name = model.subgraph_names[s] if s < len(model.subgraph_names) else ""
        views.append(DelegateView(subgraph=s, name=name, total_ops=len(verdicts), on_delegate=taken,
                                  on_cpu=len(verdicts) - taken,
                                  unsupported=() if refused else tuple(sorted(entries, key=lambda e: f"{e[0]}: {e[1]}")),
                                  refused=refused[0] if refused else ""))
    return tuple(views)


def check_model(path: str | Path, delegates: Sequence[str] = DELEGATES) -> list[CompatReport]:
    """Verify and parse a .tflite file, then check it against each delegate's rules.

    Args:
        path: the .tflite model.
        delegates: built-in delegate names (``gpu``, ``hexagon``, ``coreml``, ``xnnpack``) or rule file paths.

    Raises:
        ModelLoadError: the file is missing, not a TFLite flatbuffer, truncated or corrupt.
        ConfigError: an unknown delegate or a malformed rule file.
    """
    rule_sets = [load_rules(d) for d in delegates]
    model = load_model(path)
    return [evaluate(model, r, model_name=str(path)) for r in rule_sets]


def render_table(reports: Sequence[CompatReport]) -> str:
    """A terminal summary: per delegate the fractions, partitions and grouped CPU fallbacks with reasons."""
    lines: list[str] = []
    for r in reports:
        macs = "n/a" if r.delegated_mac_fraction is None else f"{100 * r.delegated_mac_fraction:.1f}%"
        taken = sum(1 for p in r.partitions if p.delegated)
        lines.append(f"{r.delegate}: {r.delegated_ops}/{r.total_ops} ops delegated "
                     f"({100 * r.delegated_fraction:.1f}%), MACs {macs}, {taken} of {len(r.partitions)} partitions "
                     f"delegated (min {r.min_nodes_per_partition} ops/partition"
                     f"{'' if r.max_delegated_partitions is None else f', max {r.max_delegated_partitions}'})")
        if r.model_reason:
            lines.append(f"  whole graph refused: {r.model_reason}")
        groups: dict[tuple[str, str], list[str]] = {}
        for o in r.ops:
            if not o.delegated:
                label = f"{o.index}" if o.subgraph == 0 else f"{o.subgraph}:{o.index}"
                groups.setdefault((o.op, o.reason), []).append(label)
        if groups and not r.model_reason:
            lines.append(f"  {'op':24} {'count':>5}  {'indices':16} reason")
            for (op, reason), idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                shown = ",".join(idx[:4]) + ("..." if len(idx) > 4 else "")
                lines.append(f"  {op:24} {len(idx):>5}  {shown:16} {reason}")
        elif not groups:
            lines.append("  every op runs on the delegate")
        for note in r.notes:
            lines.append(f"  note: {note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

"""The constraint engine: one op of a parsed model, seen through a rule's constraints (first failing one wins)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from litegate.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the rules engine loads without LiteRT's flatbuffer schema
    from litegate.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo

Constraint = Mapping[str, Any]


def rule_source(rules: Mapping[str, Any], key: str) -> str:
    return str(rules["sources"].get(key, key))


class View:
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


def compare(value: Any, c: Constraint) -> bool:
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


def _when_holds(view: View, when: Mapping[str, Any]) -> bool:
    for name, cond in when.items():
        value = view.option(name)
        if isinstance(cond, Mapping):
            if not compare(value, cond):
                return False
        elif value != cond:
            return False
    return True


def fmt(template: str, **values: Any) -> str:
    class _Keep(dict[str, Any]):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    return template.format_map(_Keep(values))


def _shape(t: TensorInfo) -> list[int]:
    return list(t.shape)


def _check_option(view: View, c: Constraint) -> dict[str, Any] | None:
    value = view.option(c["name"])
    if value is None:
        if "default" not in c:
            return None  # absent option: nothing to prove wrong
        value = c["default"]
    return None if compare(value, c) else {"value": value}


def _check_count(view: View, c: Constraint) -> dict[str, Any] | None:
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
    return None if compare(n, c) else {"count": n}


def _check_operands(view: View, c: Constraint) -> dict[str, Any] | None:
    runtime = sum(1 for t in view.inputs if t is not None and not t.is_const)
    const = sum(1 for t in view.inputs if t is not None and t.is_const)
    for combo in c["any_of"]:
        if combo.get("runtime", runtime) == runtime and combo.get("const", const) == const and \
                combo.get("outputs", len(view.outputs)) == len(view.outputs):
            return None
    return {"runtime": runtime, "const": const, "count": len(view.outputs)}


def _each_tensor(view: View, c: Constraint,
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


def _check_rank(view: View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if compare(t.rank, c) else {"value": t.rank})


def _check_type(view: View, c: Constraint) -> dict[str, Any] | None:
    def test(t: TensorInfo) -> dict[str, Any] | None:
        if t.is_const and t.type in c.get("const_in", ()):
            return None
        if c.get("runtime_only") and t.is_const:
            return None
        return None if compare(t.type, c) else {"value": t.type}

    return _each_tensor(view, c, test)


def _check_zero_point(view: View, c: Constraint) -> dict[str, Any] | None:
    """A quantized tensor's (first) zero point; float and unquantized tensors pass."""
    return _each_tensor(view, c, lambda t: None if t.zero_point is None or not t.quantized or compare(t.zero_point, c)
                        else {"value": t.zero_point})


def _check_const(view: View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if t.is_const == c["is"] else {"value": t.is_const})


def _check_shape(view: View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if _shape(t) in [list(s) for s in c["in"]] else {"value": _shape(t)})


def _check_dim(view: View, c: Constraint) -> dict[str, Any] | None:
    def test(t: TensorInfo) -> dict[str, Any] | None:
        axis = c["axis"]
        if not -t.rank <= axis < t.rank:
            return None if c.get("missing_ok") else {"value": "none"}
        return None if compare(t.shape[axis], c) else {"value": t.shape[axis]}

    return _each_tensor(view, c, test)


def _check_numel(view: View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if compare(t.num_elements, c) else {"value": t.num_elements})


def _check_values(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_input_types(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_gpu_broadcast(view: View, c: Constraint) -> dict[str, Any] | None:
    """GPU ``CheckAddMulBroadcastCompatibility`` with enhanced broadcast (offline checks assume it)."""
    if len(view.inputs) < 2 or view.inputs[0] is None or view.inputs[1] is None:
        return None
    a, b = view.inputs[0].shape, view.inputs[1].shape
    if len(a) > 1 and len(b) > 1 and len(a) != len(b) and not _broadcastable(a, b):
        return {"value": f"[{','.join(map(str, a))}] vs [{','.join(map(str, b))}]"}
    return None


def _check_coreml_broadcast(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_single_batch(view: View, c: Constraint) -> dict[str, Any] | None:
    return _each_tensor(view, c, lambda t: None if not t.shape or t.shape[-1] == t.num_elements
                        else {"value": _shape(t)})


def _check_axis_is_last(view: View, c: Constraint) -> dict[str, Any] | None:
    axis = view.option(c["option"])
    tensors = view.tensors(c["tensor"]) or []
    t = tensors[0] if tensors else None
    if axis is None or t is None:
        return None
    return None if axis in (-1, t.rank - 1) else {"value": axis, "rank": t.rank}


def _check_same_shape_as_output_or_scalar(view: View, c: Constraint) -> dict[str, Any] | None:
    out = view.outputs[0].shape if view.outputs else ()
    return _each_tensor(view, c, lambda t: None if (not t.shape or t.shape == out or
                                                    (t.rank == 1 and t.shape[0] <= 1)) else {"value": _shape(t)})


def _check_sole_consumer(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_type_pairs(view: View, c: Constraint) -> dict[str, Any] | None:
    """(input:0 type, output:0 type) must be one of ``pairs``."""
    if not view.inputs or view.inputs[0] is None or not view.outputs:
        return {"value": "missing input or output"}
    pair = [view.inputs[0].type, view.outputs[0].type]
    return None if pair in [list(p) for p in c["pairs"]] else {"value": f"{pair[0]} -> {pair[1]}"}


def _present(view: View, refs: Iterable[str]) -> list[TensorInfo]:
    """The first tensor of each reference, where the op has one."""
    out = []
    for ref in refs:
        found = view.tensors(ref)
        if found and found[0] is not None:
            out.append(found[0])
    return out


def _check_same_rank(view: View, c: Constraint) -> dict[str, Any] | None:
    ranks = [t.rank for t in _present(view, c["tensors"])]
    return None if len(set(ranks)) <= 1 else {"value": ranks}


def _check_tensor_types(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_allowed_tensors(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_param_rank(view: View, c: Constraint) -> dict[str, Any] | None:
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


def _check_same_type(view: View, c: Constraint) -> dict[str, Any] | None:
    types = [t.type for t in _present(view, c["tensors"])]
    return None if len(set(types)) <= 1 else {"value": " vs ".join(types)}


CHECKS: dict[str, Callable[[View, Constraint], dict[str, Any] | None]] = {
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


def _applies(c: Constraint, view: View) -> bool:
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


def run_constraints(constraints: Iterable[Constraint], view: View, rules: Mapping[str, Any]) -> tuple[str, str] | None:
    for c in constraints:
        if not _applies(c, view):
            continue
        bad = CHECKS[c["check"]](view, c)
        if bad is not None:
            template = bad.pop("_reason", c["reason"])
            values = {"op": view.op.name, "version": view.op.version, "inputs": len(view.inputs),
                      "outputs": len(view.outputs), **{k: c[k] for k in ("min", "max", "equals") if k in c}, **bad}
            return fmt(template, **values), rule_source(rules, c["source"])
    return None


def model_refusal(model: ModelInfo, subgraph: int, rules: Mapping[str, Any]) -> tuple[str, str] | None:
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
                return (fmt(req["reason"], tensor=t.name or f"#{t.index}", signature=list(t.shape_signature),
                             more=more), rule_source(rules, req["source"]))
        elif req["check"] == "no_variable_tensors":
            variables = [(k, t) for k, tensors in enumerate(model.subgraph_tensors) for t in tensors if t.is_variable]
            if variables:
                k, t = variables[0]
                more = f" and {len(variables) - 1} more" if len(variables) > 1 else ""
                where = model.subgraph_names[k] if k < len(model.subgraph_names) and model.subgraph_names[k] else k
                return (fmt(req["reason"], tensor=t.name or f"#{t.index}", subgraph=where, more=more),
                        rule_source(rules, req["source"]))
    return None

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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litegate.compat import coreml, qnn
from litegate.compat.constraints import View, compare, fmt, model_refusal, rule_source, run_constraints
from litegate.compat.partition import partition
from litegate.compat.ruleset import DELEGATES, load_rules
from litegate.compat.summary import summed
from litegate.errors import ConfigError
from litegate.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo
from litegate.tflite.verify import load_model
from litegate.types import CompatPartition, CompatReport, OpCompat, Status


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
        return False, fmt(f["reason"], op=op.name, custom=op.custom_code), rule_source(rules, f["source"])
    if op.is_custom:
        custom = rules.get("custom_ops", {})
        rule = custom.get("supported", {}).get(op.custom_code or "")
        if rule is None:
            return False, fmt(custom.get("reason", rules["unlisted_op"]["reason"]), op=op.name,
                               custom=op.custom_code), rule_source(rules, custom.get("source", rules["unlisted_op"]["source"]))
    else:
        rule = rules["ops"].get(op.op)
        if rule is None:
            u = rules["unlisted_op"]
            return False, fmt(u["reason"], op=op.name), rule_source(rules, u["source"])
    view = View(op, inputs if inputs is not None else op.inputs, consumers or {})
    failed = run_constraints(rules.get("before", ()), view, rules)
    if failed is None and "unsupported" in rule:
        failed = (fmt(rule["unsupported"], op=op.name, version=op.version), rule_source(rules, rule["source"]))
    if failed is None:
        failed = _check_version(op, rule, rules)
    if failed is None:
        failed = run_constraints(rule.get("constraints", ()), view, rules)
    if failed is None:
        failed = run_constraints(rules.get("after", ()), view, rules)
    if failed is not None:
        return False, failed[0], failed[1]
    return True, "", ""


def _check_version(op: OpInfo, rule: Mapping[str, Any], rules: Mapping[str, Any]) -> tuple[str, str] | None:
    spec = rule.get("version", rules.get("version", {}).get("default"))
    if not spec:
        return None
    if compare(op.version, spec):
        return None
    v = rules["version"]
    lo, hi = spec.get("min", 1), spec.get("max", spec.get("equals"))
    allowed = f"{hi}" if lo == hi else (f"<= {hi}" if hi is not None else f">= {lo}")
    return (fmt(v["reason"], op=op.name, version=op.version, max=hi, min=lo, allowed=allowed),
            rule_source(rules, v["source"]))


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
        refused = model_refusal(model, s, rules)
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
            fp16_verdict = (True, "", "") if whole else (False, fp16["reason"], rule_source(rules, fp16["source"]))
            for k in folded:
                raw[k] = raw.get(k, fp16_verdict) if refused else fp16_verdict
            neutral: set[int] = set()
        else:
            for k in folded:
                raw.setdefault(k, (True, "", ""))
            neutral = set(folded)  # absorbed: neither joins nor splits a partition
        sub_parts, delegated, why = partition(ops, raw, neutral, consumers, min_nodes, max_parts, rules)
        partitions.extend(sub_parts)
        for o in ops:
            ok, reason, source = raw[o.index]
            if ok and not delegated.get(o.index, False):
                reason, source = why.get(o.index, ("", ""))
            verdicts.append(OpCompat(index=o.index, op=o.name, version=o.version, delegate=delegate, supported=ok,
                                     reason=reason, delegated=delegated.get(o.index, False), subgraph=s,
                                     macs=o.macs, source=source))
    return summed(verdicts, partitions, delegate=delegate, min_nodes_per_partition=min_nodes,
                  max_delegated_partitions=max_parts, model_reason="; ".join(dict.fromkeys(model_reasons)),
                  model=model_name, notes=tuple(rules.get("notes", ())), title=str(rules.get("title", "")),
                  extra={"display_name": rules["display_name"]} if rules.get("display_name") else {})


# Every compatibility target, registered here: the rule-based delegates (data in rules/*.json), the
# compilers that give a real verdict (qnn[:SOC]: Qualcomm's HTP compiler, litegate.compat.qnn), and Core ML
# ML Programs converted from the TF graph in a release run (mlprogram[:DEPLOYMENT]: litegate.compat.coreml).
TARGET_FORMS = (*DELEGATES, f"{qnn.PREFIX}[:SOC]", f"{coreml.PREFIX}[:DEPLOYMENT]")


def target_error(name: object) -> str | None:
    """None if ``name`` is a compatibility target litegate knows (it may still not run here), else why not."""
    if not isinstance(name, str) or not name:
        return f"a delegate must be a non-empty string, got {name!r}"
    if qnn.is_qnn_target(name):
        try:
            qnn.parse_target(name)
        except ValueError as exc:
            return str(exc)
        return None
    if coreml.is_mlprogram_target(name):
        try:
            coreml.parse_target(name)
        except ValueError as exc:
            return str(exc)
        return None
    if name in DELEGATES or name.endswith(".json"):
        return None
    return f"unknown delegate {name!r} (known: {', '.join(TARGET_FORMS)}, or a rule file .json)"


def canonical_target(name: str) -> str:
    """The name a target's reports carry: ``qnn`` and ``qnn:sm8650`` are ``qnn:SM8650``; others unchanged."""
    return f"{qnn.PREFIX}:{qnn.parse_target(name)}" if qnn.is_qnn_target(name) else name


def check_target(model: ModelInfo, path: str | Path, name: str, *, model_name: str = "") -> CompatReport:
    """``model`` (read from ``path``) against one target: a delegate's rules, or a compiler's verdict."""
    if qnn.is_qnn_target(name):
        return qnn.report(model, path, name, model_name=model_name)
    return evaluate(model, load_rules(name), model_name=model_name)


def check_model(path: str | Path, delegates: Sequence[str] = DELEGATES) -> list[CompatReport]:
    """Verify and parse a .tflite file, then check it against each target.

    Args:
        path: the .tflite model.
        delegates: built-in delegate names (``gpu``, ``hexagon``, ``coreml``, ``xnnpack``), rule file paths, or
            compiler targets (``qnn:SM8650``).

    Raises:
        ModelLoadError: the file is missing, not a TFLite flatbuffer, truncated or corrupt.
        ConfigError: an unknown delegate or a malformed rule file.
    """
    for d in delegates:
        if coreml.is_mlprogram_target(d):
            raise ConfigError(f"{d}: an mlprogram target converts the TensorFlow model, not a .tflite; list it in "
                              "a release config's [check] delegates")
        if not qnn.is_qnn_target(d):
            load_rules(d)  # a bad rule file fails before any compile
    model = load_model(path)
    return [check_target(model, path, d, model_name=str(path)) for d in delegates]


def render_table(reports: Sequence[CompatReport]) -> str:
    """A terminal summary: per delegate the fractions, partitions and grouped CPU fallbacks with reasons."""
    lines: list[str] = []
    for r in reports:
        if r.status is not Status.OK:
            lines += [f"{r.delegate}: {r.status.value.replace('_', ' ')}: {r.reason}", ""]
            continue
        macs = "n/a" if r.delegated_mac_fraction is None else f"{100 * r.delegated_mac_fraction:.1f}%"
        taken = sum(1 for p in r.partitions if p.delegated)
        lines.append(f"{r.delegate}: {r.delegated_ops}/{r.total_ops} ops delegated "
                     f"({100 * r.delegated_fraction:.1f}%), MACs {macs}, {taken} of {len(r.partitions)} partitions "
                     f"delegated (min {r.min_nodes_per_partition} ops/partition"
                     f"{'' if r.max_delegated_partitions is None else f', max {r.max_delegated_partitions}'})")
        if r.title:
            lines.append(f"  target: {r.title}")
        if r.extra.get("seconds") is not None:
            size = r.extra.get("compiled_bytes")
            lines.append(f"  compile: {r.extra['seconds']:.2f} s, " + (f"{size / 1e6:.2f} MB compiled" if size else "nothing compiled"))
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

"""Partitions of supported ops as a delegate forms them, and the delegate's own view of a subgraph."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from litegate.compat.constraints import fmt, model_refusal, rule_source
from litegate.tflite.flatbuffer import ModelInfo, OpInfo
from litegate.types import CompatPartition, CompatReport


def partition(ops: Sequence[OpInfo], raw: Mapping[int, tuple[bool, str, str]], neutral: set[int],
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
    src = rule_source(rules, part["source"])
    delegated: dict[int, bool] = {}
    why: dict[int, tuple[str, str]] = {}
    result: list[CompatPartition] = []
    s = ops[0].subgraph if ops else 0
    for k, run in enumerate(runs):
        take = k in chosen
        reason = ""
        if not take:
            if len(run) < min_nodes:
                reason = fmt(part.get("min_nodes_reason", "partition of {size} ops is below min_nodes_per_partition "
                                       "{min}: runs on the CPU"), size=len(run), min=min_nodes)
            else:
                reason = fmt(part.get("max_partitions_reason", "only the {max} largest partitions are delegated: "
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
            why[o.index] = (fp16["reason"], rule_source(rules, fp16["source"]))
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
        refused = model_refusal(model, s, rules)
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

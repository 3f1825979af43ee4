"""Refuse SavedModels whose graphs reach the file system, the network or Python, before TensorFlow loads them.

A SavedModel is a program (TensorFlow's own security guidance says so): ``tf.saved_model.load`` runs its
resource initializers, and calling a signature runs its functions, ops like ``WriteFile`` included. This
module reads ``saved_model.pb`` as a protocol buffer only (nothing is imported into a graph, nothing runs)
and looks at every node of every MetaGraphDef: the graph's own nodes and every function of its library,
the nested ones (``If``/``While`` branches, ``PartitionedCall`` targets) included. The ops it refuses are
data, in ``rules/unsafe_ops.json``.

Real models carry the saver's own ``SaveV2``/``MergeV2Checkpoints``/``RestoreV2``: ``tf.saved_model.save``
writes them into ``__inference__traced_save_*``/``__inference__traced_restore_*``, which only the
MetaGraphDef's ``saver_def`` reaches (TensorFlow 2's loader restores variables without running them). Those
ops (``"saver": true`` in the rules) are allowed there and nowhere else: in a function that a signature, an
initializer, the object graph or any other node also reaches, they are refused like the rest.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from litegate.errors import ModelLoadError
from litegate.types import ModelSource, SourceKind

RULES_PATH = Path(__file__).with_name("rules") / "unsafe_ops.json"
OPT_IN = "--unsafe-allow-ops (or [model] allow_unsafe_ops = true)"


CODE_SOURCES = (SourceKind.SAVED_MODEL, SourceKind.KERAS)  # formats that carry code (graphs, Lambda layers)


def sandboxed(source: ModelSource) -> bool:
    """Whether the child that loads ``source`` runs in the sandbox (:mod:`litegate.sandbox`): SavedModels and
    Keras files, the formats that carry code. Hugging Face checkpoints are data (safetensors) read by litegate's
    own graph builders."""
    return source.kind in CODE_SOURCES


@dataclasses.dataclass(frozen=True)
class Rule:
    """One entry of ``rules/unsafe_ops.json``."""

    ops: tuple[str, ...]
    what: str
    saver: bool = False
    attr_prefix: tuple[tuple[str, str], ...] = ()

    def matches(self, node: Any) -> bool:
        if not any(fnmatch.fnmatchcase(node.op, p) for p in self.ops):
            return False
        for attr, prefix in self.attr_prefix:
            value = node.attr[attr].s.decode("utf-8", "replace") if attr in node.attr else ""
            if not value.startswith(prefix):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class Finding:
    """An unsafe op: its name, the node, where it sits (``graph`` or the function's name), and what it does."""

    op: str
    node: str
    where: str
    what: str

    def __str__(self) -> str:
        place = "the graph" if self.where == "graph" else f"function {self.where}"
        return f"{self.op} (node {self.node!r} in {place}: {self.what})"


@cache
def rules() -> tuple[Rule, ...]:
    """The unsafe-op rules, read once from the data file."""
    data = json.loads(RULES_PATH.read_text())
    return tuple(Rule(ops=tuple(r["ops"]), what=r["what"], saver=bool(r.get("saver", False)),
                      attr_prefix=tuple(r.get("attr_prefix", {}).items())) for r in data["rules"])


def _read(path: Path) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2  # protobuf classes only: nothing is executed

    sm = saved_model_pb2.SavedModel()
    pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
    try:
        if pb.is_file():
            sm.ParseFromString(pb.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse(pbtxt.read_text(), sm)
    except Exception as exc:  # noqa: BLE001 - DecodeError, ParseError, OSError, UnicodeError
        raise ModelLoadError(f"{path}: cannot parse the SavedModel: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return sm


def _node_name(ref: str) -> str:
    """``^name``, ``name:0`` or ``name:output:0`` -> ``name``."""
    return ref.lstrip("^").split(":")[0]


def _called(node: Any, library: set[str]) -> Iterator[str]:
    """The library functions a node calls: its op (a function called by name) and every function-valued attr."""
    if node.op in library:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        yield from (f.name for f in value.list.func)


def _reach(start: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return seen


def _saver_only(meta: Any) -> tuple[set[str], set[str]]:
    """(graph nodes, library functions) that only the saver_def reaches."""
    graph = meta.graph_def
    library = {f.signature.name: f for f in graph.library.function}
    names = set(library)
    inputs = {n.name: {_node_name(i) for i in n.input} for n in graph.node}
    roots = {_node_name(meta.saver_def.save_tensor_name), _node_name(meta.saver_def.restore_op_name)} - {""}
    saver_side = _reach(roots, inputs)
    live_roots = ({n.name for n in graph.node} - saver_side) | {
        _node_name(t.name) for sig in meta.signature_def.values() for t in [*sig.inputs.values(), *sig.outputs.values()]}
    saver_nodes = saver_side - _reach(live_roots, inputs)
    calls = {name: {c for n in f.node_def for c in _called(n, names)} for name, f in library.items()}
    by_node = {n.name: set(_called(n, names)) for n in graph.node}
    saver_fns = _reach((c for n in saver_nodes for c in by_node.get(n, ())), calls)
    live_fns = _reach([*(c for n, cs in by_node.items() if n not in saver_nodes for c in cs),
                       *(f for f in names if f not in saver_fns),  # unreached: the object graph may restore it
                       *meta.object_graph_def.concrete_functions], calls)
    return saver_nodes, saver_fns - live_fns


def scan_saved_model(path: Path) -> list[Finding]:
    """Every unsafe op in the SavedModel folder ``path`` (parsed, never loaded), in file order.

    Raises:
        ModelLoadError: the file cannot be parsed.
    """
    table = rules()
    found: list[Finding] = []

    def check(node: Any, where: str, in_saver: bool) -> None:
        for rule in table:
            if rule.matches(node) and not (rule.saver and in_saver):
                found.append(Finding(node.op, node.name, where, rule.what))
                return

    for meta in _read(path).meta_graphs:
        saver_nodes, saver_fns = _saver_only(meta)
        for node in meta.graph_def.node:
            check(node, "graph", node.name in saver_nodes)
        for f in meta.graph_def.library.function:
            for node in f.node_def:
                check(node, f.signature.name, f.signature.name in saver_fns)
    return found


def check_saved_model(path: Path, allow_unsafe_ops: bool) -> list[str]:
    """Refuse the SavedModel at ``path`` if its graphs hold unsafe ops; with the opt-in, a warning note instead.

    Returns:
        Notes for the report (the warning when unsafe ops were allowed; otherwise none).

    Raises:
        ModelLoadError: an unsafe op without the opt-in (one line: the first op, its node and function, and how
            many more), or an unparseable file.
    """
    found = scan_saved_model(path)
    if not found:
        return []
    ops = sorted({f.op for f in found})
    more = f"; {len(found) - 1} more unsafe node(s), ops: {', '.join(ops)}" if len(found) > 1 else ""
    if not allow_unsafe_ops:
        raise ModelLoadError(f"{path}: the SavedModel runs {found[0]}{more}. A SavedModel is a program; refused "
                             f"before loading. Re-export it without these ops, or pass {OPT_IN} if you trust the file")
    return [f"warning: unsafe ops allowed by the opt-in, the model runs them (sandboxed): {found[0]}{more}"]

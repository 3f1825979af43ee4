"""The facts a report shows about a model's graph, read from its flatbuffer (nothing runs)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from litegate.tflite.flatbuffer import ModelInfo


def graph_summary(model: ModelInfo) -> dict[str, Any]:
    """Op count and mix, subgraphs, MACs, Flex/custom ops, dynamic inputs, parameters by dtype and bytes per parameter."""
    inputs = model.subgraph_inputs[0] if model.subgraph_inputs else ()
    tensors = model.subgraph_tensors[0] if model.subgraph_tensors else ()
    graph: dict[str, Any] = {
        "ops": len(model.ops),
        "subgraphs": list(model.subgraph_names),
        "macs": model.total_macs,
        "op_counts": dict(Counter(o.name for o in model.ops).most_common()),
        "flex_ops": sorted({o.name for o in model.ops if o.is_flex}),
        "custom_ops": sorted({o.name for o in model.ops if o.is_custom and not o.is_flex}),
        "dynamic_inputs": [tensors[i].name for i in inputs if i < len(tensors) and tensors[i].dynamic],
    }
    graph["needs_flex_delegate"] = bool(graph["flex_ops"])
    params: dict[str, int] = {}
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for sub in model.subgraph_tensors:
        for t in sub:
            if t.is_const and (t.name, t.shape) not in seen:
                seen.add((t.name, t.shape))
                params[t.type] = params.get(t.type, 0) + t.num_elements
    graph["params_by_dtype"] = params
    total = sum(params.values())
    graph["bytes_per_param"] = round(model.size_bytes / total, 3) if total else None
    return graph

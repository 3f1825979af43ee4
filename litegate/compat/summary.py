"""One compatibility report from per-op verdicts: the fractions, MACs and grouped fallbacks every target shows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from litegate.types import CompatPartition, CompatReport, OpCompat


def summed(ops: Sequence[OpCompat], partitions: Sequence[CompatPartition], **fields: Any) -> CompatReport:
    """A :class:`CompatReport` of ``ops`` and ``partitions``; ``fields`` are the report's other fields."""
    total_macs = sum(o.macs for o in ops)
    delegated_macs = sum(o.macs for o in ops if o.delegated)
    fallback = Counter(o.op for o in ops if not o.delegated)
    return CompatReport(
        ops=tuple(ops), partitions=tuple(partitions),
        delegated_fraction=(sum(1 for o in ops if o.delegated) / len(ops)) if ops else 0.0,
        delegated_mac_fraction=(delegated_macs / total_macs) if total_macs else None,
        fallback_ops=dict(sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0]))), total_macs=total_macs,
        delegated_macs=delegated_macs, **fields)

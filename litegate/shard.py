"""Sharded release runs: a plan of content-hashed work items, partial runs of some items, and their merge.

``litegate plan`` lists a release's work as items, in a fixed order:

* one **conversion item** per variant (ids first, config order), keyed by the variant's convert cache key
  (:func:`litegate.quantize.variants.convert_key`, the key the converted-model cache uses). It converts the variant
  (or finds it in the cache), publishes it, reads its graph and per-delegate compatibility, converts it to Core ML for
  ``mlprogram`` targets, and evaluates its accuracy. Accuracy is scored against the reference variant, so the item
  also finds the reference's model in the cache or converts it (share the cache between jobs to build it once).
* one **measurement cell** per variant × backend × threads (``arm64-emu``: 1 thread only); the backend names the
  device (``adb:SERIAL``, ``aihub:DEVICE``; ``local`` otherwise). A cell only times: it finds the variant's model
  in the cache by its key, or converts it.

Each item carries a ``hash`` of everything that decides its result; the plan's ``hash`` covers every item, so a
changed recipe, model, data set or tool version gives another plan.

Run-level extras in a sharded run: the machine peak probe (no model) runs in each partial that measured cells, and
each cell's efficiency is computed against its own machine's peak at merge; the per-op profile of the slowest variant
and the paired re-measurement of a baseline need a model run after every cell is known, so a merged report says
``not run`` for them (a baseline is still compared, unpaired); Core ML conversion belongs to the conversion item.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litegate.artifacts import atomic_write_text, stable_hash
from litegate.baseline import FINGERPRINT
from litegate.benchmarks.matrix import cell_threads
from litegate.benchmarks.peak import with_efficiency
from litegate.config import ReleaseConfig
from litegate.errors import ConfigError
from litegate.quantize.variants import BuildPlan, convert_key
from litegate.report import load as load_report
from litegate.types import BenchResult, Report, SourceKind, Status, VariantResult

PLAN_SCHEMA = "litegate-plan/1"
CONVERT, MEASURE = "convert", "measure"
SHARDED_NOT_RUN = "sharded run: the per-op profile runs the slowest variant, known only once every cell is merged"


@dataclasses.dataclass(frozen=True)
class Item:
    """One unit of work: a variant's conversion (``kind`` = ``convert``) or one measurement cell (``measure``).

    ``key``: the variant's convert cache key; ``hash``: of everything that decides this item's result.
    """

    id: int
    kind: str
    variant: str
    key: str
    hash: str
    backend: str | None = None
    threads: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (CONVERT, MEASURE):
            raise ValueError(f"item kind {self.kind!r} is not convert or measure")
        if self.kind == MEASURE and (self.backend is None or self.threads is None):
            raise ValueError(f"measurement item {self.id} needs a backend and threads")

    @property
    def label(self) -> str:
        """``convert fp32`` or ``measure fp32 xnnpack×1``."""
        if self.kind == CONVERT:
            return f"convert {self.variant}"
        return f"measure {self.variant} {self.backend}×{self.threads}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "variant": self.variant, "key": self.key,
                               "hash": self.hash}
        if self.kind == MEASURE:
            out.update(backend=self.backend, threads=self.threads, device=self.device)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Item:
        return cls(id=int(d["id"]), kind=str(d["kind"]), variant=str(d["variant"]), key=str(d["key"]),
                   hash=str(d["hash"]), backend=d.get("backend"),
                   threads=None if d.get("threads") is None else int(d["threads"]), device=d.get("device"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A release's work items; ``hash`` is over the name and every item."""

    name: str
    items: tuple[Item, ...]

    @property
    def hash(self) -> str:
        return stable_hash({"schema": PLAN_SCHEMA, "name": self.name, "items": [i.to_dict() for i in self.items]})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PLAN_SCHEMA, "name": self.name, "hash": self.hash,
                "items": [i.to_dict() for i in self.items]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "plan") -> Plan:
        """Raises: ConfigError: not a plan, or its hash does not match its items (edited by hand)."""
        try:
            if d.get("schema") != PLAN_SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r} is not {PLAN_SCHEMA!r}")
            plan = cls(name=str(d["name"]), items=tuple(Item.from_dict(i) for i in d["items"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a litegate plan: {exc}") from None
        if [i.id for i in plan.items] != list(range(len(plan.items))):
            raise ConfigError(f"{where}: not a litegate plan: item ids are not 0..{len(plan.items) - 1} in order")
        if d.get("hash") != plan.hash:
            raise ConfigError(f"{where}: the plan's hash does not match its items (edited?): run litegate plan again")
        return plan

    def of_kind(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.kind == kind]


def device_of(backend: str) -> str:
    """The device a backend runs on: ``adb:SERIAL`` -> SERIAL, ``aihub:DEVICE`` -> DEVICE, else ``local``."""
    kind, _, rest = backend.partition(":")
    if kind in ("adb", "aihub"):
        return rest or f"{kind} (default device)"
    return "local"


def make_plan(cfg: ReleaseConfig, build: BuildPlan, versions: Mapping[str, str], *, eval_sha256: str | None,
              eval_samples: int, bench_inputs: str) -> Plan:
    """The work items of ``cfg``'s release (see the module doc), keyed by the convert stage's cache keys."""
    def key_of(name: str) -> str:
        v = next(x for x in cfg.variants if x.name == name)
        if build.source.kind is SourceKind.TFLITE:  # nothing to convert: the input file is every variant
            return stable_hash({"input": build.source_sha256, "variant": v.recipe.to_dict()})
        return convert_key(build, v, versions)

    keys = {v.name: key_of(v.name) for v in cfg.variants}
    ref = keys.get(cfg.reference)
    evaluation = {"data": eval_sha256, "samples": eval_samples, "reference": cfg.reference, "reference_key": ref,
                  "backend": cfg.bench.eval_backend, "threads": cfg.bench.eval_threads,
                  "delegates": list(cfg.delegates), "backends": list(cfg.bench.backends),
                  "emulate_samples": cfg.emulate_samples}
    items: list[Item] = []
    for v in cfg.variants:
        items.append(Item(id=len(items), kind=CONVERT, variant=v.name, key=keys[v.name],
                          hash=stable_hash({"kind": CONVERT, "key": keys[v.name], "evaluation": evaluation})))
    protocol = cfg.bench.protocol()
    for v in cfg.variants:
        for backend in cfg.bench.backends:
            for t in cell_threads(backend, cfg.bench.threads):
                h = stable_hash({"kind": MEASURE, "key": keys[v.name], "backend": backend, "threads": t,
                                 "protocol": protocol, "inputs": bench_inputs, "data": eval_sha256})
                items.append(Item(id=len(items), kind=MEASURE, variant=v.name, key=keys[v.name], hash=h,
                                  backend=backend, threads=t, device=device_of(backend)))
    return Plan(name=cfg.name, items=tuple(items))


def write_plan(plan: Plan, path: Path) -> None:
    atomic_write_text(path, plan.to_json())


def load_plan(path: Path) -> Plan:
    """Raises: ConfigError: missing or not a plan."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: plan not found (make one with: litegate plan CONFIG -o {path.name})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a litegate plan: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a litegate plan: not a JSON object")
    return Plan.from_dict(data, str(path))


def parse_cells(spec: str) -> tuple[Path, list[int] | None]:
    """``plan.json#3,7,9-11`` -> (plan.json, [3, 7, 9, 10, 11]); ``plan.json`` alone -> every item (None).

    Raises: ConfigError: an id that is not a non-negative integer or range.
    """
    path, sep, ids = spec.partition("#")
    if not path:
        raise ConfigError(f"--cells {spec!r}: give PLAN.json#IDS, e.g. plan.json#3,7")
    if not sep:
        return Path(path), None
    out: list[int] = []
    for part in ids.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--cells {spec!r}: {part!r} is not an item id or a range like 3-5")
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2) or lo) + 1))
    return Path(path), sorted(set(out))


def select(plan: Plan, ids: Sequence[int] | None) -> list[Item]:
    """The items ``ids`` names (every item for None), in plan order. Raises: ConfigError: an unknown id."""
    if ids is None:
        return list(plan.items)
    unknown = [i for i in ids if not 0 <= i < len(plan.items)]
    if unknown:
        raise ConfigError(f"--cells: no item {', '.join(map(str, unknown))} in the plan (ids 0-{len(plan.items) - 1})")
    wanted = set(ids)
    return [i for i in plan.items if i.id in wanted]


def check_same_plan(wanted: Plan, current: Plan, where: str) -> None:
    """Raises: ConfigError: ``where`` was planned from another config, model, data or tool versions."""
    if wanted.hash == current.hash:
        return
    changed = [f"{a.id} ({a.label})" for a, b in zip(wanted.items, current.items, strict=False) if a != b]
    detail = (f"items {', '.join(changed[:8])}{' …' if len(changed) > 8 else ''} differ" if changed
              else f"{len(wanted.items)} items planned, {len(current.items)} now")
    raise ConfigError(f"{where}: plan {wanted.hash[:12]} does not match this config's plan {current.hash[:12]} "
                      f"({detail}): run litegate plan again")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "item"


def github_matrix(plan: Plan, *, group: str = "variant", kind: str | None = None) -> dict[str, Any]:
    """``strategy.matrix`` for GitHub Actions (``fromJSON``): ``{"include": [{name, cells, variants, cache_key}]}``.

    ``group = variant``: one job per variant (its conversion item and its cells, the model converted once);
    ``group = item``: one job per item. ``kind`` keeps only ``convert`` or ``measure`` items. ``cells`` is what
    ``run --cells plan.json#CELLS`` takes; ``cache_key`` hashes the convert keys the job needs (a cache key for the
    converted-model cache).
    """
    if group not in ("variant", "item"):
        raise ConfigError(f"--group {group!r}: variant or item")
    items = [i for i in plan.items if kind is None or i.kind == kind]
    groups: dict[str, list[Item]] = {}
    for i in items:
        name = i.variant if group == "variant" else f"{i.id}-{i.label}"
        groups.setdefault(_safe(name), []).append(i)
    include = []
    for name, its in groups.items():
        variants = sorted({i.variant for i in its})
        include.append({"name": name, "cells": ",".join(str(i.id) for i in its), "variants": ",".join(variants),
                        "cache_key": stable_hash(sorted({i.key for i in its}))[:16]})
    return {"include": include}


def fingerprint(machine: Mapping[str, Any]) -> str:
    """A short hash of what must match for two machines' latencies to compare (:data:`litegate.baseline.FINGERPRINT`)."""
    return stable_hash({k: machine.get(k) for k in FINGERPRINT})[:12]


def partial_info(plan: Plan, items: Sequence[Item], conversions: Mapping[str, str],
                 machine: Mapping[str, Any]) -> dict[str, Any]:
    """``run.partial`` of a partial report: the whole plan, the items this run did, how each model was obtained."""
    return {"plan": plan.to_dict(), "items": [i.id for i in items], "conversions": dict(conversions),
            "fingerprint": fingerprint(machine)}


@dataclasses.dataclass(frozen=True)
class Partial:
    path: Path
    report: Report
    plan: Plan
    items: tuple[int, ...]

    @property
    def fingerprint(self) -> str:
        return str(self.report.run["partial"].get("fingerprint") or fingerprint(self.report.run.get("machine", {})))


def load_partials(paths: Sequence[Path]) -> list[Partial]:
    """Read and check partial reports: each a valid report with a ``run.partial`` block, all of one plan.

    Raises: ConfigError: not a report, not a partial, or partials of different plans (exit 2, one line).
    """
    if not paths:
        raise ConfigError("merge: give the partial reports (partial-*/report.json)")
    out = []
    for p in paths:
        rep = load_report(p)  # the typed records validate themselves; the schema version must match
        info = rep.run.get("partial")
        if not isinstance(info, Mapping):
            raise ConfigError(f"{p}: not a partial report (no run.partial): merge the reports of run --cells")
        try:
            items = tuple(int(i) for i in info["items"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{p}: run.partial.items is not a list of item ids") from None
        out.append(Partial(p, rep, Plan.from_dict(info.get("plan") or {}, f"{p}: run.partial.plan"), items))
    hashes = {q.plan.hash for q in out}
    if len(hashes) > 1:
        which = "; ".join(f"{q.path}: plan {q.plan.hash[:12]}" for q in out)
        raise ConfigError(f"merge: the partial reports come from different plans ({which})")
    plan = out[0].plan
    owners: dict[int, list[Partial]] = {}
    for q in out:
        for i in q.items:
            owners.setdefault(i, []).append(q)
    dup = sorted(i for i, qs in owners.items() if len(qs) > 1)
    if dup:
        raise ConfigError("merge: duplicate cells: " + ", ".join(
            f"{i} ({' and '.join(str(q.path) for q in owners[i])})" for i in dup))
    foreign = sorted(i for i in owners if not 0 <= i < len(plan.items))
    if foreign:
        raise ConfigError(f"merge: cells {', '.join(map(str, foreign))} are not in plan {plan.hash[:12]}")
    missing = [i for i in plan.items if i.id not in owners]
    if missing:
        raise ConfigError("merge: missing cells: " + ", ".join(f"{i.id} ({i.label})" for i in missing))
    return out


@dataclasses.dataclass(frozen=True)
class Merged:
    """The variants of a sharded run put together, and what the merged report says about its shards."""

    plan: Plan
    variants: tuple[VariantResult, ...]
    sharded: dict[str, Any]
    machine: Mapping[str, Any]
    machine_peak: Mapping[str, Any] | None
    partials: tuple[Partial, ...]


def merge(partials: Sequence[Partial]) -> Merged:
    """Each variant as a single run reports it: its conversion item's record with its cells in plan order; each cell's
    efficiency against its own machine's peak; cells from machines of different fingerprints marked not comparable.

    Raises: ConfigError: a partial lacks the variant of an item it claims.
    """
    plan = partials[0].plan
    owner = {i: q for q in partials for i in q.items}
    notes: list[str] = []

    def record(q: Partial, item: Item) -> VariantResult:
        v = q.report.variant(item.variant)
        if v is None:
            raise ConfigError(f"{q.path}: claims item {item.id} ({item.label}) but reports no variant {item.variant!r}")
        return v

    cell_machine: dict[int, Partial] = {}
    variants: list[VariantResult] = []
    for conv in plan.of_kind(CONVERT):
        base = record(owner[conv.id], conv)
        cells: list[BenchResult] = []
        if base.status is Status.OK and base.artifact is not None:
            for item in (i for i in plan.of_kind(MEASURE) if i.variant == conv.variant):
                q = owner[item.id]
                v = record(q, item)
                cell = next((b for b in v.bench if b.backend == item.backend and b.threads == item.threads), None)
                if cell is None:
                    cell = BenchResult(artifact_sha256=base.artifact.sha256, variant=conv.variant,
                                       backend=str(item.backend), threads=int(item.threads or 1), status=Status.FAILED,
                                       reason=f"not measured: {q.path}'s run of item {item.id} did not build the "
                                              f"variant: {v.reason or v.status.value}")
                elif cell.artifact_sha256 != base.artifact.sha256:
                    notes.append(f"item {item.id} ({item.label}) timed a model of sha256 {cell.artifact_sha256[:12]}, "
                                 f"not the published {base.artifact.sha256[:12]} (the conversion is not reproducible "
                                 "across the partial runs' machines)")
                own_peak = q.report.run.get("machine_peak")  # the peak measured in the partial that timed the cell
                if own_peak and cell.status is Status.OK:
                    cell = with_efficiency(dataclasses.replace(base, bench=(cell,)), own_peak).bench[0]
                cells.append(cell)
                cell_machine[item.id] = q
        variants.append(dataclasses.replace(base, bench=tuple(cells)))

    machines: dict[str, dict[str, Any]] = {}
    for item_id, q in sorted(cell_machine.items()):
        m = machines.setdefault(q.fingerprint, {"fingerprint": q.fingerprint, "machine": dict(q.report.run["machine"]),
                                                "machine_peak": q.report.run.get("machine_peak"), "cells": [],
                                                "labels": []})
        m["cells"].append(item_id)
        m["machine_peak"] = m["machine_peak"] or q.report.run.get("machine_peak")  # probed where a cell ran ok
        m["labels"].append(plan.items[item_id].label)
    comparable = len(machines) <= 1
    if not comparable:
        notes.insert(0, f"latency cells were measured on {len(machines)} machines of different fingerprints: cells "
                        "from different machines are not comparable with each other (run.sharded.machines)")
    first = next(iter(machines.values()), None)
    machine = first["machine"] if first else dict(partials[0].report.run["machine"])
    peak: Mapping[str, Any] | None = None
    if first and comparable:
        peak = first["machine_peak"]
    elif first:
        peak = {"not_run": "cells measured on several machines: each cell's efficiency is against its own machine's "
                           "peak (run.sharded.machines)"}
    sharded = {
        "plan": plan.hash,
        "items": len(plan.items),
        "partials": [{"path": str(q.path), "items": list(q.items), "fingerprint": q.fingerprint,
                      "started_at": q.report.run.get("started_at"), "wall_s": q.report.run.get("wall_s"),
                      "conversions": dict(q.report.run["partial"].get("conversions", {}))} for q in partials],
        "machines": list(machines.values()),
        "comparable": comparable,
        "notes": notes,
    }
    return Merged(plan=plan, variants=tuple(variants), sharded=sharded, machine=machine, machine_peak=peak,
                  partials=tuple(partials))

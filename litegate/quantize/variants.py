"""The convert stage of a release: every variant built from the source by :func:`litegate.quantize.build.build_job`,
in one child process (each in its own when the shared one crashes), each output cached under a hash of its inputs."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from litegate.artifacts import StepCache, make_artifact
from litegate.converter.trust import sandboxed
from litegate.errors import IsolationError
from litegate.isolation import run_isolated
from litegate.quantize import recipes
from litegate.timing import Stages
from litegate.types import ModelSource, RecipeKind, SourceKind, Status, VariantConfig, VariantResult

BUILD_JOB = "litegate.quantize.build:build_job"
BUILD_PRELOAD = ("tensorflow",)  # imported lazily by the job; a memory cap under it is "too low to start"


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What the convert stage builds, and from what.

    ``prune_data``: recovery inputs of pruned variants and of recipes with ``qat`` ({npz, labels, sha256}); ``auto_eval``: what ``auto``
    variants score their candidates on ({npz, labels, name, sha256}); ``auto_budgets``: each ``auto`` variant's
    accuracy budget (points) against the reference; ``auto_guard``: the measured CPU backend and thread counts on
    which an ``auto`` variant may be neither slower nor larger than fp32 ({backend, threads}).
    """

    source: ModelSource
    source_sha256: str
    variants: tuple[VariantConfig, ...]
    cache_dir: Path
    debug_dir: Path
    timeout_s: float
    mem_mb: int | None = None
    calibration_npz: Path | None = None
    calibration_hash: str | None = None
    prune_data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    auto_eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    auto_budgets: Mapping[str, float] = dataclasses.field(default_factory=dict)
    auto_guard: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    debug: bool = False


def convert_step_config(plan: BuildPlan, v: VariantConfig) -> dict[str, Any]:
    """Everything besides the source and the tool versions that decides variant ``v``'s converted model."""
    step_cfg: dict[str, Any] = {
        "recipe": v.recipe.to_dict(), "seq_len": plan.source.seq_len, "source": plan.source.kind.value,
        "options": dict(plan.source.options),
        "calibration": plan.calibration_hash if v.recipe.reads_calibration else None,
        "debug": plan.debug and v.recipe.kind in (RecipeKind.FULL_INTEGER, RecipeKind.AUTO)}
    if v.recipe.kind is RecipeKind.AUTO:
        step_cfg["auto_eval"] = {"data": plan.auto_eval.get("sha256"), "budget": plan.auto_budgets[v.name],
                                 "guard": dict(plan.auto_guard)}
    if v.prune is not None:
        step_cfg["prune"] = v.prune.to_dict()
    if v.prune is not None or v.recipe.params.get("qat"):
        step_cfg["prune_data"] = plan.prune_data.get("sha256")
    return step_cfg


def convert_key(plan: BuildPlan, v: VariantConfig, versions: Mapping[str, str]) -> str:
    """The convert cache key of variant ``v`` (:class:`~litegate.artifacts.StepCache`): the content hash of its
    converted model's inputs. ``litegate plan`` keys its conversion items with it."""
    return StepCache.key(plan.source_sha256, "convert", convert_step_config(plan, v), versions)


def build_variants(plan: BuildPlan, versions: dict[str, str], work: Path, say: Callable[[str], None], *,
                   jobs: int = 1, stages: Stages | None = None, slots: threading.Semaphore | None = None,
                   on_built: Callable[[VariantResult], None] | None = None) -> list[VariantResult]:
    """Every variant of ``plan``, from the cache where its inputs are unchanged; failures are per variant.

    The variants to build go to ``jobs`` child processes at once (:func:`_buckets`); ``stages`` receives each
    built variant's conversion time (``convert:NAME``) and the children's loading time (``convert:load``). Each
    child holds one of ``slots`` while it runs; ``on_built`` is told of every variant as soon as its child is done
    (cached ones once the children have their slots), so its evaluation can use a slot a finished child frees.
    """
    cache = StepCache(plan.cache_dir)
    results: dict[str, VariantResult] = {}
    todo = []
    for v in plan.variants:
        if plan.source.kind is SourceKind.TFLITE:
            art = make_artifact(plan.source.path, parent_sha256=None, produced_by="input", step_config={}, versions=versions)
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=art, cached=True)
            continue
        step_cfg = convert_step_config(plan, v)
        key = convert_key(plan, v, versions)
        hit = cache.get(key)
        if hit is not None:
            say(f"convert: {v.name} (cached)")
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=hit, cached=True,
                                            quant=cache.extra(key))
        else:
            todo.append((v, key, step_cfg))
    cached = list(results.values())  # ready now: their evaluation may start once the children hold their slots
    if todo:
        payload = {
            "source": plan.source.to_dict(),
            "prune_data": dict(plan.prune_data),
            "calibration_npz": str(plan.calibration_npz) if plan.calibration_npz else None,
            "debug": plan.debug,
            "check_determinism": bool(plan.source.options.get("check_determinism")),
            "debug_dir": str(plan.debug_dir),
            "auto_eval": dict(plan.auto_eval),
            "auto_guard": dict(plan.auto_guard),
        }
        t0 = time.monotonic()
        writable = [work]
        if plan.debug:
            plan.debug_dir.mkdir(parents=True, exist_ok=True)
            writable.append(plan.debug_dir)
        jail = writable if sandboxed(plan.source) else None
        buckets = _buckets([v for v, _, _ in todo], jobs)
        for b in buckets:
            say(f"convert: building {', '.join(v.name for v in b)} in a child process")
        pending = {v.name: (key, step_cfg) for v, key, step_cfg in todo}

        def bucket(b: list[VariantConfig]) -> None:
            try:
                part, load_s = _build_children(payload, [_entry(plan, v, work) for v in b], plan, jail, say)
            finally:
                if slots is not None:
                    slots.release()
            if stages is not None:
                stages.add("convert:load", load_s)
            for v in b:
                key, step_cfg = pending[v.name]
                results[v.name] = _built(plan, v, key, step_cfg, part.get(v.name), work, versions, cache, stages)
                if on_built is not None:
                    on_built(results[v.name])

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(buckets)) as pool:
            futures = []
            for b in buckets:
                if slots is not None:
                    slots.acquire()  # here, not in the thread: the children take their slots before any evaluation
                futures.append(pool.submit(bucket, b))
            if on_built is not None:
                for r in cached:
                    on_built(r)
            for f in futures:
                f.result()
        say(f"convert: done in {time.monotonic() - t0:.1f} s")
    elif on_built is not None:
        for r in cached:
            on_built(r)
    return [results[v.name] for v in plan.variants]


def _built(plan: BuildPlan, v: VariantConfig, key: str, step_cfg: dict[str, Any], r: dict[str, Any] | None, work: Path,
           versions: Mapping[str, str], cache: StepCache, stages: Stages | None) -> VariantResult:
    """A built variant's result, its model put in the cache; or the failure its child reported."""
    r = r or {"ok": False, "error": "converter returned no result for this variant"}
    if not r.get("ok"):
        return VariantResult(v.name, v.recipe, Status.FAILED, reason=r["error"])
    tmp = work / f"{v.name}.tflite"
    art = make_artifact(tmp, parent_sha256=plan.source_sha256, produced_by="convert", step_config=step_cfg,
                        versions=versions)
    extra = r.get("extra", {})
    if stages is not None and "seconds" in r:
        stages.add(f"convert:{v.name}", r["seconds"])
    return VariantResult(v.name, v.recipe, Status.OK, artifact=cache.put(key, tmp, art, extra), quant=extra)


# Relative build cost of a recipe kind on a BERT encoder (measured on MiniLM, 2 cores: fp32 ~25 s, int8 ~50 s,
# int16x8 ~230 s, auto's search several int8 conversions and evaluations); a pruned group adds its recovery, and so
# does a recipe's quantization-aware distillation (``qat``: 300 steps on MiniLM ~8 min).
_COST = {RecipeKind.FLOAT: 1.0, RecipeKind.FLOAT16: 1.0, RecipeKind.DYNAMIC_RANGE: 1.0,
         RecipeKind.FULL_INTEGER: 2.0, RecipeKind.INT16X8: 8.0, RecipeKind.AUTO: 8.0}
_RECOVERY_COST = 6.0


def _buckets(variants: list[VariantConfig], jobs: int) -> list[list[VariantConfig]]:
    """``variants`` split over at most ``jobs`` children, heaviest first onto the lightest child (LPT).

    Variants pruned by the same recipe stay in one child: they share one pruned and recovered model. So do the
    calibrated recipes (``int8``, ``auto``) of one model with the same int8 spelling: ``auto`` reuses the calibrated
    graph that ``int8``'s debug statistics made (``[quantize] debug``), and the statistics are computed once.
    """
    if jobs <= 1 or len(variants) <= 1:
        return [list(variants)]
    groups: dict[str, list[VariantConfig]] = {}
    units: list[list[VariantConfig]] = []
    for v in variants:
        if v.prune is not None:
            groups.setdefault(json.dumps(v.prune.to_dict(), sort_keys=True), []).append(v)
        elif v.recipe.kind in (RecipeKind.FULL_INTEGER, RecipeKind.AUTO):
            groups.setdefault("calibrated " + json.dumps(recipes.spelling(v.recipe)), []).append(v)
        else:
            units.append([v])
    units.extend(groups.values())

    def cost(unit: list[VariantConfig]) -> float:
        return (sum(_COST.get(v.recipe.kind, 1.0) + (_RECOVERY_COST if v.recipe.params.get("qat") else 0.0) for v in unit)
                + (_RECOVERY_COST if unit[0].prune else 0.0))

    buckets: list[list[VariantConfig]] = [[] for _ in range(min(jobs, len(units)))]
    loads = [0.0] * len(buckets)
    for unit in sorted(units, key=cost, reverse=True):
        i = loads.index(min(loads))
        buckets[i].extend(unit)
        loads[i] += cost(unit)
    order = {v.name: i for i, v in enumerate(variants)}
    return [sorted(b, key=lambda v: order[v.name]) for b in buckets]


def _entry(plan: BuildPlan, v: VariantConfig, work: Path) -> dict[str, Any]:
    return {"name": v.name, "recipe": v.recipe.to_dict(), "out": str(work / f"{v.name}.tflite"),
            "prune": v.prune.to_dict() if v.prune else None,
            "auto_budget": plan.auto_budgets[v.name] if v.recipe.kind is RecipeKind.AUTO else None}


def _build_children(payload: dict[str, Any], entries: list[dict[str, Any]], plan: BuildPlan, jail: list[Path] | None,
                    say: Callable[[str], None]) -> tuple[dict[str, Any], float]:
    """``entries`` built in one child; when that child crashes, each in a child of its own so only the culprit
    fails. Returns ({name: result}, the children's loading seconds)."""
    try:
        job = run_isolated(BUILD_JOB, {**payload, "variants": entries}, timeout_s=plan.timeout_s, mem_mb=plan.mem_mb,
                           preload=BUILD_PRELOAD, sandbox=jail)
        for note in job.get("notes", []):  # the unsafe-ops opt-in's warning, an incomplete sandbox
            if note.startswith(("warning:", "sandbox")):
                say(f"convert: {note}")
        return dict(job["variants"]), float(job.get("load_s", 0.0))
    except IsolationError as exc:
        out: dict[str, Any] = {e["name"]: {"ok": False, "error": exc.message, "stderr": exc.stderr} for e in entries}
        if exc.kind not in ("crashed", "oom") or len(entries) <= 1:
            return out, 0.0
        # One variant can take the shared child down (e.g. a segfault in TensorFlow's calibrator).
        say(f"convert: the shared child {exc.kind}; building each variant in its own child")
        load_s = 0.0
        for entry in entries:
            try:
                job = run_isolated(BUILD_JOB, {**payload, "variants": [entry]}, timeout_s=plan.timeout_s,
                                   mem_mb=plan.mem_mb, preload=BUILD_PRELOAD, sandbox=jail)
                out.update(job["variants"])
                load_s += float(job.get("load_s", 0.0))
            except IsolationError as one:
                out[entry["name"]] = {"ok": False, "error": one.message, "stderr": one.stderr}
        return out, load_s

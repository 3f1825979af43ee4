"""The convert stage of a release: every variant built from the source by :func:`litegate.quantize.build.build_job`,
in one child process (each in its own when the shared one crashes), each output cached under a hash of its inputs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from litegate.artifacts import StepCache, make_artifact
from litegate.converter.trust import sandboxed
from litegate.errors import IsolationError
from litegate.isolation import run_isolated
from litegate.types import ModelSource, RecipeKind, SourceKind, Status, VariantConfig, VariantResult

BUILD_JOB = "litegate.quantize.build:build_job"
BUILD_PRELOAD = ("tensorflow",)  # imported lazily by the job; a memory cap under it is "too low to start"


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What the convert stage builds, and from what.

    ``prune_data``: recovery inputs of pruned variants ({npz, labels, sha256}); ``auto_eval``: what ``auto``
    variants score their candidates on ({npz, labels, name, sha256}); ``auto_budgets``: each ``auto`` variant's
    accuracy budget (points) against the reference.
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
    debug: bool = False


def build_variants(plan: BuildPlan, versions: dict[str, str], work: Path,
                   say: Callable[[str], None]) -> list[VariantResult]:
    """Every variant of ``plan``, from the cache where its inputs are unchanged; failures are per variant."""
    cache = StepCache(plan.cache_dir)
    results: dict[str, VariantResult] = {}
    todo = []
    for v in plan.variants:
        if plan.source.kind is SourceKind.TFLITE:
            art = make_artifact(plan.source.path, parent_sha256=None, produced_by="input", step_config={}, versions=versions)
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=art, cached=True)
            continue
        step_cfg = {"recipe": v.recipe.to_dict(), "seq_len": plan.source.seq_len, "source": plan.source.kind.value,
                    "options": dict(plan.source.options),
                    "calibration": plan.calibration_hash if v.recipe.needs_calibration else None,
                    "debug": plan.debug and v.recipe.kind in (RecipeKind.FULL_INTEGER, RecipeKind.AUTO)}
        if v.recipe.kind is RecipeKind.AUTO:
            step_cfg["auto_eval"] = {"data": plan.auto_eval.get("sha256"), "budget": plan.auto_budgets[v.name]}
        if v.prune is not None:
            step_cfg["prune"] = v.prune.to_dict()
            step_cfg["prune_data"] = plan.prune_data.get("sha256")
        key = cache.key(plan.source_sha256, "convert", step_cfg, versions)
        hit = cache.get(key)
        if hit is not None:
            say(f"convert: {v.name} (cached)")
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=hit, cached=True,
                                            quant=cache.extra(key))
        else:
            todo.append((v, key, step_cfg))
    if todo:
        say(f"convert: building {', '.join(v.name for v, _, _ in todo)} in a child process")
        payload = {
            "source": plan.source.to_dict(),
            "variants": [{"name": v.name, "recipe": v.recipe.to_dict(), "out": str(work / f"{v.name}.tflite"),
                          "prune": v.prune.to_dict() if v.prune else None,
                          "auto_budget": plan.auto_budgets[v.name] if v.recipe.kind is RecipeKind.AUTO else None}
                         for v, _, _ in todo],
            "prune_data": dict(plan.prune_data),
            "calibration_npz": str(plan.calibration_npz) if plan.calibration_npz else None,
            "debug": plan.debug,
            "check_determinism": bool(plan.source.options.get("check_determinism")),
            "debug_dir": str(plan.debug_dir),
            "auto_eval": dict(plan.auto_eval),
        }
        t0 = time.monotonic()
        writable = [work]
        if plan.debug:
            plan.debug_dir.mkdir(parents=True, exist_ok=True)
            writable.append(plan.debug_dir)
        jail = writable if sandboxed(plan.source) else None
        try:
            job = run_isolated(BUILD_JOB, payload, timeout_s=plan.timeout_s, mem_mb=plan.mem_mb, preload=BUILD_PRELOAD,
                               sandbox=jail)
            out = job["variants"]
            for note in job.get("notes", []):  # the unsafe-ops opt-in's warning, an incomplete sandbox
                if note.startswith(("warning:", "sandbox")):
                    say(f"convert: {note}")
        except IsolationError as exc:
            out = {v.name: {"ok": False, "error": exc.message, "stderr": exc.stderr} for v, _, _ in todo}
            if exc.kind in ("crashed", "oom") and len(todo) > 1:
                # One variant can take the shared child down (e.g. a segfault in TensorFlow's calibrator):
                # build each in a child of its own so only the culprit fails.
                say(f"convert: the shared child {exc.kind}; building each variant in its own child")
                entries: list[dict[str, Any]] = payload["variants"]  # type: ignore[assignment]
                for entry in entries:
                    try:
                        out.update(run_isolated(BUILD_JOB,
                                                {**payload, "variants": [entry]}, timeout_s=plan.timeout_s,
                                                mem_mb=plan.mem_mb, preload=BUILD_PRELOAD, sandbox=jail)["variants"])
                    except IsolationError as one:
                        out[entry["name"]] = {"ok": False, "error": one.message, "stderr": one.stderr}
        say(f"convert: done in {time.monotonic() - t0:.1f} s")
        for v, key, step_cfg in todo:
            r = out.get(v.name, {"ok": False, "error": "converter returned no result for this variant"})
            if not r.get("ok"):
                results[v.name] = VariantResult(v.name, v.recipe, Status.FAILED, reason=r["error"])
                continue
            tmp = work / f"{v.name}.tflite"
            art = make_artifact(tmp, parent_sha256=plan.source_sha256, produced_by="convert", step_config=step_cfg,
                                versions=versions)
            extra = r.get("extra", {})
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=cache.put(key, tmp, art, extra),
                                            quant=extra)
    return [results[v.name] for v in plan.variants]

"""Core ML ML Program targets (``mlprogram[:DEPLOYMENT]``): each float variant converted by coremltools.

Unlike the rule-based ``coreml`` target (TFLite's Core ML delegate, read from a .tflite), an ``mlprogram``
target converts the TensorFlow graph litegate builds, in an isolated child (:mod:`litegate.converter.coreml`),
and writes ``<output>/<variant>.<DEPLOYMENT>.mlpackage``. Per variant it records converted or not (the failing
TF op named), the MIL op inventory, the package size and the seconds taken. Prediction (accuracy, latency per
compute units, ``MLComputePlan`` placement) needs Core ML itself, which only macOS has: those cells say so.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from litegate.converter.trust import sandboxed
from litegate.errors import IsolationError, LitegateError
from litegate.isolation import run_isolated
from litegate.types import (
    CoreMLResult,
    ModelSource,
    Recipe,
    RecipeKind,
    SourceKind,
    Status,
    Task,
    VariantConfig,
)

PREFIX = "mlprogram"
DEFAULT_DEPLOYMENT = "iOS16"
# The coremltools 9.0 deployment targets (``coremltools.target``) that run ML Programs (iOS15 / macOS12 and later);
# tests/test_coreml.py checks this against the installed coremltools. Kept here so that a config is checked
# without importing coremltools, which imports TensorFlow.
DEPLOYMENTS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26",
               "watchOS8", "watchOS9", "watchOS10", "watchOS11", "watchOS26", "tvOS15", "tvOS16", "tvOS17", "tvOS18",
               "tvOS26")
INSTALL = "pip install 'litegate[coreml]'"
PREDICTION_CELLS = ("accuracy", "latency ALL", "latency CPU_AND_NE", "latency CPU_ONLY", "placement (MLComputePlan)")
CONVERT_TIMEOUT_S = 900.0

# recipe kind -> the Core ML program that corresponds to it
_PRECISION = {RecipeKind.FLOAT: "fp32", RecipeKind.FLOAT16: "fp16", RecipeKind.DYNAMIC_RANGE: "fp16-int8w"}
PRECISION_TEXT = {"fp32": "fp32", "fp16": "fp16", "fp16-int8w": "fp16, int8 weights"}


def is_mlprogram_target(name: str) -> bool:
    """True for ``mlprogram`` and ``mlprogram:DEPLOYMENT``."""
    return name == PREFIX or name.startswith(PREFIX + ":")


def parse_target(name: str) -> str:
    """The deployment target of ``mlprogram[:DEPLOYMENT]`` (``mlprogram`` alone: :data:`DEFAULT_DEPLOYMENT`).

    Raises:
        ValueError: not an mlprogram target, or a deployment target coremltools does not know (listed).
    """
    if not is_mlprogram_target(name):
        raise ValueError(f"{name!r} is not an mlprogram target (mlprogram or mlprogram:DEPLOYMENT)")
    wanted = name.partition(":")[2].strip() or DEFAULT_DEPLOYMENT
    found = next((d for d in DEPLOYMENTS if d.lower() == wanted.lower()), None)
    if found is None:
        raise ValueError(f"unknown Core ML deployment target {wanted!r} for mlprogram (known: {', '.join(DEPLOYMENTS)})")
    return found


def canonical(name: str) -> str:
    """``mlprogram:DEPLOYMENT`` for ``name`` (``mlprogram`` -> ``mlprogram:iOS16``)."""
    return f"{PREFIX}:{parse_target(name)}"


def title(target: str) -> str:
    """How a report names the target."""
    return f"Core ML ML Program ({parse_target(target)}, coremltools)"


def coremltools_version() -> str | None:
    """The installed coremltools' version, without importing it (None if not installed)."""
    if importlib.util.find_spec("coremltools") is None:
        return None
    try:
        return metadata.version("coremltools")
    except metadata.PackageNotFoundError:
        return None


def prediction_reason() -> str:
    """Why the prediction cells do not run on this machine."""
    if platform.system() != "Darwin":
        return "Core ML prediction needs macOS"
    return ("Core ML prediction is not implemented in litegate yet (a macOS runner would add MLModel.predict accuracy "
            "and latency per compute units ALL, CPU_AND_NE, CPU_ONLY, and MLComputePlan op placement)")


def precision_for(variant: VariantConfig) -> tuple[str | None, str]:
    """(the Core ML program of ``variant``, "") or (None, why it has none)."""
    recipe: Recipe = variant.recipe
    if variant.prune is not None:
        return None, (f"pruned variant: its pruned Keras model exists only inside the TFLite build child, so it is not "
                      f"converted to Core ML (converting the unpruned graph would misreport {variant.name})")
    precision = _PRECISION.get(recipe.kind)
    if precision is None:
        return None, (f"recipe {recipe.name!r} ({recipe.kind.value}) has integer activations: Core ML ML Programs "
                      "run float activations, so there is no Core ML counterpart of this TFLite graph")
    return precision, ""


# the first deployment target of each OS family with compressed (constexpr) weights: coremltools' weight
# quantization raises an older program's specification to iOS16's
_INT8_WEIGHTS_SINCE = {"iOS": 16, "macOS": 13, "watchOS": 9, "tvOS": 16}


def _too_old_for_int8_weights(deployment: str) -> str:
    """Why ``deployment`` cannot load an int8-weight ML Program, or ""."""
    m = re.fullmatch(r"([a-zA-Z]+?)(\d+)", deployment)
    family, version = (m.group(1), int(m.group(2))) if m else ("", 0)
    since = _INT8_WEIGHTS_SINCE.get(family)
    if since is not None and version < since:
        return (f"int8 weights need {family}{since} or later (coremltools raises the program to that specification); "
                f"this target is {deployment}")
    return ""


def source_reason(source: ModelSource) -> str:
    """Why ``source`` cannot be converted to Core ML here, or ""."""
    if source.kind is SourceKind.TFLITE:
        return "the model source is a .tflite file: Core ML conversion needs the TensorFlow model"
    if source.task is Task.TEXT_GENERATION:
        return "text generators (several signatures) are not converted to Core ML"
    return ""


def convert_variants(variants: Sequence[VariantConfig], source: ModelSource, target: str, out_dir: Path, *,
                     timeout_s: float = CONVERT_TIMEOUT_S, mem_mb: int | None = None) -> dict[str, CoreMLResult]:
    """Each variant as an ML Program for ``target``, written to ``out_dir/<variant>.<DEPLOYMENT>.mlpackage``.

    One isolated child converts them all; a child that crashes, hangs or raises fails every variant it had,
    with the reason, and never the run.
    """
    deployment = parse_target(target)
    name = canonical(target)
    version = coremltools_version() or ""
    pred = prediction_reason()
    base: dict[str, Any] = {"target": name, "deployment_target": deployment, "coremltools": version,
                            "prediction": {c: f"not run: {pred}" for c in PREDICTION_CELLS}}
    results: dict[str, CoreMLResult] = {}
    jobs: list[dict[str, Any]] = []
    blocked = source_reason(source) or ("" if version else f"coremltools is not installed: {INSTALL}")
    for v in variants:
        precision, why = precision_for(v)
        if precision == "fp16-int8w" and (old := _too_old_for_int8_weights(deployment)):
            precision, why = None, old
        if precision is None or blocked:
            results[v.name] = CoreMLResult(status=Status.NOT_RUN, reason=blocked or why,
                                           precision=PRECISION_TEXT.get(precision or "", ""), **base)
        else:
            jobs.append({"name": v.name, "precision": precision})
    if not jobs:
        return _without_stale(results, out_dir, deployment)
    with tempfile.TemporaryDirectory(prefix=".litegate-coreml-", dir=out_dir) as tmp:
        for j in jobs:
            j["out"] = str(Path(tmp) / f"{j['name']}.{deployment}.mlpackage")
        payload = {"source": source.to_dict(), "deployment": deployment, "variants": jobs}
        try:
            done = run_isolated("litegate.converter.coreml:convert_job", payload, timeout_s=timeout_s,
                                mem_mb=mem_mb, sandbox=[tmp] if sandboxed(source) else None)["variants"]
        except LitegateError as exc:
            status = Status.TIMEOUT if isinstance(exc, IsolationError) and exc.kind == "timeout" else Status.FAILED
            for j in jobs:
                results[j["name"]] = CoreMLResult(status=status, reason=f"coremltools: {exc.message}",
                                                  precision=PRECISION_TEXT[j["precision"]], **base)
            return _without_stale(results, out_dir, deployment)
        for j in jobs:
            r = done[j["name"]]
            precision = PRECISION_TEXT[j["precision"]]
            if not r["ok"]:
                op = f"TF op {r['op']} ({r['node']}) has no Core ML translation; " if r["op"] else ""
                results[j["name"]] = CoreMLResult(status=Status.FAILED, reason=op + r["error"], failing_op=r["op"],
                                                  precision=precision, **base)
                continue
            final = out_dir / Path(j["out"]).name
            try:
                _move_into_place(Path(j["out"]), final, Path(tmp))
            except OSError as exc:
                results[j["name"]] = CoreMLResult(status=Status.FAILED, reason=f"writing {final} failed: {exc}",
                                                  precision=precision, **base)
                continue
            results[j["name"]] = CoreMLResult(status=Status.OK, precision=precision, mil_ops=r["mil_ops"],
                                              package=str(final), package_bytes=int(r["bytes"]),
                                              seconds=float(r["seconds"]), **base)
    return _without_stale(results, out_dir, deployment)


def _without_stale(results: dict[str, CoreMLResult], out_dir: Path, deployment: str) -> dict[str, CoreMLResult]:
    """``results``, after removing the packages an earlier run left for variants that have none now."""
    for name, r in results.items():
        if r.status is not Status.OK:
            _remove_stale(out_dir / f"{name}.{deployment}.mlpackage")
    return results


def _move_into_place(new: Path, final: Path, scratch: Path) -> None:
    """Replace the folder ``final`` with ``new`` (same file system): the old one is moved aside, the new one moved
    in, and only then the old one removed, so a failure leaves either package whole."""
    old = scratch / (final.name + ".old")
    if final.exists():
        final.rename(old)
    try:
        new.rename(final)
    except OSError:
        if old.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale(final: Path) -> None:
    """A package an earlier run wrote for a variant that has none now: removed, so no stale file sits beside a
    report that calls the variant failed or not run."""
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)

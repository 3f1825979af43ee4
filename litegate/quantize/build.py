"""The one variant builder: (model source, recipe, calibration) -> a .tflite variant.

:func:`build_job` is the child-process entry behind ``litegate run``, ``litegate convert``,
``litegate quantize`` and ``litegate prune`` alike (through :func:`litegate.isolation.run_isolated`).
It loads the source once, then builds every requested variant: an optional pruning recipe first
(:mod:`litegate.quantize.prune`, once per pruning recipe, shared by its variants), then the
quantization recipe, dispatched on its :class:`~litegate.types.RecipeKind` through :data:`BUILDERS`.
Each variant is written atomically; a variant that fails is reported, the others still build.

Payload: ``source`` (ModelSource dict, with its ``seq_len``), ``variants`` ([{name, recipe, out, prune?,
auto_budget?}]), ``calibration_npz`` (encoded calibration text, or token windows for a generator),
``prune_data`` ({npz, labels}: recovery inputs for pruning), ``auto_eval`` ({npz, labels, name}: what
``auto`` scores its candidates on), ``debug`` / ``debug_dir`` (per-layer error CSVs),
``check_determinism``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litegate import sandbox
from litegate.artifacts import atomic_write_bytes
from litegate.backends.paired_timing import PairedProtocol, paired_blocks
from litegate.backends.runtime import Runner
from litegate.converter.convert import convert, convert_signatures, input_names
from litegate.converter.sources import Loaded, load
from litegate.errors import LitegateError, OutputError, QuantizationError
from litegate.quantize import gptq, ptq, recipes
from litegate.quantize.calibration import check_calibration, generator_samples, model_samples
from litegate.quantize.operands import symmetric_matmul_operands
from litegate.quantize.prune import apply_pruning, free_batch_copy, sparsity_report, trained_loaded
from litegate.quantize.qat import apply_qat
from litegate.tasks import classification_metrics, cosine
from litegate.types import ModelSource, Recipe, RecipeKind


@dataclasses.dataclass
class _Child:
    """What one build child shares between its variants: the loaded source, its calibration samples,
    calibrated models per (model, int8 spelling), the models whose calibration data was checked, and
    one pruned model per pruning recipe."""

    payload: Mapping[str, Any]
    source: ModelSource
    base: Loaded
    samples: dict[str, np.ndarray] | None
    calibrations: dict[tuple[int, Any], bytes] = dataclasses.field(default_factory=dict)
    checked: set[int] = dataclasses.field(default_factory=set)
    pruned: dict[str, tuple[Loaded, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    layer_stats: dict[bytes, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    serve: Any = None  # the serving function the last variant was converted from (its int8 spelling)
    fp32: bytes | None = None  # the unpruned model's fp32 conversion, once ``auto``'s guard needs it
    tuned: dict[tuple[int, str, Any], tuple[Loaded, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    rounded: dict[tuple[int, Any], tuple[Loaded, dict[str, Any]]] = dataclasses.field(default_factory=dict)


Builder = Callable[[_Child, Loaded, Recipe, Mapping[str, Any], dict[str, Any]], bytes]


def build_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: load the source once and write every requested variant atomically.

    Returns:
        ``variants`` ({name: {ok, extra, seconds} or {ok: False, type, error}}), the loader's ``notes``, the
        model's ``inputs`` (names, per signature for a generator) and ``load_s`` (loading the source and its
        calibration samples). A variant's ``seconds`` include work it shares with later variants of the same child
        (a pruned model, a calibrated graph), which those then reuse.
    """
    import tensorflow as tf  # heavy: the build child is the only process that imports TensorFlow

    tf.keras.utils.set_random_seed(0)
    source = ModelSource.from_dict(payload["source"])
    t_load = time.monotonic()
    loaded = load(source)
    samples = None
    if payload.get("calibration_npz") and loaded.serve is not None:
        with np.load(payload["calibration_npz"]) as data:
            samples = model_samples(loaded.serve, {k: data[k] for k in data.files})
    child = _Child(payload=payload, source=source, base=loaded, samples=samples)
    load_s = round(time.monotonic() - t_load, 2)
    results: dict[str, Any] = {}
    for v in payload["variants"]:
        recipe = Recipe.from_dict(v["recipe"])
        t0 = time.monotonic()
        try:
            extra: dict[str, Any] = {}
            model = loaded
            if v.get("prune"):
                model, extra["pruning"] = _pruned(child, Recipe.from_dict(v["prune"]))
            child.serve = None
            builder = _generator if model.signatures else BUILDERS[recipe.kind]
            data = builder(child, model, recipe, v, extra)
            data = _rewritten(recipe, data, extra)
            if v.get("prune"):
                extra["pruning"]["tflite"] = sparsity_report(data)
            if payload.get("check_determinism") and not model.signatures and not v.get("prune"):
                extra["determinism"] = _determinism(data, child.serve or model.serve, model.owner, recipe, samples)
            atomic_write_bytes(Path(v["out"]), data)
            results[v["name"]] = {"ok": True, "extra": extra, "seconds": round(time.monotonic() - t0, 2)}
        except OutputError:
            raise  # a full disk stops the run; it is not a property of this variant
        except LitegateError as exc:
            results[v["name"]] = {"ok": False, "type": type(exc).__name__, "error": exc.message}
    inputs = input_names(loaded.serve) if loaded.serve is not None else {
        k: list(f.structured_input_signature[1]) for k, f in loaded.signatures.items()}
    notice = str(sandbox.status()["notice"])  # a sandboxed child where a layer could not be applied
    return {"variants": results, "notes": loaded.notes + ([notice] if notice else []), "inputs": inputs,
            "load_s": load_s}


def _generator(child: _Child, model: Loaded, recipe: Recipe, v: Mapping[str, Any], extra: dict[str, Any]) -> bytes:
    """A multi-signature text generator: every signature converted together, calibrated on a float rollout.

    With ``generator_quantizer = "litert-quantizer"`` the signatures are converted in float and litert-quantizer makes
    the whole model integer (:func:`litegate.quantize.ptq.quantize_signatures`), each signature calibrated on its own
    calls."""
    payload = child.payload
    gen_samples = None
    if recipe.needs_calibration and payload.get("calibration_npz"):
        with np.load(payload["calibration_npz"]) as cal:
            gen_samples = generator_samples(model.signatures, cal["tokens"], child.source.seq_len)
    notes: list[str] = []
    by_litert = recipe.params.get("generator_quantizer") == "litert-quantizer"
    if by_litert and not gen_samples:
        raise QuantizationError(f"recipe {recipe.name!r} needs calibration windows (data.calibration) for a text generator")
    signatures = model.signatures
    if recipe.kind in (RecipeKind.FULL_INTEGER, RecipeKind.INT16X8):  # for an NPU: no rank-0 position slice
        from litegate.converter.gpt2 import integer_signatures  # TensorFlow: build child only

        signatures = integer_signatures(model.owner) or signatures
    with tempfile.TemporaryDirectory(prefix="litegate-sig-") as tmp:
        converted_as = Recipe(name=recipe.name, kind=RecipeKind.FLOAT, params={}) if by_litert else recipe
        data = convert_signatures(signatures, model.owner, converted_as, Path(tmp), gen_samples, notes)
    if by_litert:
        bits = 16 if recipe.kind is RecipeKind.INT16X8 else 8
        data, extra["litert_quantizer"] = ptq.quantize_signatures(data, gen_samples or [], bits, recipe.name)
    if notes:
        extra["fallback"] = notes
    if recipe.params.get("weight_rounding") == "gptq":
        extra["weight_rounding"] = {"method": "nearest", "why": "GPTQ rounding is not applied to text generators"}
    return data


def _rewritten(recipe: Recipe, data: bytes, extra: dict[str, Any]) -> bytes:
    """A builder's model with the recipe's rewrites of the converted file applied, in order: the shipped bytes (the
    determinism check rebuilds them through here too)."""
    return _symmetric_operands(recipe, _litert_quantized(recipe, data, extra), extra)


def _litert_quantized(recipe: Recipe, data: bytes, extra: dict[str, Any] | None = None) -> bytes:
    """The converted float model with its weights rewritten by litert-quantizer, for a recipe with a
    ``litert_quantizer`` spec (``int4-blockwise``, ``int8-weight-only``); else ``data`` unchanged."""
    spec = recipe.params.get("litert_quantizer")
    if not spec:
        return data
    out, info = ptq.litert_quantize(data, spec, recipe.name)
    if extra is not None:
        extra["litert_quantizer"] = info
    return out


def _symmetric_operands(recipe: Recipe, data: bytes, extra: dict[str, Any]) -> bytes:
    """``symmetric_matmul_operands``: every int8 BATCH_MATMUL's activation right-hand operand at zero point 0, so
    XNNPACK runs it (:mod:`litegate.quantize.operands`); else ``data`` unchanged. ``auto`` is rewritten after its
    search and guard, which timed the model before the rewrite: the rewrite only moves matmuls into XNNPACK."""
    if not recipe.params.get("symmetric_matmul_operands"):
        return data
    data, extra["matmul_operands"] = symmetric_matmul_operands(data)
    return data


def _calibrated(child: _Child, model: Loaded, serve: Any, spelled_as: Any) -> bytes:
    """The calibrated (not yet quantized) model of ``serve``, once per (model, int8 spelling)."""
    key = (id(model), spelled_as)
    if key not in child.calibrations:
        child.calibrations[key] = ptq.calibrate(serve, model.owner, child.samples or {})
    return child.calibrations[key]


def _prepared(child: _Child, model: Loaded, recipe: Recipe, extra: dict[str, Any]) -> Any:
    """The serving function to convert: calibration data checked once per model, the recipe's int8 spelling."""
    if recipe.needs_calibration:
        _check_calibration_once(child, model)
    serve, spelling = int8_spelling(model, recipe, child.samples)
    extra.update(spelling)
    child.serve = serve
    return serve


def _debug_layers(child: _Child, calibrated: bytes, v: Mapping[str, Any], extra: dict[str, Any]) -> None:
    """``[quantize] debug``: per-layer quantization error of the calibrated model (CSV + the top rows)."""
    if calibrated not in child.layer_stats:  # variants sharing a calibration share its statistics
        child.layer_stats[calibrated] = ptq.layer_statistics(calibrated, child.samples or {})
    rows = child.layer_stats[calibrated]
    if child.payload.get("debug_dir"):
        ptq.write_layer_csv(rows, str(Path(child.payload["debug_dir"]) / f"{v['name']}.layers.csv"))
    extra["layer_stats"] = rows[:25]
    extra["layer_stats_total"] = len(rows)


def _converted(child: _Child, model: Loaded, recipe: Recipe, v: Mapping[str, Any], extra: dict[str, Any]) -> bytes:
    """float, float16, dynamic-range, int16x8 and full-integer recipes: one converter run, or, with a
    denylist (selective quantization), the calibrated model quantized with those ops or nodes kept in float."""
    if recipe.params.get("qat"):
        model = _qat_tuned(child, model, recipe, extra)
    if recipe.params.get("weight_rounding") == "gptq":
        model = _weight_rounded(child, model, recipe, extra)
    serve = _prepared(child, model, recipe, extra)
    selective = bool(recipe.params.get("denylisted_ops") or recipe.params.get("denylisted_nodes"))
    debug = bool(child.payload.get("debug")) and recipe.kind is RecipeKind.FULL_INTEGER
    calibrated = _calibrated(child, model, serve, recipes.spelling(recipe)) if selective or debug else None
    if debug:
        assert calibrated is not None
        _debug_layers(child, calibrated, v, extra)
    if selective:
        assert calibrated is not None
        return ptq.quantize_calibrated(
            calibrated, denylisted_ops=recipe.params.get("denylisted_ops", ()),
            denylisted_nodes=recipe.params.get("denylisted_nodes", ()),
            output_type=str(recipe.params.get("inference_output_type", "float32")))
    notes: list[str] = []
    data = convert(serve, model.owner, recipe, child.samples, notes)
    if notes:
        extra["fallback"] = notes
    return data


def _check_calibration_once(child: _Child, model: Loaded) -> None:
    """The calibration samples checked against ``model``'s inputs, once per model in a child."""
    if id(model) not in child.checked:
        check_calibration(model.serve, child.samples or {})
        child.checked.add(id(model))


def _recovery_inputs(child: _Child) -> tuple[dict[str, np.ndarray], np.ndarray | None] | None:
    """The payload's recovery rows (inputs, labels or None), or None where the release has none."""
    data = child.payload.get("prune_data") or {}
    if not data.get("npz"):
        return None
    with np.load(data["npz"]) as arrays:
        inputs = {k: arrays[k] for k in arrays.files}
    return inputs, np.asarray(data["labels"]) if data.get("labels") is not None else None


def _qat_tuned(child: _Child, model: Loaded, recipe: Recipe, extra: dict[str, Any]) -> Loaded:
    """``model`` fine-tuned by quantization-aware distillation under ``recipe``'s int8 spelling (its ``qat`` param),
    once per (model, qat settings, spelling) in a child, on the release's recovery data where the payload has it,
    else on the calibration samples; the stats go to ``extra["qat"]``."""
    key = (id(model), json.dumps(recipe.params["qat"], sort_keys=True), recipes.spelling(recipe))
    if key not in child.tuned:
        _check_calibration_once(child, model)
        recovery = _recovery_inputs(child)  # a release's recovery rows, labels unused: distillation
        inputs = recovery[0] if recovery else child.samples or {}
        import tensorflow as tf  # heavy: TensorFlow, in the build child only

        try:
            child.tuned[key] = apply_qat(model, recipe.params["qat"], inputs,
                                         lambda: _spelled(model, recipe, child.samples))
        except (ValueError, TypeError, KeyError, tf.errors.OpError) as exc:  # this variant fails, not the child
            raise QuantizationError(f"recipe {recipe.name!r}: quantization-aware distillation failed: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    tuned, stats = child.tuned[key]
    extra["qat"] = stats
    return tuned


def _weight_rounded(child: _Child, model: Loaded, recipe: Recipe, extra: dict[str, Any]) -> Loaded:
    """``model`` with every ``Dense`` kernel rounded by GPTQ onto the int8 grid the converter will use for the recipe's
    spelling (``weight_rounding = "gptq"``, :mod:`litegate.quantize.gptq`), once per (model, spelling) in a child, on
    the calibration samples; the stats go to ``extra["weight_rounding"]``. A model that is not a functional tf_keras
    model, a child without calibration samples, or a rounding that fails keeps the converter's rounding to nearest, and
    the stats say why: GPTQ improves a variant, it never stops one from building."""
    key = (id(model), recipes.spelling(recipe))
    if key not in child.rounded:
        src = model.keras_model
        if src is None or not getattr(src, "_is_graph_network", False):
            child.rounded[key] = (model, {"method": "nearest", "why": "GPTQ rounding needs a functional tf_keras model "
                                          "(litegate's BERT family); this source keeps the converter's rounding"})
        elif not child.samples:
            child.rounded[key] = (model, {"method": "nearest", "why": "no calibration data (data.calibration) to round "
                                          "on; the converter's rounding to nearest is kept"})
        else:
            import tensorflow as tf  # heavy: TensorFlow, in the build child only
            import tf_keras  # TensorFlow: build child only

            _check_calibration_once(child, model)
            t0 = time.monotonic()
            try:
                serve, _ = int8_spelling(model, recipe, child.samples)
                float_model = convert(serve, model.owner, recipes.load("fp32"), None)
                kernels = {layer.name: layer.kernel.numpy() for layer in src.layers
                           if isinstance(layer, tf_keras.layers.Dense)}
                new, stats = gptq.rounded_kernels(float_model, kernels, child.samples or {})
                copy = free_batch_copy(src)
                for name, kernel in new.items():
                    copy.get_layer(name).kernel.assign(kernel)
                note = f"weight rounding: GPTQ on {stats['matched']} of {stats['fully_connected_ops']} FULLY_CONNECTED ops"
                rounded = trained_loaded(model, copy, note)
                rounded.spelling_source = model.spelling_source or model
                # the converter must find the weights on its grid already, or it would round them again
                serve, _ = int8_spelling(rounded, recipe, child.samples)
                on, off = gptq.on_grid(convert(serve, rounded.owner, recipes.load("fp32"), None), new)
            except (LitegateError, ValueError, RuntimeError, np.linalg.LinAlgError, tf.errors.OpError) as exc:
                if isinstance(exc, OutputError):
                    raise  # a full disk stops the run
                why = exc.message if isinstance(exc, LitegateError) else f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                child.rounded[key] = (model, {"method": "nearest", "why": f"GPTQ rounding failed ({why}); the "
                                              "converter's rounding to nearest is kept"})
            else:
                stats["on_grid"] = on
                if off:
                    stats["off_grid"] = off[:20]
                stats["seconds"] = round(time.monotonic() - t0, 2)
                child.rounded[key] = (rounded, stats)
    rounded, stats = child.rounded[key]
    extra["weight_rounding"] = dict(stats)
    return rounded


def _auto_variant(child: _Child, model: Loaded, recipe: Recipe, v: Mapping[str, Any], extra: dict[str, Any]) -> bytes:
    """The ``auto`` recipes: full int8 with the most harmful op groups kept in float (TFLiteConverter's calibrated model,
    denylisted), or with ``islands = "int16"`` (``auto-npu``) at 16-bit activations (litert-quantizer's mixes), and
    for float islands the guard against fp32 (:func:`_auto`)."""
    serve = _prepared(child, model, recipe, extra)
    islands = str(recipe.params.get("islands", "float"))
    if islands == "int16":  # integer islands (an NPU target): litert-quantizer mixes 8- and 16-bit activations
        float_model = convert(serve, model.owner, recipes.load("fp32"), None)
        calibration = ptq.mixed_calibrate(float_model, child.samples or {})
        groups = ptq.op_groups(float_model)

        def quantize(nodes: Sequence[str]) -> bytes:
            return ptq.mixed_quantize(float_model, calibration, nodes)
    else:
        calibrated = _calibrated(child, model, serve, recipes.spelling(recipe))
        if child.payload.get("debug"):
            _debug_layers(child, calibrated, v, extra)
        groups = ptq.op_groups(calibrated)

        def quantize(nodes: Sequence[str]) -> bytes:
            return ptq.quantize_calibrated(calibrated, denylisted_nodes=nodes)
    auto_eval = {**(child.payload.get("auto_eval") or {}), "budget": v.get("auto_budget")}
    guard = None
    if islands == "float" and recipe.params.get("fp32_guard", True):  # int16 islands: the CPU's time is no guide
        where = child.payload.get("auto_guard") or DEFAULT_GUARD
        guard = _Guard(backend=str(where["backend"]), threads=tuple(int(t) for t in where["threads"]),
                       max_ratio=float(recipe.params.get("max_fp32_latency_ratio", 1.0)),
                       fp32=lambda: _fp32_model(child), fallback=lambda: _dynamic_range_model(child, model, v))
    # The budget is against the fp32 variant: a pruned model is scored against the unpruned one.
    data, extra["auto"] = _auto(serve, quantize, groups, recipe, auto_eval,
                                reference_serve=child.base.serve if v.get("prune") else None, guard=guard, islands=islands)
    return data


# Where ``auto`` is checked against fp32 when its caller names no measured backend (``litegate quantize``).
DEFAULT_GUARD: dict[str, Any] = {"backend": "xnnpack", "threads": [1]}
# How the guard times a candidate beside fp32 (in the build child, on the first GUARD_ROWS evaluation inputs): few
# rounds, because the candidates it has to tell apart differ by tens of percent, not by a few.
GUARD_PROTOCOL = PairedProtocol(rounds=7, block=5, warmup=1)
GUARD_ROWS = 4


@dataclasses.dataclass(frozen=True)
class _Guard:
    """``auto`` never ships a model slower or larger than the fp32 variant on the measured CPU backend: a candidate
    passes when its file is no larger than fp32's and its paired median time is at most ``max_ratio`` × fp32's at
    every thread count. ``fp32`` and ``fallback`` (the dynamic-range model) are built only when needed."""

    backend: str
    threads: tuple[int, ...]
    max_ratio: float
    fp32: Callable[[], bytes]
    fallback: Callable[[], bytes]


def _fp32_model(child: _Child) -> bytes:
    """The fp32 variant of the child's (unpruned) model, converted once per child."""
    if child.fp32 is None:
        child.fp32 = convert(child.base.serve, child.base.owner, recipes.load("fp32"), None)
    return child.fp32


def _dynamic_range_model(child: _Child, model: Loaded, v: Mapping[str, Any]) -> bytes:
    """``model`` (pruned or not, in its plain float spelling) built as the ``dynamic-int8`` variant would be (its
    weights rounded by GPTQ where the child has calibration samples)."""
    serve = child.serve
    try:
        return _converted(child, model, recipes.load("dynamic-int8"), v, {})
    finally:
        child.serve = serve


def _against_fp32(candidate: bytes, fp32: bytes, rows: Mapping[str, np.ndarray], guard: _Guard) -> dict[str, Any]:
    """Size and paired latency of ``candidate`` against ``fp32`` (:func:`paired_blocks`); ``ok`` when it is neither
    larger nor slower than ``guard`` allows, else ``why``."""
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="litegate-guard-") as tmp:
        base, new = Path(tmp) / "fp32.tflite", Path(tmp) / "candidate.tflite"
        base.write_bytes(fp32)
        new.write_bytes(candidate)
        for threads in guard.threads:
            blocks = paired_blocks(base, new, rows, backend=guard.backend, threads=threads, protocol=GUARD_PROTOCOL)
            ratios[str(threads)] = round(float(np.median(np.asarray(blocks["new"]) / np.asarray(blocks["base"]))), 3)
    out: dict[str, Any] = {"bytes": len(candidate), "fp32_bytes": len(fp32), "latency_ratio": ratios}
    why = [f"{len(candidate) / 1e6:.2f} MB against fp32's {len(fp32) / 1e6:.2f} MB"] if len(candidate) > len(fp32) else []
    why += [f"{r:.2f}× fp32's time on {guard.backend}×{t}" + (f" (allowed: {guard.max_ratio:g}×)" if guard.max_ratio != 1 else "")
            for t, r in ratios.items() if r > guard.max_ratio]
    out["ok"] = not why
    if why:
        out["why"] = "; ".join(why)
    return out


def _not_a_conversion(child: _Child, model: Loaded, recipe: Recipe, v: Mapping[str, Any],
                      extra: dict[str, Any]) -> bytes:
    raise QuantizationError(f"recipe {recipe.name!r} is a pruning recipe, not a conversion recipe")


BUILDERS: dict[RecipeKind, Builder] = {
    RecipeKind.FLOAT: _converted,
    RecipeKind.FLOAT16: _converted,
    RecipeKind.DYNAMIC_RANGE: _converted,
    RecipeKind.INT16X8: _converted,
    RecipeKind.FULL_INTEGER: _converted,
    RecipeKind.AUTO: _auto_variant,
    RecipeKind.PRUNE: _not_a_conversion,
}
assert set(BUILDERS) == set(RecipeKind)


def int8_spelling(loaded: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> tuple[Any, dict[str, Any]]:
    """``loaded.serve``, traced again in the recipe's int8-friendly spelling of litegate's BERT.

    ``smooth_residual`` (a channel maximum): feed-forward residuals smoothed with scales from the float
    model's residuals on the calibration samples (:func:`litegate.converter.bert.residual_smoothing`);
    ``mask_penalty``: the attention mask's penalty (:func:`litegate.converter.bert.mask_penalty`);
    ``integer_pooling``: the mean-pooling head's integer spelling (:func:`litegate.converter.bert.integer_pooling`).
    ``plain_gather``: the embedding lookup as one plain GATHER (:func:`litegate.converter.bert.plain_gather`).
    Other models are returned unchanged.
    """
    if not _respells(loaded, recipe, samples):
        return loaded.serve, {}
    import tensorflow as tf  # heavy: TensorFlow, in the build child only

    try:
        with contextlib.ExitStack() as stack:
            info = _enter_spelling(loaded, recipe, samples or {}, stack)
            serve = loaded.serve.retraced()
    except (ValueError, TypeError, tf.errors.OpError) as exc:  # this variant fails, not the whole child
        raise QuantizationError(f"recipe {recipe.name!r}: int8 spelling failed: {str(exc).splitlines()[0]}") from None
    return serve, info


def _respells(loaded: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> bool:
    """Whether ``recipe`` respells ``loaded``: it sets a spelling param and ``loaded`` is litegate's BERT."""
    if not any(recipes.spelling(recipe)) or loaded.serve is None or not samples:
        return False
    from litegate.converter.bert import MaskBias  # imports TensorFlow at module level

    return any(isinstance(layer, MaskBias) for layer in getattr(loaded.keras_model, "layers", ()))


def _enter_spelling(loaded: Any, recipe: Recipe, samples: Mapping[str, np.ndarray],
                    stack: contextlib.ExitStack) -> dict[str, Any]:
    """Enter ``recipe``'s spelling contexts of litegate's BERT into ``stack``; return what they are."""
    from litegate.converter.bert import (  # imports TensorFlow at module level
        MeanPool,
        ffn_residual_maxima,
        integer_pooling,
        mask_penalty,
        plain_gather,
        residual_smoothing,
        smoothing_scales,
    )

    target, penalty, pooling, gather = recipes.spelling(recipe)
    info: dict[str, Any] = {}
    if target:
        maxima = ffn_residual_maxima((loaded.spelling_source or loaded).keras_model, samples)
        scales = smoothing_scales(maxima, float(target))
        stack.enter_context(residual_smoothing(scales))
        info["residual_smoothing"] = {
            "target": float(target), "samples": len(next(iter(samples.values()))),
            "blocks": {k: {"max_before": round(float(maxima[k].max()), 2), "channels_scaled": int((s > 1).sum()),
                           "max_scale": round(float(s.max()), 2)} for k, s in scales.items()}}
    if penalty:
        stack.enter_context(mask_penalty(float(penalty)))
        info["mask_penalty"] = float(penalty)
    if pooling and any(isinstance(layer, MeanPool) for layer in loaded.keras_model.layers):
        stack.enter_context(integer_pooling())
        info["integer_pooling"] = "softmax(mask) @ hidden, x · rsqrt(MEAN(x²)) / sqrt(H)"
    if gather:
        stack.enter_context(plain_gather())
        info["plain_gather"] = "the word-embedding lookup as one GATHER of the [V, H] table"
    return info


@contextlib.contextmanager
def _spelled(loaded: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> Iterator[None]:
    """``recipe``'s spelling of ``loaded`` active (nothing where it does not respell it)."""
    with contextlib.ExitStack() as stack:
        if _respells(loaded, recipe, samples):
            _enter_spelling(loaded, recipe, samples or {}, stack)
        yield


def _auto(serve: Any, quantize: Callable[[Sequence[str]], bytes], groups: Mapping[str, Sequence[str]], recipe: Recipe,
          auto_eval: Mapping[str, Any], *, reference_serve: Any = None, guard: _Guard | None = None,
          islands: str = "float") -> tuple[bytes, dict[str, Any]]:
    """The ``auto`` recipe: islands (float, or int16 activations) for the most sensitive op ``groups`` until the budget
    is met; ``quantize(nodes)`` is the model with ``nodes`` at the islands' precision and every other op in int8.

    Op groups are ranked against the float outputs of ``serve`` (the model being quantized); the
    target is set by ``reference_serve`` when given (the unpruned model of a ``PRUNE+auto``
    variant, so pruning and quantization share the variant's budget), else by ``serve``. With a
    ``guard``, the search's model is kept only if it is neither slower nor larger than fp32 on the
    measured backend; else the dynamic-range model, else fp32 itself (:func:`_guarded`).
    """
    if not auto_eval.get("npz"):
        raise QuantizationError("recipe 'auto' needs evaluation data (data.eval) to score its candidates")
    with np.load(auto_eval["npz"]) as data:
        inputs = {k: data[k] for k in data.files}
    names = input_names(serve)
    feeds = model_samples(serve, inputs)
    n = len(next(iter(feeds.values())))

    def float_outputs(fn: Any) -> np.ndarray:
        return np.stack([next(iter(fn(**{k: feeds[k][i : i + 1] for k in names}).values())).numpy()[0] for i in range(n)])

    ref = float_outputs(serve)
    target_ref = ref if reference_serve is None else float_outputs(reference_serve)
    labels = auto_eval.get("labels")
    budget = float(recipe.params.get("budget", 1.0 if auto_eval.get("budget") is None else auto_eval["budget"]))
    if labels is not None:
        labels_arr = np.asarray(labels)
        metric, ref_score = "accuracy", classification_metrics(target_ref, labels_arr)["accuracy"]
        target = ref_score - budget
    else:
        metric, ref_score, target = "cosine", 1.0, float(recipe.params.get("min_cosine", 0.99))

    def outputs(model: bytes, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
            f.write(model)
            f.flush()
            return next(iter(Runner(f.name, threads=2).run_batch(feed).values()))

    def score(model: bytes) -> float:
        out = outputs(model, inputs)
        if labels is not None:
            return classification_metrics(out, labels_arr)["accuracy"]
        return float(np.mean(cosine(out, target_ref)))

    # Rank op groups by what quantizing (or, for int16 islands, raising) each alone does to the outputs, on a subset.
    k = min(n, int(recipe.params.get("rank_samples", 64)))
    subset = {name: arr[:k] for name, arr in inputs.items()}
    impact = ptq.group_impact(quantize, groups, lambda m: outputs(m, subset), ref[:k], raise_alone=islands == "int16")
    ranked = [(r["group"], groups[r["group"]]) for r in impact]
    found = ptq.auto_search(quantize, ranked, score, target=target, max_steps=int(recipe.params.get("max_steps", 8)),
                            islands=islands)
    info = {k: v for k, v in found.items() if k != "model"}
    full = next((t for t in found["trials"] if t[f"{islands}_groups"] == 0 and "bytes" in t), None)
    info.update({"islands": islands, "metric": metric, "float_reference": ref_score, "target": target, "budget": budget,
                 "selected_on": auto_eval.get("name", "evaluation data"), "held_out": bool(auto_eval.get("held_out")),
                 "ranked_groups": len(ranked),
                 "total_nodes": sum(len(v) for v in groups.values()), "ranked_on_samples": k,
                 "group_impact": impact[:20], "full_int8_bytes": full["bytes"] if full else None,
                 "scored_against": "the unpruned float model" if reference_serve is not None else "the float model",
                 "bytes": len(found["model"])})
    if guard is None:
        return found["model"], info
    return _guarded(found["model"], info, guard, score, {k: v[:GUARD_ROWS] for k, v in inputs.items()})


def _guarded(searched: bytes, info: dict[str, Any], guard: _Guard, score: Callable[[bytes], float],
             rows: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, Any]]:
    """The first of the search's model, the dynamic-range model and fp32 that is neither slower nor larger than fp32
    (fp32 always is); ``info`` (the search's record) gets ``guard`` and, when the search's model is passed over, the
    chosen model's ``score``, ``met`` and ``bytes``."""
    fp32 = guard.fp32()
    check = {**_against_fp32(searched, fp32, rows, guard), "float_groups": len(info["float_groups"])}
    record: dict[str, Any] = {"backend": guard.backend, "threads": list(guard.threads),
                              "max_latency_ratio": guard.max_ratio, "searched": check, "chosen": "search"}
    info["guard"] = record
    if check["ok"]:
        return searched, info
    fallback = guard.fallback()
    record["fallback"] = {**_against_fp32(fallback, fp32, rows, guard), "recipe": "dynamic-int8"}
    chosen, label = (fallback, "dynamic-range") if record["fallback"]["ok"] else (fp32, "fp32")
    value = float(score(chosen))
    record["chosen"] = label
    info.update({"score": value, "met": value >= info["target"], "bytes": len(chosen), "float_groups": [],
                 "float_nodes": []})
    if info["met"]:
        info.pop("reason", None)
    else:
        info["reason"] = (f"the {label} model that replaced the search's ({check['why']}) scores {value:.4g}, "
                          f"under the target {info['target']:.4g}")
    return chosen, info


def _pruned(child: _Child, prune: Recipe) -> tuple[Loaded, dict[str, Any]]:
    """Prune (with recovery) once per pruning recipe; later variants reuse the pruned model."""
    key = json.dumps(prune.to_dict(), sort_keys=True)
    if key not in child.pruned:
        recovery = _recovery_inputs(child)
        if recovery is None:
            raise QuantizationError(f"pruning recipe {prune.name!r} needs recovery data (data.train or data.calibration)")
        inputs, labels = recovery
        new, stats = apply_pruning(child.base, prune, texts_inputs=inputs, labels=labels)
        stats = {k: v for k, v in stats.items() if k != "loss_curve"} | {"loss_curve": stats.get("loss_curve", [])[-20:]}
        child.pruned[key] = (new, stats)
    new, stats = child.pruned[key]
    return new, dict(stats)


def _determinism(data: bytes, serve: Any, model: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """Convert again: identical bytes, or (when TensorFlow makes that impossible) how far the outputs differ."""
    again = _rewritten(recipe, convert(serve, model, recipe, samples), {})
    same = again == data
    out: dict[str, Any] = {"identical_bytes": same, "sha256": [hashlib.sha256(data).hexdigest(),
                                                              hashlib.sha256(again).hexdigest()]}
    if not same and samples:
        outs = []
        for blob in (data, again):
            with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
                f.write(blob)
                f.flush()
                outs.append(Runner(f.name, backend="cpu").run_batch({k: v[:16] for k, v in samples.items()}))
        out["max_abs_output_diff"] = max(float(np.max(np.abs(outs[0][k] - outs[1][k]))) for k in outs[0])
    return out

"""TensorFlow -> TFLite conversion with a recipe's converter settings (runs in the build child).

:mod:`litegate.quantize.build` decides what to convert and how; this module only drives
``tf.lite.TFLiteConverter`` (one serving function, or several named signatures) and turns its
failures into :class:`~litegate.errors.ConversionError`. TensorFlow is imported inside the
functions: the module itself is cheap to import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.errors import ConversionError, QuantizationError
from litegate.types import Recipe, RecipeKind

_FLEX_HINT = "set allow_select_tf_ops = true in the recipe to allow them (the app then needs the Flex delegate)"


def input_names(serve: Any) -> list[str]:
    """The keyword input names of a serving function's concrete signature."""
    return list(serve.get_concrete_function().structured_input_signature[1])


def representative_dataset(samples: Mapping[str, np.ndarray] | list[tuple[str, dict[str, np.ndarray]]]) -> Callable[[], Iterator[Any]]:
    if isinstance(samples, list):  # multi-signature: (signature key, inputs) pairs, as recorded
        def per_signature() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
            yield from samples

        return per_signature
    n = len(next(iter(samples.values())))

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            yield {k: v[i : i + 1] for k, v in samples.items()}

    return gen


def convert(serve: Any, model: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None,
            notes: list[str] | None = None) -> bytes:
    """Convert the serving function with ``recipe`` and return the flatbuffer bytes.

    An int16x8 conversion that hits an op without a 16x8 kernel (e.g. CAST) is retried with float
    builtins allowed for those ops; the fallback is appended to ``notes``.
    """
    import tensorflow as tf  # TensorFlow: build child only

    def run(r: Recipe) -> bytes:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
        return _run_converter(conv, r, samples)

    return _with_float_fallback(run, recipe, notes, applies=recipe.kind is RecipeKind.INT16X8,
                                what="int16x8 has no 16x8 kernel")


def _with_float_fallback(run: Callable[[Recipe], bytes], recipe: Recipe, notes: list[str] | None, *,
                         applies: bool, what: str) -> bytes:
    """``run(recipe)``; where ``applies`` and the converter names ops without a kernel for the recipe,
    ``run`` again with float builtins allowed for them, and say so in ``notes`` ("<what> for OPS: ...")."""
    try:
        return run(recipe)
    except ConversionError as exc:
        missing = re.findall(r"not yet supported for op: '([A-Z_0-9]+)'", exc.message)
        if not applies or not missing:
            raise
    ops = list(recipe.params.get("supported_ops", [])) + ["TFLITE_BUILTINS"]
    data = run(Recipe(name=recipe.name, kind=recipe.kind, params={**recipe.params, "supported_ops": ops},
                      description=recipe.description))
    if notes is not None:
        notes.append(f"{what} for {', '.join(sorted(set(missing)))}: those ops run in float "
                     "(converted with TFLITE_BUILTINS allowed)")
    return data


def convert_signatures(signatures: Mapping[str, Any], owner: Any, recipe: Recipe, work: Path,
                       samples: list[tuple[str, dict[str, np.ndarray]]] | None = None,
                       notes: list[str] | None = None) -> bytes:
    """Convert several named signatures (through a SavedModel, so the names survive).

    Calibrated recipes take ``samples`` from :func:`generator_samples`. An op without an integer
    kernel for the recipe (e.g. 16x8 CAST) is retried with float builtins allowed for it, recorded
    in ``notes``.
    """
    import tensorflow as tf  # TensorFlow: build child only

    if recipe.needs_calibration and not samples:
        raise QuantizationError(f"recipe {recipe.name!r} needs calibration windows (data.calibration) for a text generator")
    module = tf.Module()
    module.owner = owner
    export = work / "signatures_saved_model"
    tf.saved_model.save(module, str(export), signatures=dict(signatures))

    def run(r: Recipe) -> bytes:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(export), signature_keys=list(signatures))
        return _run_converter(conv, r, samples)

    return _with_float_fallback(run, recipe, notes, applies=recipe.needs_calibration,
                                what=f"{recipe.name}: no {recipe.kind} kernel")


def _run_converter(conv: Any, recipe: Recipe,
                   samples: Mapping[str, np.ndarray] | list[tuple[str, dict[str, np.ndarray]]] | None) -> bytes:
    import tensorflow as tf  # TensorFlow: build child only

    p = recipe.params
    if recipe.kind is RecipeKind.PRUNE:
        raise QuantizationError(f"recipe {recipe.name!r} is a pruning recipe, not a conversion recipe")
    if "DEFAULT" in p.get("optimizations", []):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if p.get("supported_types"):
        conv.target_spec.supported_types = [getattr(tf, t) for t in p["supported_types"]]
    ops = [getattr(tf.lite.OpsSet, o) for o in p.get("supported_ops", ["TFLITE_BUILTINS"])]
    if p.get("allow_select_tf_ops") and tf.lite.OpsSet.SELECT_TF_OPS not in ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    conv.target_spec.supported_ops = ops
    if recipe.needs_calibration:
        if not samples:
            raise QuantizationError(f"recipe {recipe.name!r} needs calibration data and none was given")
        conv.representative_dataset = representative_dataset(samples)
    for attr in ("inference_input_type", "inference_output_type"):
        if attr in p:
            setattr(conv, attr, getattr(tf, p[attr]))
    try:
        return bytes(conv.convert())
    except Exception as exc:  # the converter raises ConverterError and plain exceptions
        text = str(exc)
        flex = sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9_]*)", text)))
        if flex and ("not supported" in text or "flex op" in text):
            raise ConversionError(f"the graph needs TF ops that TFLite builtins lack: {', '.join(flex)}; {_FLEX_HINT}") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        raise ConversionError(f"recipe {recipe.name!r}: conversion failed: {first}") from None

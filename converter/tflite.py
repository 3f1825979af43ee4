"""TensorFlow -> TFLite conversion with a recipe. Runs inside an isolated child process.

The parent (``litegate.pipeline``) calls :func:`convert_job` through
:func:`litegate.isolation.run_isolated`; TensorFlow is imported only here.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import re  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from litegate.artifacts import atomic_write_bytes  # noqa: E402
from litegate.errors import ConversionError, LitegateError, QuantizationError  # noqa: E402
from litegate.types import ModelSource, Recipe  # noqa: E402

_FLEX_HINT = "set allow_select_tf_ops = true in the recipe to allow them (the app then needs the Flex delegate)"


def input_names(serve: Any) -> list[str]:
    """The keyword input names of a serving function's concrete signature."""
    return list(serve.get_concrete_function().structured_input_signature[1])


def _representative(samples: Mapping[str, np.ndarray]) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    n = len(next(iter(samples.values())))

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            yield {k: v[i : i + 1] for k, v in samples.items()}

    return gen


def model_samples(serve: Any, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calibration samples (keyed by role) re-keyed to the serving function's input names."""
    from litegate.tasks import feed_for

    return feed_for(input_names(serve), dict(samples)) if samples else {}


def check_calibration(serve: Any, samples: Mapping[str, np.ndarray]) -> None:
    """Refuse calibration data that is empty or drives the float model to NaN/Inf."""
    n = len(next(iter(samples.values()))) if samples else 0
    if n == 0:
        raise QuantizationError("calibration set is empty: a calibrated recipe needs at least one sample")
    for i in range(n):
        outs = serve(**{k: v[i : i + 1] for k, v in samples.items()})
        for name, value in outs.items():
            if not np.all(np.isfinite(value.numpy())):
                raise QuantizationError(f"calibration sample {i} gives non-finite values in output {name!r}")


def convert(serve: Any, model: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> bytes:
    """Convert the serving function with ``recipe`` and return the flatbuffer bytes."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    return _run_converter(conv, recipe, samples)


def convert_signatures(signatures: Mapping[str, Any], owner: Any, recipe: Recipe, work: Path) -> bytes:
    """Convert several named signatures (through a SavedModel, so the names survive)."""
    import tensorflow as tf

    if recipe.needs_calibration:
        raise QuantizationError(f"recipe {recipe.name!r}: calibrated quantization of multi-signature text "
                                "generators is not supported yet; use fp32, fp16 or dynamic-int8")
    module = tf.Module()
    module.owner = owner
    export = work / "signatures_saved_model"
    tf.saved_model.save(module, str(export), signatures=dict(signatures))
    conv = tf.lite.TFLiteConverter.from_saved_model(str(export), signature_keys=list(signatures))
    return _run_converter(conv, recipe, None)


def _run_converter(conv: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> bytes:
    import tensorflow as tf

    p = recipe.params
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
        conv.representative_dataset = _representative(samples)
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


def convert_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: build the source once and write every requested variant atomically.

    payload: ``source`` (ModelSource dict), ``seq_len``, ``variants`` ([{name, recipe, out}]),
    ``calibration_npz`` (optional path).
    """
    import tensorflow as tf
    from litegate.converter.sources import load

    tf.keras.utils.set_random_seed(0)
    source = ModelSource.from_dict(payload["source"])
    loaded = load(source, int(payload["seq_len"]))
    serve, model = loaded.serve, loaded.owner
    samples = None
    if payload.get("calibration_npz") and serve is not None:
        with np.load(payload["calibration_npz"]) as data:
            samples = model_samples(serve, {k: data[k] for k in data.files})
    checked = False
    results: dict[str, Any] = {}
    for v in payload["variants"]:
        recipe = Recipe.from_dict(v["recipe"])
        try:
            if loaded.signatures:
                import tempfile

                with tempfile.TemporaryDirectory(prefix="litegate-sig-") as tmp:
                    data = convert_signatures(loaded.signatures, model, recipe, Path(tmp))
                atomic_write_bytes(Path(v["out"]), data)
                results[v["name"]] = {"ok": True}
                continue
            if recipe.needs_calibration and not checked:
                check_calibration(serve, samples or {})
                checked = True
            data = convert(serve, model, recipe, samples)
            atomic_write_bytes(Path(v["out"]), data)
            results[v["name"]] = {"ok": True}
        except LitegateError as exc:
            results[v["name"]] = {"ok": False, "type": type(exc).__name__, "error": exc.message}
    inputs = input_names(serve) if serve is not None else {k: list(f.structured_input_signature[1])
                                                           for k, f in loaded.signatures.items()}
    return {"variants": results, "notes": loaded.notes, "inputs": inputs}

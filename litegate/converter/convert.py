"""TensorFlow -> TFLite conversion with a recipe. Runs inside an isolated child process.

The parent (``litegate.pipeline``) calls :func:`convert_job` through
:func:`litegate.isolation.run_isolated`; TensorFlow is imported only here.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import re  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from litegate.artifacts import atomic_write_bytes  # noqa: E402
from litegate.errors import ConversionError, LitegateError, OutputError, QuantizationError  # noqa: E402
from litegate.types import ModelSource, Recipe  # noqa: E402

_FLEX_HINT = "set allow_select_tf_ops = true in the recipe to allow them (the app then needs the Flex delegate)"


def input_names(serve: Any) -> list[str]:
    """The keyword input names of a serving function's concrete signature."""
    return list(serve.get_concrete_function().structured_input_signature[1])


def _representative(samples: Mapping[str, np.ndarray] | list[tuple[str, dict[str, np.ndarray]]]) -> Callable[[], Iterator[Any]]:
    if isinstance(samples, list):  # multi-signature: (signature key, inputs) pairs, as recorded
        def per_signature() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
            yield from samples

        return per_signature
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


def convert(serve: Any, model: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None,
            notes: list[str] | None = None) -> bytes:
    """Convert the serving function with ``recipe`` and return the flatbuffer bytes.

    An int16x8 conversion that hits an op without a 16x8 kernel (e.g. CAST) is retried with float
    builtins allowed for those ops; the fallback is appended to ``notes``.
    """
    import tensorflow as tf

    def run(r: Recipe) -> bytes:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
        return _run_converter(conv, r, samples)

    return _with_float_fallback(run, recipe, notes, applies=recipe.kind == "int16x8",
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


def generator_samples(signatures: Mapping[str, Any], windows: np.ndarray, prefill_len: int,
                      ) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Calibration samples for every signature of a text generator, from the float model itself.

    Per token window ``[prefill_len + k]``: ``prefill`` on the first ``prefill_len`` tokens (zero
    initial state where it takes one), then ``k`` calls of ``decode`` (GPT-2: continuing from the
    prefill's KV cache at ``pos = prefill_len``) or ``step`` (recurrent: from zero state, walking the
    window's first ``k`` tokens). Each call's inputs are recorded as ``(signature, inputs)``, the
    form the converter's representative dataset takes for multi-signature models.

    Raises:
        QuantizationError: no window, or signatures this rollout does not know.
    """
    import tensorflow as tf

    if len(windows) == 0:
        raise QuantizationError("calibration set is empty: a calibrated recipe needs at least one token window")
    stepper = "decode" if "decode" in signatures else "step"
    if "prefill" not in signatures or stepper not in signatures:
        raise QuantizationError(f"cannot calibrate signatures {', '.join(signatures)} (expected prefill and decode/step)")

    def specs(name: str) -> dict[str, Any]:
        return dict(signatures[name].structured_input_signature[1])

    pre_specs, step_specs = specs("prefill"), specs(stepper)
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    for w in np.asarray(windows, np.int32):
        if len(w) <= prefill_len:
            raise QuantizationError(f"calibration windows of {len(w)} tokens leave none to decode after {prefill_len}")
        zeros = {k: np.zeros(v.shape, v.dtype.as_numpy_dtype) for k, v in pre_specs.items() if k != "tokens"}
        feed = {"tokens": w[None, :prefill_len], **zeros}
        out.append(("prefill", feed))
        res = signatures["prefill"](**{k: tf.constant(v) for k, v in feed.items()})
        state_keys = [k for k in step_specs if k not in ("token", "pos")]
        if "pos" in step_specs:  # KV cache: continue after the prompt
            state = {k: res[k].numpy() for k in state_keys}
            cache_len = min((int(step_specs[k].shape[2]) for k in state_keys), default=len(w))
            positions = range(prefill_len, min(len(w), cache_len))  # a full cache leaves no position to decode
        else:  # recurrent state: walk the window from the start
            state = {k: np.zeros(step_specs[k].shape, step_specs[k].dtype.as_numpy_dtype) for k in state_keys}
            positions = range(0, len(w) - prefill_len)
        for j in positions:
            feed = {"token": w[None, j : j + 1], **({"pos": np.array([j], np.int32)} if "pos" in step_specs else {}),
                    **state}
            out.append((stepper, feed))
            res = signatures[stepper](**{k: tf.constant(v) for k, v in feed.items()})
            state = {k: res[k].numpy() for k in state_keys}
        for name, value in ((k, v) for _, f in out[-len(positions) - 1 :] for k, v in f.items()):
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise QuantizationError(f"calibration drives the float generator to non-finite values in {name!r}")
    return out


def convert_signatures(signatures: Mapping[str, Any], owner: Any, recipe: Recipe, work: Path,
                       samples: list[tuple[str, dict[str, np.ndarray]]] | None = None,
                       notes: list[str] | None = None) -> bytes:
    """Convert several named signatures (through a SavedModel, so the names survive).

    Calibrated recipes take ``samples`` from :func:`generator_samples`. An op without an integer
    kernel for the recipe (e.g. 16x8 CAST) is retried with float builtins allowed for it, recorded
    in ``notes``.
    """
    import tensorflow as tf

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
    import tensorflow as tf

    p = recipe.params
    if recipe.kind == "prune":
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
    checked: set[int] = set()  # models whose calibration data was checked for NaN
    calibrations: dict[tuple[int, Any], bytes] = {}  # calibrated model per (source model, int8 spelling)
    results: dict[str, Any] = {}
    base_loaded = loaded
    pruned: dict[str, tuple[Any, dict[str, Any]]] = {}  # one pruned model per prune recipe, shared by its variants
    for v in payload["variants"]:
        recipe = Recipe.from_dict(v["recipe"])
        try:
            extra: dict[str, Any] = {}
            loaded = base_loaded
            if v.get("prune"):
                loaded, extra["pruning"] = _pruned(base_loaded, Recipe.from_dict(v["prune"]),
                                                   payload.get("prune_data") or {}, pruned)
            serve, model = loaded.serve, loaded.owner
            spelled_as = (recipe.params.get("smooth_residual"), recipe.params.get("mask_penalty"))
            calibrated = calibrations.get((id(loaded), spelled_as))
            if loaded.signatures:
                import tempfile

                gen_samples = None
                if recipe.needs_calibration and payload.get("calibration_npz"):
                    with np.load(payload["calibration_npz"]) as cal:
                        gen_samples = generator_samples(loaded.signatures, cal["tokens"], int(payload["seq_len"]))
                sig_notes: list[str] = []
                with tempfile.TemporaryDirectory(prefix="litegate-sig-") as tmp:
                    data = convert_signatures(loaded.signatures, model, recipe, Path(tmp), gen_samples, sig_notes)
                if sig_notes:
                    extra["fallback"] = sig_notes
            else:
                if recipe.needs_calibration and id(loaded) not in checked:
                    check_calibration(serve, samples or {})
                    checked.add(id(loaded))
                serve, spelling = int8_spelling(loaded, recipe, samples)
                extra.update(spelling)
                selective = recipe.kind == "auto" or bool(recipe.params.get("denylisted_ops") or
                                                          recipe.params.get("denylisted_nodes"))
                if selective or (payload.get("debug") and recipe.kind == "full-integer"):
                    from litegate.quantize import ptq

                    if calibrated is None:
                        calibrated = ptq.calibrate(serve, model, samples or {})
                        calibrations[(id(loaded), spelled_as)] = calibrated
                if payload.get("debug") and recipe.kind in ("full-integer", "auto"):
                    from litegate.quantize import ptq

                    assert calibrated is not None
                    rows = ptq.layer_statistics(calibrated, samples or {})
                    if payload.get("debug_dir"):
                        ptq.write_layer_csv(rows, str(Path(payload["debug_dir"]) / f"{v['name']}.layers.csv"))
                    extra["layer_stats"] = rows[:25]
                    extra["layer_stats_total"] = len(rows)
                if recipe.kind == "auto":
                    assert calibrated is not None
                    auto_eval = {**(payload.get("auto_eval") or {}), "budget": v.get("auto_budget")}
                    # The budget is against the fp32 variant: a pruned model is scored against the unpruned one.
                    data, extra["auto"] = _auto(serve, calibrated, samples or {}, recipe, auto_eval,
                                                reference_serve=base_loaded.serve if v.get("prune") else None)
                elif selective:
                    from litegate.quantize import ptq

                    assert calibrated is not None
                    data = ptq.quantize_calibrated(
                        calibrated, denylisted_ops=recipe.params.get("denylisted_ops", ()),
                        denylisted_nodes=recipe.params.get("denylisted_nodes", ()),
                        output_type=str(recipe.params.get("inference_output_type", "float32")))
                else:
                    notes: list[str] = []
                    data = convert(serve, model, recipe, samples, notes)
                    if notes:
                        extra["fallback"] = notes
            if v.get("prune"):
                from litegate.quantize.prune import sparsity_report

                extra["pruning"]["tflite"] = sparsity_report(data)
            if payload.get("check_determinism") and not loaded.signatures and not v.get("prune"):
                extra["determinism"] = _determinism(data, serve, model, recipe, samples)
            atomic_write_bytes(Path(v["out"]), data)
            results[v["name"]] = {"ok": True, "extra": extra}
        except OutputError:
            raise  # a full disk stops the run; it is not a property of this variant
        except LitegateError as exc:
            results[v["name"]] = {"ok": False, "type": type(exc).__name__, "error": exc.message}
    inputs = input_names(serve) if serve is not None else {k: list(f.structured_input_signature[1])
                                                           for k, f in loaded.signatures.items()}
    return {"variants": results, "notes": loaded.notes, "inputs": inputs}


def int8_spelling(loaded: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> tuple[Any, dict[str, Any]]:
    """``loaded.serve``, traced again in the recipe's int8-friendly spelling of litegate's BERT.

    ``smooth_residual`` (a channel maximum): feed-forward residuals smoothed with scales from the float
    model's residuals on the calibration samples (:func:`litegate.converter.bert.residual_smoothing`);
    ``mask_penalty``: the attention mask's penalty (:func:`litegate.converter.bert.mask_penalty`).
    Other models are returned unchanged.
    """
    target, penalty = recipe.params.get("smooth_residual"), recipe.params.get("mask_penalty")
    if not (target or penalty) or loaded.serve is None or not samples:
        return loaded.serve, {}
    import tensorflow as tf
    from litegate.converter.bert import (
        LayerNorm,
        ffn_residual_maxima,
        mask_penalty,
        residual_smoothing,
        smoothing_scales,
    )

    if not any(isinstance(layer, LayerNorm) for layer in getattr(loaded.keras_model, "layers", ())):
        return loaded.serve, {}
    info: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            if target:
                maxima = ffn_residual_maxima(loaded.keras_model, samples)
                scales = smoothing_scales(maxima, float(target))
                stack.enter_context(residual_smoothing(scales))
                info["residual_smoothing"] = {
                    "target": float(target), "samples": len(next(iter(samples.values()))),
                    "blocks": {k: {"max_before": round(float(maxima[k].max()), 2), "channels_scaled": int((s > 1).sum()),
                                   "max_scale": round(float(s.max()), 2)} for k, s in scales.items()}}
            if penalty:
                stack.enter_context(mask_penalty(float(penalty)))
                info["mask_penalty"] = float(penalty)
            serve = loaded.serve.retraced()
    except (ValueError, TypeError, tf.errors.OpError) as exc:  # this variant fails, not the whole child
        raise QuantizationError(f"recipe {recipe.name!r}: int8 spelling failed: {str(exc).splitlines()[0]}") from None
    return serve, info


def _auto(serve: Any, calibrated: bytes, samples: Mapping[str, np.ndarray], recipe: Recipe,
          auto_eval: Mapping[str, Any], *, reference_serve: Any = None) -> tuple[bytes, dict[str, Any]]:
    """The ``auto`` recipe: float islands for the most sensitive layers until the budget is met.

    Op groups are ranked against the float outputs of ``serve`` (the model being quantized); the
    target is set by ``reference_serve`` when given (the unpruned model of a ``PRUNE+auto``
    variant, so pruning and quantization share the variant's budget), else by ``serve``.
    """
    import tempfile

    from litegate.backends.runtime import Runner
    from litegate.quantize import ptq

    from litegate.tasks import classification_metrics, cosine

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
    budget = float(recipe.params.get("budget", auto_eval.get("budget") or 1.0))
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

    # Rank op groups by what quantizing each alone does to the outputs, on a subset of the data.
    k = min(n, int(recipe.params.get("rank_samples", 64)))
    subset = {name: arr[:k] for name, arr in inputs.items()}
    groups = ptq.op_groups(calibrated)
    impact = ptq.group_impact(calibrated, groups, lambda m: outputs(m, subset), ref[:k])
    ranked = [(r["group"], groups[r["group"]]) for r in impact]
    found = ptq.auto_search(calibrated, ranked, score, target=target, max_steps=int(recipe.params.get("max_steps", 8)))
    info = {k: v for k, v in found.items() if k != "model"}
    full = next((t for t in found["trials"] if t["float_groups"] == 0 and "bytes" in t), None)
    info.update({"metric": metric, "float_reference": ref_score, "target": target, "budget": budget,
                 "selected_on": auto_eval.get("name", "evaluation data"), "ranked_groups": len(ranked),
                 "total_nodes": sum(len(v) for v in groups.values()), "ranked_on_samples": k,
                 "group_impact": impact[:20], "full_int8_bytes": full["bytes"] if full else None,
                 "scored_against": "the unpruned float model" if reference_serve is not None else "the float model",
                 "bytes": len(found["model"])})
    return found["model"], info


def _pruned(loaded: Any, prune: Recipe, data: Mapping[str, Any],
            memo: dict[str, tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """Prune (with recovery) once per prune recipe; later variants reuse the pruned model."""
    import json

    from litegate.quantize.prune import apply_pruning

    key = json.dumps(prune.to_dict(), sort_keys=True)
    if key not in memo:
        if not data.get("npz"):
            raise QuantizationError(f"pruning recipe {prune.name!r} needs recovery data (data.train or data.calibration)")
        with np.load(data["npz"]) as arrays:
            inputs = {k: arrays[k] for k in arrays.files}
        labels = np.asarray(data["labels"]) if data.get("labels") is not None else None
        new, stats = apply_pruning(loaded, prune, texts_inputs=inputs, labels=labels)
        stats = {k: v for k, v in stats.items() if k != "loss_curve"} | {"loss_curve": stats.get("loss_curve", [])[-20:]}
        memo[key] = (new, stats)
    new, stats = memo[key]
    return new, dict(stats)


def _determinism(data: bytes, serve: Any, model: Any, recipe: Recipe, samples: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """Convert again: identical bytes, or (when TensorFlow makes that impossible) how far the outputs differ."""
    import hashlib
    import tempfile

    again = convert(serve, model, recipe, samples)
    same = again == data
    out: dict[str, Any] = {"identical_bytes": same, "sha256": [hashlib.sha256(data).hexdigest(),
                                                              hashlib.sha256(again).hexdigest()]}
    if not same and samples:
        from litegate.backends.runtime import Runner

        outs = []
        for blob in (data, again):
            with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
                f.write(blob)
                f.flush()
                outs.append(Runner(f.name, backend="cpu").run_batch({k: v[:16] for k, v in samples.items()}))
        out["max_abs_output_diff"] = max(float(np.max(np.abs(outs[0][k] - outs[1][k]))) for k in outs[0])
    return out

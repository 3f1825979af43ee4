"""Single-model operations behind ``litegate convert``, ``quantize``, ``prune`` and ``bench``.

Conversion, quantization and pruning all go through the one variant builder
(:func:`litegate.quantize.build.build_job`) in an isolated child; this module prepares its inputs
(tokenized calibration and recovery text), copies the result into place and writes the sidecars.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate import errors
from litegate.artifacts import atomic_copy, atomic_write_text, check_output_path, save_npz, write_model_card
from litegate.benchmarks.matrix import cell_threads, run_cell
from litegate.benchmarks.size import measure_size
from litegate.converter.preflight import check_source, find_tokenizer, source_tokenizer
from litegate.converter.trust import sandboxed
from litegate.errors import ConfigError, ConversionError, DataError, ModelLoadError, QuantizationError
from litegate.isolation import run_isolated
from litegate.quantize import recipes
from litegate.quantize.prune import PruneSettings
from litegate.quantize.variants import BUILD_JOB, BUILD_PRELOAD
from litegate.tasks import TextEncoder, generator_windows, read_labelled_tsv, read_texts
from litegate.tflite.verify import load_model, verify_tflite
from litegate.timing import DEFAULT_PROTOCOL
from litegate.types import BenchResult, ModelSource, Recipe, SourceKind, Task


def _build(source: ModelSource, out: Path, work: Path, *, recipe: Recipe, prune: Recipe | None = None,
           calibration_npz: Path | None = None, prune_data: Mapping[str, Any] | None = None, debug: bool = False,
           timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One variant through the variant builder, copied to ``out`` atomically; returns (job, variant result).

    Raises:
        The builder's error for the variant (QuantizationError, ConversionError, ...), IsolationError.
    """
    tmp_out = work / "model.tflite"
    payload = {"source": source.to_dict(),
               "variants": [{"name": recipe.name, "recipe": recipe.to_dict(), "out": str(tmp_out),
                             "prune": prune.to_dict() if prune else None}],
               "calibration_npz": str(calibration_npz) if calibration_npz else None,
               "prune_data": dict(prune_data or {}), "debug": debug, "debug_dir": str(work)}
    job = run_isolated(BUILD_JOB, payload, timeout_s=timeout_s, preload=BUILD_PRELOAD,
                       sandbox=[work] if sandboxed(source) else None)
    result = job["variants"][recipe.name]
    if not result["ok"]:
        cls = getattr(errors, result.get("type", ""), ConversionError)
        raise cls(result["error"])
    atomic_copy(tmp_out, out)
    return job, result


def sidecar_paths(out: Path, *, debug: bool = False) -> dict[str, Path]:
    """The files written beside a model at ``out``: its metadata, its tokenizer (and ``--debug``'s layer table)."""
    paths = {"metadata": out.with_suffix(".json"), "tokenizer": out.with_suffix(".tokenizer.json")}
    if debug:
        paths["layer table"] = out.with_suffix(".layers.csv")
    return paths


def check_model_output(out: Path, *, debug: bool = False) -> None:
    """Refuse an output the sidecars would overwrite, and one that cannot be written, before any conversion.

    Raises:
        ConfigError: ``out`` is the path of one of its own sidecars (``-o model.json``: the metadata would
            replace the model).
        OutputError: ``out`` or a sidecar cannot be written (a parent that is a file, a read-only or
            immutable directory, /proc, a device such as /dev/null).
    """
    for what, side in sidecar_paths(out, debug=debug).items():
        if side.absolute() == out.absolute():
            raise ConfigError(f"{out}: the model's {what} sidecar is written to this same path and would replace "
                              "the model; give the output a .tflite name")
    for path in (out, *sidecar_paths(out, debug=debug).values()):
        check_output_path(path)


def _write_sidecars(out: Path, *, source: ModelSource, tokenizer: str | None, info: Mapping[str, Any],
                    job: Mapping[str, Any], recipe: str, extra: Mapping[str, Any], pruning: str | None = None) -> None:
    """``OUT.tokenizer.json`` and ``OUT.json`` (task, seq_len, recipe, labels, input names, notes, source), so an
    app and ``litegate bench`` need nothing else."""
    if tokenizer is not None:
        atomic_write_text(out.with_suffix(".tokenizer.json"), tokenizer)
    spelling = {k: extra[k] for k in ("residual_smoothing", "mask_penalty", "integer_pooling") if k in extra}
    write_model_card(out.with_suffix(".json"), task=source.task, seq_len=source.seq_len, recipe=recipe,
                     **({"pruning": pruning} if pruning else {}), labels=info.get("labels", {}),
                     inputs=job.get("inputs", []), notes=job.get("notes", []), source=source.to_dict(),
                     **({"int8_spelling": spelling} if spelling else {}))


def convert_model(source: ModelSource, out: Path, *, recipe: str = "fp32",
                  calibration: Path | None = None, samples: int = 200, timeout_s: float = 900.0,
                  debug: bool = False) -> dict[str, Any]:
    """Convert ``source`` with ``recipe`` into ``out`` (written atomically) plus sidecars.

    Sidecars: ``OUT.tokenizer.json`` (when the source has a tokenizer) and ``OUT.json`` (task,
    seq_len, recipe, labels, input names, notes), so an app and ``litegate eval`` need nothing else.

    Raises:
        ConfigError: ``out`` is one of its own sidecars' paths (``-o model.json``).
        OutputError: ``out`` or a sidecar cannot be written (checked before the conversion starts).
        ModelLoadError, ConversionError, QuantizationError, DataError, IsolationError (``timeout_s``: kind
        ``timeout``).
    """
    if source.kind is SourceKind.TFLITE:
        raise ModelLoadError(f"{source.path}: already a .tflite; use it directly (run, bench, check)")
    check_model_output(out, debug=debug)
    info = check_source(source)
    rec = recipes.load(recipe)
    if rec.prunes:
        raise ConfigError(f"recipe {rec.name!r} prunes: use `litegate prune` (or a PRUNE+QUANT variant in a release config)")
    tok = source_tokenizer(source)
    encoder = TextEncoder(tok, source.seq_len) if tok else None
    with tempfile.TemporaryDirectory(prefix="litegate-convert-") as tmp:
        calib_npz = None
        if rec.needs_calibration or (rec.reads_calibration and calibration is not None and encoder is not None):
            if calibration is None:
                raise QuantizationError(f"recipe {rec.name!r} needs calibration text")
            if encoder is None:
                raise QuantizationError(f"recipe {rec.name!r} needs a tokenizer to encode calibration text")
            calib_npz = Path(tmp) / "calibration.npz"
            save_npz(calib_npz, encoder.encode(read_texts(calibration, limit=samples), source=calibration))
        if debug and not rec.needs_calibration:
            raise QuantizationError(f"--debug compares a calibrated quantized model to float; recipe {rec.name!r} "
                                    "is not calibrated (use int8 or auto)")
        job, result = _build(source, out, Path(tmp), recipe=rec, calibration_npz=calib_npz,
                             debug=debug, timeout_s=timeout_s)
        layers_csv = Path(tmp) / f"{rec.name}.layers.csv"
        if debug and layers_csv.is_file():
            atomic_copy(layers_csv, sidecar_paths(out, debug=True)["layer table"])
    extra = result.get("extra", {})
    _write_sidecars(out, source=source, tokenizer=encoder.to_json() if encoder else None, info=info,
                    job=job, recipe=rec.name, extra=extra)
    size = measure_size(out)
    return {"path": str(out), "recipe": rec.name, "bytes": size.bytes, "gzip_bytes": size.gzip_bytes,
            "notes": job.get("notes", []), "extra": extra}


def prune_model(source: ModelSource, out: Path, *, recipe: str, then: str | None = None,
                calibration: Path | None = None, labels: Path | None = None, samples: int = 200,
                timeout_s: float = 1800.0) -> dict[str, Any]:
    """Prune ``source`` with a pruning recipe, optionally quantize, write ``out`` (+ sidecars).

    Recovery text comes from ``labels`` (a ``sentence<TAB>label`` TSV: labels are used by
    ``mode`` ``auto``/``labels``) or else ``calibration`` (plain text: distillation). A text
    generator is fed windows of ``source.seq_len`` tokens of that text (its next-token labels are used
    only with ``mode = "labels"``). ``then`` names a quantization recipe applied at conversion;
    calibrated ones (int8, int16x8) are calibrated on ``calibration`` (or the TSV sentences).

    Returns:
        ``path``, ``recipe``, ``then``, ``bytes``, ``gzip_bytes``, ``pruning`` (the stats of
        :func:`litegate.quantize.prune.apply_pruning`), ``tflite``
        (:func:`litegate.quantize.prune.sparsity_report` without the tensor list), ``notes``.

    Raises:
        ConfigError: unknown recipe, or a recipe of the wrong kind; ``out`` is one of its own sidecars' paths.
        OutputError: ``out`` or a sidecar cannot be written (checked before the pruning starts).
        DataError: no or unreadable recovery text.
        ModelLoadError, QuantizationError, ConversionError, IsolationError.
    """
    rec = recipes.load(recipe)
    if not rec.prunes:
        raise ConfigError(f"recipe {rec.name!r} is a {rec.kind.value!r} recipe; litegate prune needs a pruning recipe "
                          f"(built-in: {', '.join(n for n in recipes.builtin_names() if n.startswith('pruned'))})")
    settings = PruneSettings.from_recipe(rec)
    then_rec = recipes.load(then or "fp32")
    if then_rec.prunes:
        raise ConfigError(f"--then {then_rec.name!r} is a pruning recipe; give a quantization recipe")
    if source.kind is SourceKind.TFLITE:
        raise QuantizationError(f"{source.path}: a .tflite cannot be pruned; start from the TensorFlow model")
    check_model_output(out)
    info = check_source(source)
    tok = source_tokenizer(source)
    if tok is None:
        raise QuantizationError("pruning needs a tokenizer to encode the recovery text; pass --tokenizer")
    if labels is None and calibration is None:
        raise DataError("pruning needs recovery text: give --calibration TEXT or --labels TSV")
    generator = source.task is Task.TEXT_GENERATION or source.kind in SourceKind.decoders()
    if generator and labels is not None:
        raise DataError("--labels is a sentence<TAB>label file for classifiers; give a text generator --calibration TEXT")
    if generator and then_rec.needs_calibration:
        raise QuantizationError(f"--then {then_rec.name!r}: calibrated quantization of multi-signature text generators "
                                "is not supported yet; use fp32, fp16 or dynamic-int8")
    labelled = read_labelled_tsv(labels, limit=samples) if labels is not None else None
    if settings.mode == "labels" and labelled is None and not generator:
        raise DataError(f"recipe {rec.name!r} recovers with labels (mode 'labels'): give --labels TSV")
    encoder = TextEncoder(tok, source.seq_len)
    with tempfile.TemporaryDirectory(prefix="litegate-prune-") as tmp:
        inputs_npz, calib_npz = Path(tmp) / "inputs.npz", Path(tmp) / "calib.npz"
        label_array: np.ndarray | None = None
        if generator:
            windows = generator_windows(tok, read_texts(calibration), source.seq_len, samples,  # type: ignore[arg-type]
                                        source=calibration)
            save_npz(inputs_npz, {"tokens": windows["tokens"]})
            if settings.mode == "labels":
                label_array = windows["labels"]
        else:
            texts = list(labelled.sentences) if labelled else read_texts(calibration, limit=samples)  # type: ignore[arg-type]
            save_npz(inputs_npz, encoder.encode(texts, source=labels or calibration))
            if labelled is not None:
                label_array = np.asarray(labelled.labels, dtype=np.int64)
        if then_rec.reads_calibration and not generator:
            calib_texts = read_texts(calibration, limit=samples) if calibration else texts
            save_npz(calib_npz, encoder.encode(calib_texts, source=calibration or labels))
        prune_data = {"npz": str(inputs_npz), "labels": None if label_array is None else label_array.tolist()}
        job, result = _build(source, out, Path(tmp), recipe=then_rec, prune=rec,
                             calibration_npz=calib_npz if calib_npz.is_file() else None, prune_data=prune_data,
                             timeout_s=timeout_s)
    extra = result.get("extra", {})
    pruning = {k: v for k, v in extra["pruning"].items() if k != "tflite"}
    tflite = {k: v for k, v in extra["pruning"]["tflite"].items() if k != "tensors"}
    _write_sidecars(out, source=source, tokenizer=encoder.to_json(), info=info, job=job,
                    recipe=then_rec.name, pruning=rec.name, extra=extra)
    return {"path": str(out), "recipe": rec.name, "then": then_rec.name, "bytes": tflite["bytes"],
            "gzip_bytes": tflite["gzip_bytes"], "pruning": pruning, "tflite": tflite, "notes": job.get("notes", [])}


def model_seq_len(path: Path) -> int:
    """The last dimension of the first input of the model's first signature (the runner's default).

    Read from the verified flatbuffer: nothing native opens an untrusted file in this process.

    Raises:
        ModelLoadError: the model is unsound, has no signatures, or its first input has no sequence dimension.
    """
    try:
        name, tensor = next(iter(load_model(path).signature_inputs().items()))
    except ModelLoadError as exc:
        raise ModelLoadError(exc.message if exc.message.startswith(str(path)) else f"{path}: {exc.message}") from None
    if not tensor.shape or tensor.shape[-1] < 1:
        raise ModelLoadError(f"{path}: input {name!r} has shape {list(tensor.shape)}: no sequence length to feed")
    return int(tensor.shape[-1])


def bench_model(model: Path, *, text: Path, backends: list[str], threads: list[int], tokenizer: Path | None = None,
                protocol: dict[str, Any] | None = None, timeout_s: float = 300.0,
                mem_mb: int | None = None) -> list[BenchResult]:
    """Latency of one .tflite per backend × threads, each cell in its own child process.

    ``mem_mb`` caps each cell's child (its process group's resident memory); a cell over it is ``failed`` with
    an "out of memory" reason naming the cap."""
    sha = hashlib.sha256(verify_tflite(model)).hexdigest()
    encoder = TextEncoder(tokenizer or find_tokenizer(model), model_seq_len(model))
    proto = {**DEFAULT_PROTOCOL, **(protocol or {})}
    out = []
    with tempfile.TemporaryDirectory(prefix="litegate-bench-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        save_npz(npz, encoder.encode(read_texts(text, limit=32), source=text))
        for backend in backends:
            for t in cell_threads(backend, threads):
                out.append(run_cell(path=model, sha256=sha, variant=model.stem, backend=backend, threads=t,
                                    inputs_npz=npz, protocol=proto, timeout_s=timeout_s, mem_mb=mem_mb))
    return out

"""Single-model operations behind ``litegate convert``, ``quantize`` and ``bench``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from litegate.artifacts import atomic_copy, atomic_write_text, save_npz
from litegate.timing import DEFAULT_PROTOCOL
from litegate.benchmarks.matrix import run_cell
from litegate.benchmarks.size import measure_size
from litegate.backends.runtime import Runner
from litegate.tflite.verify import verify_tflite
from litegate.errors import ConfigError, ConversionError, ModelLoadError, QuantizationError
from litegate.isolation import run_isolated
from litegate.quantize import recipes
from litegate.tasks import TextEncoder, read_texts
from litegate.types import BenchResult, ModelSource, SourceKind


def source_tokenizer(source: ModelSource) -> Path | None:
    """The tokenizer that travels with ``source``: an explicit option, or the checkpoint's own."""
    from litegate.converter.hf import tokenizer_file

    if source.options.get("tokenizer"):
        return Path(str(source.options["tokenizer"]))
    if source.kind in (SourceKind.HF_BERT, SourceKind.HF_GPT2):
        return tokenizer_file(Path(source.path))
    if source.kind is SourceKind.KERAS and (Path(source.path).parent / "tokenizer.json").is_file():
        return Path(source.path).parent / "tokenizer.json"
    if source.kind is SourceKind.TFLITE:
        return find_tokenizer(Path(source.path))
    return None


def check_source(source: ModelSource, seq_len: int) -> dict[str, Any]:
    """Cheap checks before any child process starts; returns what is known about the model."""
    from litegate.converter.hf import BertConfig

    path = Path(source.path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if source.kind is SourceKind.HF_BERT:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        bert = BertConfig.from_json_file(path / "config.json")
        if seq_len > bert.max_position_embeddings:
            raise ModelLoadError(f"{path}: seq_len {seq_len} is larger than the model's max_position_embeddings "
                                 f"{bert.max_position_embeddings}")
        return {"architecture": "bert", "layers": bert.num_hidden_layers, "hidden": bert.hidden_size,
                "heads": bert.num_attention_heads, "intermediate": bert.intermediate_size,
                "vocab_size": bert.vocab_size,
                "labels": ({str(i): str(lab) for i, lab in enumerate(source.options["labels"])}
                           if source.options.get("labels") else dict(bert.id2label))}
    if source.kind is SourceKind.HF_GPT2:
        from litegate.converter.hf import GPT2Config

        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        gpt2 = GPT2Config.from_json_file(path / "config.json")
        dims = {"vocab_size": gpt2.vocab_size, "n_positions": gpt2.n_positions, "n_embd": gpt2.n_embd,
                "n_layer": gpt2.n_layer, "n_head": gpt2.n_head}
        max_len = int(source.options.get("max_len", dims["n_positions"]))
        if max_len > dims["n_positions"] or seq_len > max_len:
            raise ModelLoadError(f"{path}: prefill length {seq_len} and cache length {max_len} must not exceed the "
                                 f"model's n_positions {dims['n_positions']}")
        return {"architecture": "gpt2", **dims}
    if source.kind is SourceKind.SAVED_MODEL:
        if not path.is_dir() or not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path}: not a TensorFlow SavedModel folder (no saved_model.pb)")
        return {"architecture": "saved_model"}
    if source.kind is SourceKind.KERAS:
        if not path.is_file():
            raise ModelLoadError(f"{path}: a keras source must be a .keras or .h5 file")
        return {"architecture": "keras"}
    verify_tflite(path)
    return {"architecture": "tflite"}


def convert_model(source: ModelSource, out: Path, *, seq_len: int, recipe: str = "fp32",
                  calibration: Path | None = None, samples: int = 200, timeout_s: float = 900.0,
                  debug: bool = False) -> dict[str, Any]:
    """Convert ``source`` with ``recipe`` into ``out`` (written atomically) plus sidecars.

    Sidecars: ``OUT.tokenizer.json`` (when the source has a tokenizer) and ``OUT.json`` (task,
    seq_len, recipe, labels, input names, notes), so an app and ``litegate eval`` need nothing else.

    Raises:
        ModelLoadError, ConversionError, QuantizationError, DataError, IsolationError.
    """
    if source.kind is SourceKind.TFLITE:
        raise ModelLoadError(f"{source.path}: already a .tflite; use it directly (run, bench, check)")
    info = check_source(source, seq_len)
    rec = recipes.load(recipe)
    if rec.kind == "prune":
        raise ConfigError(f"recipe {rec.name!r} prunes: use `litegate prune` (or a PRUNE+QUANT variant in a release config)")
    tok = source_tokenizer(source)
    encoder = TextEncoder(tok, seq_len) if tok else None
    with tempfile.TemporaryDirectory(prefix="litegate-convert-") as tmp:
        calib_npz = None
        if rec.needs_calibration:
            if calibration is None:
                raise QuantizationError(f"recipe {rec.name!r} needs calibration text")
            if encoder is None:
                raise QuantizationError(f"recipe {rec.name!r} needs a tokenizer to encode calibration text")
            calib_npz = Path(tmp) / "calibration.npz"
            save_npz(calib_npz, encoder.encode(read_texts(calibration, limit=samples)))
        tmp_out = Path(tmp) / "model.tflite"
        if debug and not rec.needs_calibration:
            raise QuantizationError(f"--debug compares a calibrated quantized model to float; recipe {rec.name!r} "
                                    "is not calibrated (use int8 or auto)")
        payload = {"source": source.to_dict(), "seq_len": seq_len,
                   "variants": [{"name": rec.name, "recipe": rec.to_dict(), "out": str(tmp_out)}],
                   "calibration_npz": str(calib_npz) if calib_npz else None,
                   "debug": debug, "debug_dir": str(Path(tmp))}
        job = run_isolated("litegate.converter.convert:convert_job", payload, timeout_s=timeout_s)
        result = job["variants"][rec.name]
        if not result["ok"]:
            from litegate import errors

            cls = getattr(errors, result.get("type", ""), ConversionError)
            raise cls(result["error"])
        atomic_copy(tmp_out, out)
        layers_csv = Path(tmp) / f"{rec.name}.layers.csv"
        if debug and layers_csv.is_file():
            atomic_copy(layers_csv, out.with_suffix(".layers.csv"))
    if encoder is not None:
        atomic_write_text(out.with_suffix(".tokenizer.json"), encoder.to_json())
    meta = {"task": source.task.value, "seq_len": seq_len, "recipe": rec.name, "labels": info.get("labels", {}),
            "inputs": job.get("inputs", []), "notes": job.get("notes", []), "source": source.to_dict()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    size = measure_size(out)
    return {"path": str(out), "recipe": rec.name, "bytes": size.bytes, "gzip_bytes": size.gzip_bytes,
            "notes": job.get("notes", []), "extra": result.get("extra", {})}


def model_seq_len(path: Path) -> int:
    runner = Runner(path, backend="cpu")
    shape = next(iter(runner.inputs.values()))["shape"]
    return int(shape[-1])


def find_tokenizer(model: Path) -> Path:
    for cand in (model.with_suffix(".tokenizer.json"), model.parent / "tokenizer.json"):
        if cand.is_file():
            return cand
    raise ModelLoadError(f"{model}: no tokenizer sidecar ({model.with_suffix('.tokenizer.json').name} "
                         "or tokenizer.json next to it); pass --tokenizer")


def bench_model(model: Path, *, text: Path, backends: list[str], threads: list[int], tokenizer: Path | None = None,
                protocol: dict[str, Any] | None = None, timeout_s: float = 300.0) -> list[BenchResult]:
    """Latency of one .tflite per backend × threads, each cell in its own child process."""
    import hashlib

    verify_tflite(model)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    encoder = TextEncoder(tokenizer or find_tokenizer(model), model_seq_len(model))
    proto = {**DEFAULT_PROTOCOL, **(protocol or {})}
    out = []
    with tempfile.TemporaryDirectory(prefix="litegate-bench-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        save_npz(npz, encoder.encode(read_texts(text, limit=32)))
        for backend in backends:
            for t in threads:
                out.append(run_cell(path=model, sha256=sha, variant=model.stem, backend=backend, threads=t,
                                    inputs_npz=npz, protocol=proto, timeout_s=timeout_s))
    return out

"""Single-model operations behind ``litegate convert``, ``quantize`` and ``bench``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from litegate.artifacts import atomic_copy, atomic_write_text, save_npz
from litegate.benchmarks.latency import DEFAULT_PROTOCOL
from litegate.benchmarks.matrix import run_cell
from litegate.benchmarks.size import measure_size
from litegate.delegates.runtime import Runner, verify_tflite_header
from litegate.errors import ConversionError, ModelLoadError, QuantizationError
from litegate.isolation import run_isolated
from litegate.quantize import recipes
from litegate.tasks import TextEncoder, read_texts
from litegate.types import BenchResult, ModelSource, SourceKind


def convert_model(source: ModelSource, out: Path, *, seq_len: int, recipe: str = "fp32",
                  calibration: Path | None = None, samples: int = 200, timeout_s: float = 900.0) -> dict[str, Any]:
    """Convert ``source`` with ``recipe`` into ``out`` (written atomically) plus a tokenizer sidecar.

    Raises:
        ModelLoadError, ConversionError, QuantizationError, DataError, IsolationError.
    """
    from litegate.converter.hf import BertConfig, read_checkpoint, tokenizer_file  # noqa: F401

    if source.kind is not SourceKind.HF_BERT:
        raise ModelLoadError(f"convert --from {source.kind.value}: only hf-bert sources can be converted in this version")
    path = Path(source.path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
    bert = BertConfig.from_json_file(path / "config.json")
    if seq_len > bert.max_position_embeddings:
        raise ModelLoadError(f"{path}: seq_len {seq_len} is larger than the model's max_position_embeddings "
                             f"{bert.max_position_embeddings}")
    rec = recipes.load(recipe)
    encoder = TextEncoder(tokenizer_file(path), seq_len)
    with tempfile.TemporaryDirectory(prefix="litegate-convert-") as tmp:
        calib_npz = None
        if rec.needs_calibration:
            if calibration is None:
                raise QuantizationError(f"recipe {rec.name!r} needs calibration text")
            calib_npz = Path(tmp) / "calibration.npz"
            save_npz(calib_npz, encoder.encode(read_texts(calibration, limit=samples)))
        tmp_out = Path(tmp) / "model.tflite"
        payload = {"source": source.to_dict(), "seq_len": seq_len,
                   "variants": [{"name": rec.name, "recipe": rec.to_dict(), "out": str(tmp_out)}],
                   "calibration_npz": str(calib_npz) if calib_npz else None}
        result = run_isolated("litegate.converter.tflite:convert_job", payload, timeout_s=timeout_s)["variants"][rec.name]
        if not result["ok"]:
            from litegate import errors

            cls = getattr(errors, result.get("type", ""), ConversionError)
            raise cls(result["error"])
        atomic_copy(tmp_out, out)
    atomic_write_text(out.with_suffix(".tokenizer.json"), encoder.to_json())
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"task": source.task.value, "seq_len": seq_len, "recipe": rec.name, "labels": dict(bert.id2label)}, indent=2) + "\n")
    size = measure_size(out)
    return {"path": str(out), "recipe": rec.name, "bytes": size.bytes, "gzip_bytes": size.gzip_bytes}


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

    verify_tflite_header(model)
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

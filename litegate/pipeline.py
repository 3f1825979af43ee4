"""The release pipeline: convert -> variants -> measure -> report -> gate.

Heavy work (TensorFlow conversion, LiteRT execution) runs in isolated child processes; this
module only orchestrates, caches and assembles the :class:`~litegate.types.Report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from litegate import __version__, gate, machine, report
from litegate.artifacts import (
    StepCache,
    atomic_copy,
    atomic_write_text,
    make_artifact,
    save_npz,
    sha256_tree,
    tool_versions,
)
from litegate.benchmarks.matrix import run_cell
from litegate.config import ReleaseConfig
from litegate.errors import DataError, IsolationError, LitegateError, ModelLoadError
from litegate.isolation import run_isolated
from litegate.tasks import (
    LabelledText,
    TextEncoder,
    agreement,
    classification_metrics,
    read_labelled_tsv,
    read_texts,
)
from litegate.types import (
    AccuracyResult,
    BenchResult,
    Report,
    SourceKind,
    Status,
    Task,
    VariantResult,
)

Progress = Callable[[str], None]
BENCH_INPUTS = 32  # distinct real sentences cycled through during latency measurement


class OutputBusyError(LitegateError):
    """Another litegate process holds the output directory."""

    exit_code = 11


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``out_dir``: a second run on the same directory is refused, never interleaved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".litegate.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"{out_dir}: another litegate run is using this output directory") from None
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass
class _Source:
    """The resolved input model: what it is, its hash, and how its text is tokenized."""

    kind: SourceKind
    path: Path
    sha256: str
    tokenizer: Path
    info: dict[str, Any]


def resolve_source(cfg: ReleaseConfig) -> _Source:
    from litegate.api import check_source, source_tokenizer

    src = cfg.model.source
    info = check_source(src, cfg.model.seq_len)
    tokenizer = source_tokenizer(src)
    if tokenizer is None:
        raise ModelLoadError(f"{src.path}: a {src.kind.value} source needs model.tokenizer (a tokenizer.json or vocab.txt)")
    return _Source(src.kind, Path(src.path), sha256_tree(src.path), tokenizer, info)


def run_release(cfg: ReleaseConfig, progress: Progress | None = None) -> Report:
    """Run the whole release pipeline for ``cfg`` and write its report files.

    Returns:
        The report (its ``passed`` field is the gate's verdict).

    Raises:
        LitegateError: configuration, data or model errors that stop the run before a report.
    """
    say = progress or (lambda _msg: None)
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    with output_lock(cfg.output_dir):
        source = resolve_source(cfg)
        encoder = TextEncoder(source.tokenizer, cfg.model.seq_len)
        eval_set = _read_eval(cfg)
        versions = tool_versions()
        with tempfile.TemporaryDirectory(prefix="litegate-run-", dir=cfg.output_dir) as work_str:
            work = Path(work_str)
            calib_npz, calib_hash = _calibration(cfg, encoder, work)
            say(f"convert: {len(cfg.variants)} variants from {source.kind.value} {source.path}")
            built = _build_variants(cfg, source, versions, calib_npz, calib_hash, work, say)
            published = _publish(cfg, source, encoder, built)
            bench_npz = work / "bench_inputs.npz"
            texts = list(eval_set.sentences) if eval_set else read_texts(cfg.data.calibration) if cfg.data.calibration else []
            if not texts:
                raise DataError("no text to build benchmark inputs from: set data.eval or data.calibration")
            save_npz(bench_npz, encoder.encode(texts[:BENCH_INPUTS]))
            eval_npz = work / "eval_inputs.npz"
            if eval_set is not None:
                save_npz(eval_npz, encoder.encode(eval_set.sentences))
            variants = []
            for v in published:
                if v.status is Status.OK:
                    say(f"bench: {v.name}")
                    v = dataclasses.replace(v, bench=tuple(_bench_cells(cfg, v, bench_npz)))
                variants.append(v)
            variants = _accuracy(cfg, variants, eval_set, eval_npz, work, say)
        wall_s = time.monotonic() - t_start
        run_info = {
            "name": cfg.name,
            "config": str(cfg.path),
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 2),
            "litegate": __version__,
            "tool_versions": versions,
            "machine": machine.describe(),
            "bench_protocol": {**cfg.bench.protocol(), "inputs": f"{min(len(texts), BENCH_INPUTS)} real sentences, cycled",
                               "isolation": "one child process per cell, cells run one at a time"},
            "eval": {"data": str(cfg.data.eval) if cfg.data.eval else None,
                     "backend": cfg.bench.eval_backend, "threads": cfg.bench.eval_threads},
            "cache_hits": sum(1 for v in variants if v.cached),
        }
        model_info = {"source": cfg.model.source.to_dict(), "sha256": source.sha256, "seq_len": cfg.model.seq_len,
                      "tokenizer": str(source.tokenizer), **source.info}
        verdicts, gate_info = gate.evaluate(cfg, variants)
        run_info["gate"] = gate_info
        rep = Report(run=run_info, model=model_info, variants=tuple(variants), verdicts=tuple(verdicts),
                     passed=bool(gate_info["passed"]))
        say(f"report: {cfg.output_dir}")
        report.write(rep, cfg.output_dir)
        return rep


def _read_eval(cfg: ReleaseConfig) -> LabelledText | None:
    if cfg.data.eval is None:
        return None
    if cfg.model.source.task is not Task.TEXT_CLASSIFICATION:
        raise DataError(f"task {cfg.model.source.task.value!r} evaluation is not supported by this pipeline yet")
    return read_labelled_tsv(cfg.data.eval, limit=cfg.data.max_eval_samples)


def _calibration(cfg: ReleaseConfig, encoder: TextEncoder, work: Path) -> tuple[Path | None, str | None]:
    if not any(v.recipe.needs_calibration for v in cfg.variants):
        return None, None
    if cfg.data.calibration is None:
        names = [v.name for v in cfg.variants if v.recipe.needs_calibration]
        raise DataError(f"variants {', '.join(names)} need calibration text: set data.calibration")
    texts = read_texts(cfg.data.calibration, limit=cfg.data.calibration_samples)
    arrays = encoder.encode(texts)
    path = work / "calibration.npz"
    save_npz(path, arrays)
    h = sha256_tree(cfg.data.calibration) + f":{len(texts)}"
    return path, h


def _build_variants(cfg: ReleaseConfig, source: _Source, versions: dict[str, str], calib_npz: Path | None,
                    calib_hash: str | None, work: Path, say: Progress) -> list[VariantResult]:
    cache = StepCache(cfg.cache_dir)
    results: dict[str, VariantResult] = {}
    todo = []
    for v in cfg.variants:
        if source.kind is SourceKind.TFLITE:
            art = make_artifact(source.path, parent_sha256=None, produced_by="input", step_config={}, versions=versions)
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=art, cached=True)
            continue
        step_cfg = {"recipe": v.recipe.to_dict(), "seq_len": cfg.model.seq_len, "source": cfg.model.source.kind.value,
                    "options": dict(cfg.model.source.options), "calibration": calib_hash if v.recipe.needs_calibration else None}
        key = cache.key(source.sha256, "convert", step_cfg, versions)
        hit = cache.get(key)
        if hit is not None:
            say(f"convert: {v.name} (cached)")
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=hit, cached=True)
        else:
            todo.append((v, key, step_cfg))
    if todo:
        say(f"convert: building {', '.join(v.name for v, _, _ in todo)} in a child process")
        payload = {
            "source": cfg.model.source.to_dict(),
            "seq_len": cfg.model.seq_len,
            "variants": [{"name": v.name, "recipe": v.recipe.to_dict(), "out": str(work / f"{v.name}.tflite")}
                         for v, _, _ in todo],
            "calibration_npz": str(calib_npz) if calib_npz else None,
        }
        t0 = time.monotonic()
        try:
            out = run_isolated("litegate.converter.tflite:convert_job", payload,
                               timeout_s=cfg.convert_timeout_s, mem_mb=cfg.mem_mb)["variants"]
        except IsolationError as exc:
            out = {v.name: {"ok": False, "error": exc.message, "stderr": exc.stderr} for v, _, _ in todo}
        say(f"convert: done in {time.monotonic() - t0:.1f} s")
        for v, key, step_cfg in todo:
            r = out.get(v.name, {"ok": False, "error": "converter returned no result for this variant"})
            if not r.get("ok"):
                results[v.name] = VariantResult(v.name, v.recipe, Status.FAILED, reason=r["error"])
                continue
            tmp = work / f"{v.name}.tflite"
            art = make_artifact(tmp, parent_sha256=source.sha256, produced_by="convert", step_config=step_cfg,
                                versions=versions)
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=cache.put(key, tmp, art))
    return [results[v.name] for v in cfg.variants]


def _publish(cfg: ReleaseConfig, source: _Source, encoder: TextEncoder, built: list[VariantResult]) -> list[VariantResult]:
    """Copy each variant to ``<output>/<name>.tflite`` with the sidecars an app needs."""
    from litegate.benchmarks.size import measure_size

    out = []
    meta = {"task": cfg.model.source.task.value, "seq_len": cfg.model.seq_len,
            "inputs": ["input_ids", "attention_mask"], "labels": source.info.get("labels", {}),
            "tokenizer": "tokenizer.json", "source_sha256": source.sha256}
    atomic_write_text(cfg.output_dir / "tokenizer.json", encoder.to_json())
    atomic_write_text(cfg.output_dir / "model.json", json.dumps(meta, indent=2) + "\n")
    for v in built:
        if v.status is Status.OK and v.artifact is not None:
            dest = cfg.output_dir / f"{v.name}.tflite"
            atomic_copy(v.artifact.path, dest)
            art = dataclasses.replace(v.artifact, path=str(dest))
            v = dataclasses.replace(v, artifact=art, size=measure_size(dest))
        out.append(v)
    return out


def _bench_cells(cfg: ReleaseConfig, v: VariantResult, inputs_npz: Path) -> Iterator[BenchResult]:
    assert v.artifact is not None
    for backend in cfg.bench.backends:
        for threads in cfg.bench.threads:
            yield run_cell(path=v.artifact.path, sha256=v.artifact.sha256, variant=v.name, backend=backend,
                           threads=threads, inputs_npz=inputs_npz, protocol=cfg.bench.protocol(),
                           timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb)


def _accuracy(cfg: ReleaseConfig, variants: list[VariantResult], eval_set: LabelledText | None, eval_npz: Path,
              work: Path, say: Progress) -> list[VariantResult]:
    task = cfg.model.source.task
    backend, threads = cfg.bench.eval_backend, cfg.bench.eval_threads
    if eval_set is None:
        res = AccuracyResult(task=task, metric="accuracy", value=None, backend=backend, n_samples=0,
                             status=Status.NOT_RUN, reason="no evaluation data configured (data.eval)")
        return [dataclasses.replace(v, accuracy=(res,)) if v.status is Status.OK else v for v in variants]
    labels = np.array(eval_set.labels)
    logits: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    for v in variants:
        if v.status is not Status.OK or v.artifact is None:
            continue
        say(f"eval: {v.name} on {len(labels)} samples")
        out_npz = work / f"{v.name}.outputs.npz"
        try:
            run_isolated("litegate.benchmarks.latency:eval_job",
                         {"path": v.artifact.path, "backend": backend, "threads": threads,
                          "inputs_npz": str(eval_npz), "out_npz": str(out_npz)},
                         timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb)
            with np.load(out_npz) as data:
                key = "logits" if "logits" in data.files else data.files[0]
                logits[v.name] = data[key]
        except LitegateError as exc:
            failures[v.name] = exc.message
    ref = logits.get(cfg.reference)
    ref_metrics = classification_metrics(ref, labels) if ref is not None else None
    out = []
    for v in variants:
        if v.status is not Status.OK:
            out.append(v)
            continue
        if v.name in failures:
            res = AccuracyResult(task=task, metric="accuracy", value=None, backend=backend, n_samples=len(labels),
                                 status=Status.FAILED, reason=failures[v.name])
        else:
            m = classification_metrics(logits[v.name], labels)
            extra = {"f1_macro": m["f1_macro"]}
            if ref is not None:
                extra["agreement_with_reference"] = agreement(logits[v.name], ref)
                extra["max_abs_logit_diff"] = float(np.max(np.abs(logits[v.name] - ref)))
            res = AccuracyResult(
                task=task, metric="accuracy", value=m["accuracy"], backend=backend, n_samples=len(labels),
                reference=ref_metrics["accuracy"] if ref_metrics else None,
                delta=(m["accuracy"] - ref_metrics["accuracy"]) if ref_metrics else None, extra=extra,
            )
        out.append(dataclasses.replace(v, accuracy=(res,)))
    return out

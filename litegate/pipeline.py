"""The release pipeline: convert -> variants -> measure -> report -> gate.

Heavy work (TensorFlow conversion, LiteRT execution) runs in isolated child processes; this
module only orchestrates, caches and assembles the :class:`~litegate.types.Report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from litegate import gate, machine, report
from litegate.api import BUILD_JOB
from litegate.artifacts import (
    StepCache,
    atomic_copy,
    atomic_write_text,
    make_artifact,
    save_npz,
    sha256_tree,
    stable_hash,
    tool_versions,
    write_model_card,
)
from litegate.backends.gpu import run_gpu
from litegate.backends.registry import why_not_runnable
from litegate.baseline import compare
from litegate.benchmarks.accuracy import generator_bench_inputs, summarize_task
from litegate.benchmarks.matrix import run_cell
from litegate.benchmarks.peak import measure_peak
from litegate.benchmarks.profile import run_profile
from litegate.benchmarks.size import measure_size
from litegate.compat.check import evaluate
from litegate.compat.ruleset import load_rules
from litegate.config import ReleaseConfig
from litegate.converter.preflight import check_source, source_tokenizer
from litegate.errors import DataError, IsolationError, LitegateError, ModelLoadError
from litegate.isolation import run_isolated
from litegate.tasks import (
    LabelledText,
    TextEncoder,
    generator_windows,
    lm_windows,
    load_tokenizer,
    read_labelled_tsv,
    read_texts,
)
from litegate.tflite.verify import load_model
from litegate.types import (
    AccuracyResult,
    BenchResult,
    RecipeKind,
    Report,
    SourceKind,
    Status,
    Task,
    VariantResult,
)
from litegate.version import __version__

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
    src = cfg.model.source
    info = check_source(src)
    tokenizer = source_tokenizer(src)
    if tokenizer is None:
        raise ModelLoadError(f"{src.path}: a {src.kind.value} source needs model.tokenizer (a tokenizer.json or vocab.txt)")
    digest = sha256_tree(src.path)
    if src.options.get("extra_weights"):  # a trained head is part of the model's identity

        digest = stable_hash([digest, sha256_tree(str(src.options["extra_weights"]))])
    return _Source(src.kind, Path(src.path), digest, tokenizer, info)


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
        generator = cfg.model.source.task is Task.TEXT_GENERATION
        encoder = None if generator else TextEncoder(source.tokenizer, cfg.model.source.seq_len)
        versions = tool_versions()
        with tempfile.TemporaryDirectory(prefix="litegate-run-", dir=cfg.output_dir) as work_str:
            work = Path(work_str)
            data = _eval_data(cfg, source, encoder, work)
            calib_npz, calib_hash = _calibration(cfg, source, encoder, work)
            say(f"convert: {len(cfg.variants)} variants from {source.kind.value} {source.path}")
            built = _build_variants(cfg, source, versions, calib_npz, calib_hash, work, say, data)
            published = _publish(cfg, source, encoder, built)
            variants = []
            for v in published:
                if v.status is Status.OK:
                    v = inspect_variant(v, cfg.delegates)
                    say(f"bench: {v.name}")
                    v = dataclasses.replace(v, bench=tuple(_bench_cells(cfg, v, data, work)))
                variants.append(v)
            variants = _accuracy(cfg, variants, data, work, say)
            peak = None
            if cfg.bench.peak_probe and any(b.status is Status.OK for v in variants for b in v.bench):
                say("bench: machine peak (sgemm probe)")
                peak = measure_peak(list(cfg.bench.threads), cache_dir=cfg.cache_dir)
                variants = [_with_efficiency(v, peak) for v in variants]
            profile = _op_profile(cfg, variants, data, say)
        wall_s = time.monotonic() - t_start
        run_info = {
            "name": cfg.name,
            "config": str(cfg.path),
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 2),
            "litegate": __version__,
            "tool_versions": versions,
            "machine": machine.describe(),
            "bench_protocol": {**cfg.bench.protocol(), "inputs": data.bench_desc,
                               "isolation": "one child process per cell, cells run one at a time"},
            "eval": {"data": str(cfg.data.eval) if cfg.data.eval else None, "task": cfg.model.source.task.value,
                     "samples": data.n, "backend": cfg.bench.eval_backend, "threads": cfg.bench.eval_threads},
            "cache_hits": sum(1 for v in variants if v.cached),
            "machine_peak": peak,
            "op_profile": profile,
        }
        model_info = {"source": cfg.model.source.to_dict(), "sha256": source.sha256, "seq_len": cfg.model.source.seq_len,
                      "tokenizer": str(source.tokenizer), **source.info}
        verdicts, gate_info = gate.evaluate(cfg, variants)
        if cfg.baseline is not None:
            base = report.load(cfg.baseline)
            draft = Report(run=run_info, model=model_info, variants=tuple(variants), verdicts=(), passed=False)
            base_verdicts, rows = compare(base, draft, cfg.compare)
            verdicts = verdicts + base_verdicts
            gate_info["passed"] = bool(gate_info["passed"]) and all(x.passed for x in base_verdicts)
            run_info["baseline"] = {"path": str(cfg.baseline), "started_at": base.run.get("started_at"),
                                    "config": dataclasses.asdict(cfg.compare), "rows": rows}
        run_info["gate"] = gate_info
        rep = Report(run=run_info, model=model_info, variants=tuple(variants), verdicts=tuple(verdicts),
                     passed=bool(gate_info["passed"]))
        say(f"report: {cfg.output_dir}")
        report.write(rep, cfg.output_dir)
        return rep


@dataclasses.dataclass
class _EvalData:
    """What a run measures with: evaluation inputs (and labels) and benchmark inputs."""

    task: Task
    n: int = 0
    inputs_npz: Path | None = None  # classification/embedding: encoded inputs; generation: token windows
    labels: np.ndarray | None = None
    windows: np.ndarray | None = None
    bench_npz: Path | None = None
    bench_tokens: list[int] = dataclasses.field(default_factory=list)
    bench_desc: str = ""
    labelled: LabelledText | None = None
    sha256: str | None = None


def _eval_data(cfg: ReleaseConfig, source: _Source, encoder: TextEncoder | None, work: Path) -> _EvalData:
    task = cfg.model.source.task
    data = _EvalData(task=task)
    if task is Task.TEXT_GENERATION:
        if cfg.data.eval is None:
            raise DataError("a text-generation run needs data.eval (a text file; its last 10% is the held-out part)")
        text = "\n".join(read_texts(cfg.data.eval))
        ids = list(load_tokenizer(source.tokenizer).encode(text).ids)
        try:
            data.windows = lm_windows(ids, cfg.model.source.seq_len, cfg.data.max_eval_samples or 32)
        except ValueError as exc:
            raise DataError(f"{cfg.data.eval}: {exc}") from None
        data.inputs_npz = work / "windows.npz"
        save_npz(data.inputs_npz, {"tokens": data.windows})
        data.n = len(data.windows)
        data.bench_tokens = ids[-BENCH_INPUTS:]
        data.bench_desc = "one generated token per inference (decode/step signature) from held-out text, cycled"
        data.sha256 = sha256_tree(cfg.data.eval)
        return data
    assert encoder is not None
    texts: list[str] = []
    if cfg.data.eval is not None:
        if task is Task.TEXT_CLASSIFICATION:
            data.labelled = read_labelled_tsv(cfg.data.eval, limit=cfg.data.max_eval_samples)
            data.labels = np.array(data.labelled.labels)
            texts = list(data.labelled.sentences)
        else:
            texts = read_texts(cfg.data.eval, limit=cfg.data.max_eval_samples)
        data.inputs_npz = work / "eval_inputs.npz"
        save_npz(data.inputs_npz, encoder.encode(texts))
        data.n = len(texts)
        data.sha256 = sha256_tree(cfg.data.eval)
    bench_texts = texts or (read_texts(cfg.data.calibration) if cfg.data.calibration else [])
    if not bench_texts:
        raise DataError("no text to build benchmark inputs from: set data.eval or data.calibration")
    data.bench_npz = work / "bench_inputs.npz"
    save_npz(data.bench_npz, encoder.encode(bench_texts[:BENCH_INPUTS]))
    data.bench_desc = f"{min(len(bench_texts), BENCH_INPUTS)} real sentences, cycled"
    return data


GENERATOR_CALIBRATION_STEPS = 8  # decode/step calls recorded per window, after the prefill


def _calibration(cfg: ReleaseConfig, source: _Source, encoder: TextEncoder | None,
                 work: Path) -> tuple[Path | None, str | None]:
    """``calibration.npz`` from data.calibration when a variant needs it, and its cache key.

    Classifiers and encoders: the tokenized texts. Text generators: token windows ``tokens``
    [N, seq_len + steps]; the conversion child runs the float signatures over them (prefill, then
    decode/step) so every signature is calibrated on the inputs it gets in an app (see
    ``litegate.quantize.calibration.generator_samples``).
    """
    if not any(v.recipe.needs_calibration for v in cfg.variants):
        return None, None
    if cfg.data.calibration is None:
        names = [v.name for v in cfg.variants if v.recipe.needs_calibration]
        raise DataError(f"variants {', '.join(names)} need calibration text: set data.calibration")
    texts = read_texts(cfg.data.calibration, limit=cfg.data.calibration_samples)
    key = sha256_tree(cfg.data.calibration) + f":{len(texts)}"
    path = work / "calibration.npz"
    if encoder is not None:
        save_npz(path, encoder.encode(texts))
        return path, key

    # windows of seq_len + steps tokens: generator_windows cuts L + 1 tokens into inputs and next-token labels
    windows = generator_windows(source.tokenizer, texts, cfg.model.source.seq_len + GENERATOR_CALIBRATION_STEPS - 1,
                                cfg.data.calibration_samples)
    save_npz(path, {"tokens": np.concatenate([windows["tokens"], windows["labels"][:, -1:]], axis=1)})
    return path, key + f":gen{GENERATOR_CALIBRATION_STEPS}"


def _build_variants(cfg: ReleaseConfig, source: _Source, versions: dict[str, str], calib_npz: Path | None,
                    calib_hash: str | None, work: Path, say: Progress, data: _EvalData) -> list[VariantResult]:
    cache = StepCache(cfg.cache_dir)
    prune_data = _prune_data(cfg, source, work) if any(v.prune for v in cfg.variants) else {}
    auto_eval: dict[str, Any] = {}
    auto = [v for v in cfg.variants if v.recipe.kind is RecipeKind.AUTO]
    if auto:
        if data.inputs_npz is None or data.task is Task.TEXT_GENERATION:
            raise DataError(f"variant {auto[0].name!r} (recipe auto) needs data.eval to score its candidates")
        auto_eval = {"npz": str(data.inputs_npz), "labels": None if data.labels is None else data.labels.tolist(),
                     "name": str(cfg.data.eval), "sha256": data.sha256}

    def auto_budget(name: str) -> float:
        budget = cfg.budget_for(name).max_accuracy_drop
        return 1.0 if budget is None else float(budget)

    results: dict[str, VariantResult] = {}
    todo = []
    for v in cfg.variants:
        if source.kind is SourceKind.TFLITE:
            art = make_artifact(source.path, parent_sha256=None, produced_by="input", step_config={}, versions=versions)
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=art, cached=True)
            continue
        step_cfg = {"recipe": v.recipe.to_dict(), "seq_len": cfg.model.source.seq_len, "source": cfg.model.source.kind.value,
                    "options": dict(cfg.model.source.options), "calibration": calib_hash if v.recipe.needs_calibration else None,
                    "debug": cfg.debug and v.recipe.kind in (RecipeKind.FULL_INTEGER, RecipeKind.AUTO)}
        if v.recipe.kind is RecipeKind.AUTO:
            step_cfg["auto_eval"] = {"data": auto_eval.get("sha256"), "budget": auto_budget(v.name)}
        if v.prune is not None:
            step_cfg["prune"] = v.prune.to_dict()
            step_cfg["prune_data"] = prune_data.get("sha256")
        key = cache.key(source.sha256, "convert", step_cfg, versions)
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
            "source": cfg.model.source.to_dict(),
            "variants": [{"name": v.name, "recipe": v.recipe.to_dict(), "out": str(work / f"{v.name}.tflite"),
                          "prune": v.prune.to_dict() if v.prune else None,
                          "auto_budget": auto_budget(v.name) if v.recipe.kind is RecipeKind.AUTO else None} for v, _, _ in todo],
            "prune_data": prune_data,
            "calibration_npz": str(calib_npz) if calib_npz else None,
            "debug": cfg.debug,
            "check_determinism": bool(cfg.model.source.options.get("check_determinism")),
            "debug_dir": str(cfg.output_dir),
            "auto_eval": auto_eval,
        }
        t0 = time.monotonic()
        try:
            out = run_isolated(BUILD_JOB, payload,
                               timeout_s=cfg.convert_timeout_s, mem_mb=cfg.mem_mb)["variants"]
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
                                                {**payload, "variants": [entry]}, timeout_s=cfg.convert_timeout_s,
                                                mem_mb=cfg.mem_mb)["variants"])
                    except IsolationError as one:
                        out[entry["name"]] = {"ok": False, "error": one.message, "stderr": one.stderr}
        say(f"convert: done in {time.monotonic() - t0:.1f} s")
        for v, key, step_cfg in todo:
            r = out.get(v.name, {"ok": False, "error": "converter returned no result for this variant"})
            if not r.get("ok"):
                results[v.name] = VariantResult(v.name, v.recipe, Status.FAILED, reason=r["error"])
                continue
            tmp = work / f"{v.name}.tflite"
            art = make_artifact(tmp, parent_sha256=source.sha256, produced_by="convert", step_config=step_cfg,
                                versions=versions)
            extra = r.get("extra", {})
            results[v.name] = VariantResult(v.name, v.recipe, Status.OK, artifact=cache.put(key, tmp, art, extra),
                                            quant=extra)
    return [results[v.name] for v in cfg.variants]


def _prune_data(cfg: ReleaseConfig, source: _Source, work: Path) -> dict[str, Any]:
    """Recovery data for pruned variants: labelled ``data.train`` if given, else calibration text (distillation)."""
    if cfg.model.source.task is Task.TEXT_GENERATION:
        return {}
    encoder = TextEncoder(source.tokenizer, cfg.model.source.seq_len)
    npz = work / "prune_inputs.npz"
    if cfg.data.train is not None:
        train = read_labelled_tsv(cfg.data.train, limit=cfg.data.train_samples)
        save_npz(npz, encoder.encode(train.sentences))
        return {"npz": str(npz), "labels": list(train.labels), "sha256": sha256_tree(cfg.data.train) + f":{len(train.labels)}"}
    if cfg.data.calibration is None:
        raise DataError("pruned variants need recovery data: set data.train (labelled) or data.calibration (distillation)")
    texts = read_texts(cfg.data.calibration, limit=cfg.data.train_samples)
    save_npz(npz, encoder.encode(texts))
    return {"npz": str(npz), "labels": None, "sha256": sha256_tree(cfg.data.calibration) + f":{len(texts)}"}


def _publish(cfg: ReleaseConfig, source: _Source, encoder: TextEncoder | None,
             built: list[VariantResult]) -> list[VariantResult]:
    """Copy each variant to ``<output>/<name>.tflite`` with the sidecars an app needs."""
    out = []
    meta = {"task": cfg.model.source.task.value, "seq_len": cfg.model.source.seq_len,
            "signatures": _signatures(next((v.artifact.path for v in built if v.artifact is not None), None)),
            "labels": source.info.get("labels", {}), "tokenizer": "tokenizer.json", "source_sha256": source.sha256}
    if encoder is not None:
        atomic_write_text(cfg.output_dir / "tokenizer.json", encoder.to_json())
    else:
        atomic_write_text(cfg.output_dir / "tokenizer.json", str(load_tokenizer(source.tokenizer).to_str()))
    write_model_card(cfg.output_dir / "model.json", **meta)
    for v in built:
        if v.status is Status.OK and v.artifact is not None:
            dest = cfg.output_dir / f"{v.name}.tflite"
            atomic_copy(v.artifact.path, dest)
            art = dataclasses.replace(v.artifact, path=str(dest))
            v = dataclasses.replace(v, artifact=art, size=measure_size(dest))
        out.append(v)
    return out


def _signatures(path: str | None) -> dict[str, Any]:
    """Signature name -> input and output names of a .tflite (what an app calls), {} if unreadable."""
    if path is None:
        return {}
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: only where a model runs

    try:
        return {k: {"inputs": list(v["inputs"]), "outputs": list(v["outputs"])}
                for k, v in Interpreter(model_content=Path(path).read_bytes()).get_signature_list().items()}
    except (ValueError, RuntimeError):
        return {}


def inspect_variant(v: VariantResult, delegates: tuple[str, ...]) -> VariantResult:
    """Read the published flatbuffer: graph summary and static compatibility per delegate (no TF, no run)."""
    assert v.artifact is not None
    model = load_model(v.artifact.path)
    inputs = model.subgraph_inputs[0] if model.subgraph_inputs else ()
    tensors = model.subgraph_tensors[0] if model.subgraph_tensors else ()
    graph = {
        "ops": len(model.ops),
        "subgraphs": list(model.subgraph_names),
        "macs": model.total_macs,
        "op_counts": dict(Counter(o.name for o in model.ops).most_common()),
        "flex_ops": sorted({o.name for o in model.ops if o.is_flex}),
        "custom_ops": sorted({o.name for o in model.ops if o.is_custom and not o.is_flex}),
        "dynamic_inputs": [tensors[i].name for i in inputs if i < len(tensors) and tensors[i].dynamic],
    }
    graph["needs_flex_delegate"] = bool(graph["flex_ops"])
    params: dict[str, int] = {}
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for sub in model.subgraph_tensors:
        for t in sub:
            if t.is_const and (t.name, t.shape) not in seen:
                seen.add((t.name, t.shape))
                params[t.type] = params.get(t.type, 0) + t.num_elements
    graph["params_by_dtype"] = params
    total = sum(params.values())
    graph["bytes_per_param"] = round(model.size_bytes / total, 3) if total else None
    compat = tuple(evaluate(model, load_rules(d), model_name=v.name) for d in delegates)
    return dataclasses.replace(v, graph=graph, compat=compat)


def _with_efficiency(v: VariantResult, peak: dict[str, Any]) -> VariantResult:
    """Achieved GFLOP/s per measured cell (2 × MACs / p50) and its share of the measured sgemm peak."""
    macs = int(v.graph.get("macs") or 0)
    if not macs:
        return v
    cells = []
    for b in v.bench:
        if b.status is Status.OK and b.latency is not None and not b.protocol.get("latency_emulated"):
            gflops = 2.0 * macs / (b.latency.p50 * 1e-3) / 1e9
            eff = {"gflops": round(gflops, 2)}
            ref = peak.get("gflops", {}).get(str(b.threads))
            if ref:
                eff["pct_of_sgemm_peak"] = round(100.0 * gflops / ref, 1)
            theory = peak.get("theoretical_gflops", {}).get(str(b.threads))
            if theory:
                eff["pct_of_isa_peak"] = round(100.0 * gflops / theory, 1)
            b = dataclasses.replace(b, protocol={**b.protocol, "efficiency": eff})
        cells.append(b)
    return dataclasses.replace(v, bench=tuple(cells))


def _op_profile(cfg: ReleaseConfig, variants: list[VariantResult], data: _EvalData, say: Progress) -> dict[str, Any]:
    """Where the time goes in the slowest variant (median latency at its fewest threads): LiteRT's op profiler."""
    if cfg.bench.profile_runs == 0:
        return {"not_run": "bench.profile_runs = 0"}
    if data.task is Task.TEXT_GENERATION:
        return {"not_run": "the per-op profiler runs a model's default signature; generators are benchmarked per token"}
    cpu = [b for v in variants for b in v.bench if b.status is Status.OK and b.latency and b.backend in ("xnnpack", "cpu")]
    if not cpu or data.bench_npz is None:
        return {"not_run": "no CPU latency was measured"}
    fewest = min(b.threads for b in cpu)
    slowest = max((b for b in cpu if b.threads == fewest), key=lambda b: b.latency.p50 if b.latency else 0.0)
    v = next(x for x in variants if x.name == slowest.variant)
    assert v.artifact is not None
    say(f"bench: per-op profile of {v.name} (the slowest, {slowest.backend} x{fewest})")

    try:
        prof = run_profile(v.artifact.path, threads=fewest, backend=slowest.backend, runs=cfg.bench.profile_runs,
                           inputs_npz=data.bench_npz, timeout_s=cfg.bench.timeout_s)
    except LitegateError as exc:
        return {"variant": v.name, "not_run": exc.message}
    return {"variant": v.name, "why": f"the slowest variant by median latency at {fewest} thread(s)",
            "backend": slowest.backend, "threads": fewest, "runs": prof["runs"], "method": prof["method"],
            "op_ms_per_run": round(prof["op_ms_per_run"], 4), "wall_ms_per_run": round(prof["wall_ms_per_run"], 4),
            "by_type": [{"op": n, "count": c, "ms_per_run": round(ms / prof["runs"], 4), "pct": round(pct, 2)}
                        for n, c, ms, pct in prof["by_type"]],
            "top_ops": [{"op": n, "index": i, "ms_per_run": round(ms / prof["runs"], 4), "pct": round(pct, 2)}
                        for n, i, ms, pct in sorted(prof["ops"], key=lambda r: -r[2])[:15]]}


def _bench_cells(cfg: ReleaseConfig, v: VariantResult, data: _EvalData, work: Path) -> Iterator[BenchResult]:
    assert v.artifact is not None
    inputs, signature = data.bench_npz, None
    if data.task is Task.TEXT_GENERATION:
        signature, feeds = generator_bench_inputs(Path(v.artifact.path), data.bench_tokens)
        inputs = work / f"{v.name}.bench_inputs.npz"
        save_npz(inputs, feeds)
    assert inputs is not None
    for backend in cfg.bench.backends:
        for threads in cfg.bench.threads:
            yield run_cell(path=v.artifact.path, sha256=v.artifact.sha256, variant=v.name, backend=backend,
                           threads=threads, inputs_npz=inputs, protocol=cfg.bench.protocol(),
                           timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb, signature=signature)


def _accuracy(cfg: ReleaseConfig, variants: list[VariantResult], data: _EvalData, work: Path,
              say: Progress) -> list[VariantResult]:
    task = cfg.model.source.task
    backend, threads = cfg.bench.eval_backend, cfg.bench.eval_threads
    if data.inputs_npz is None:
        res = AccuracyResult(task=task, metric="accuracy", value=None, backend=backend, n_samples=0,
                             status=Status.NOT_RUN, reason="no evaluation data configured (data.eval)")
        return [dataclasses.replace(v, accuracy=(res,)) if v.status is Status.OK else v for v in variants]
    job = "lm_eval_job" if task is Task.TEXT_GENERATION else "eval_job"
    module = "litegate.benchmarks.accuracy" if task is Task.TEXT_GENERATION else "litegate.benchmarks.latency"
    outputs: dict[str, dict[str, np.ndarray]] = {}
    failures: dict[str, str] = {}
    for v in variants:
        if v.status is not Status.OK or v.artifact is None:
            continue
        say(f"eval: {v.name} on {data.n} samples")
        out_npz = work / f"{v.name}.outputs.npz"
        try:
            run_isolated(f"{module}:{job}",
                         {"path": v.artifact.path, "backend": backend, "threads": threads,
                          "inputs_npz": str(data.inputs_npz), "windows_npz": str(data.inputs_npz), "out_npz": str(out_npz)},
                         timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb)
            with np.load(out_npz) as arrays:
                outputs[v.name] = {k: arrays[k] for k in arrays.files}
        except LitegateError as exc:
            failures[v.name] = exc.message
    ref = outputs.get(cfg.reference)
    ref_value = summarize_task(task.value, ref, ref, data.labels, data.windows)[1] if ref is not None else None
    out = []
    for v in variants:
        if v.status is not Status.OK:
            out.append(v)
            continue
        if v.name in failures:
            res = AccuracyResult(task=task, metric="accuracy", value=None, backend=backend, n_samples=data.n,
                                 status=Status.FAILED, reason=failures[v.name])
        else:
            metric, value, extra = summarize_task(task.value, outputs[v.name], ref, data.labels, data.windows)
            res = AccuracyResult(task=task, metric=metric, value=value, backend=backend, n_samples=data.n,
                                 reference=ref_value, delta=None if ref_value is None else value - ref_value, extra=extra)
        out.append(dataclasses.replace(v, accuracy=(res,) + _gpu_accuracy(cfg, v, data, ref, ref_value, say)))
    return out


def _gpu_accuracy(cfg: ReleaseConfig, v: VariantResult, data: _EvalData, ref: dict[str, np.ndarray] | None,
                  ref_value: float | None, say: Progress) -> tuple[AccuracyResult, ...]:
    """The task metric on LiteRT's GPU delegate (fp16 arithmetic), its own row, when ``gpu`` is benchmarked here."""
    task = cfg.model.source.task
    if "gpu" not in cfg.bench.backends or task is Task.TEXT_GENERATION or v.artifact is None or data.inputs_npz is None:
        return ()
    reason = why_not_runnable("gpu")
    if reason:
        return (AccuracyResult(task=task, metric="accuracy", value=None, backend="gpu", n_samples=0,
                               status=Status.NOT_RUN, reason=reason),)

    say(f"eval: {v.name} on the GPU delegate")
    try:
        run = run_gpu(v.artifact.path, inputs=data.inputs_npz, threads=cfg.bench.eval_threads,
                      timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb)
    except LitegateError as exc:
        return (AccuracyResult(task=task, metric="accuracy", value=None, backend="gpu", n_samples=data.n,
                               status=Status.FAILED, reason=exc.message),)
    if run.log.shader_errors:
        return (AccuracyResult(task=task, metric="accuracy", value=None, backend="gpu", n_samples=data.n,
                               status=Status.FAILED,
                               reason=f"the GPU delegate failed to compile a shader: {run.log.shader_errors[0][:300]}"),)
    outputs = {k: np.asarray(a) for k, a in run.outputs.items()}
    metric, value, extra = summarize_task(task.value, outputs, ref, data.labels, data.windows)
    extra = {**extra, "fully_accelerated": float(run.fully_accelerated)}
    return (AccuracyResult(task=task, metric=metric, value=value, backend="gpu", n_samples=run.n_inputs,
                           reference=ref_value, delta=None if ref_value is None else value - ref_value, extra=extra),)

"""The release pipeline: inputs -> convert -> publish -> check -> measure -> accuracy -> report -> gate.

:func:`run_release` reads as the pipeline; each stage's body lives with its stage (:mod:`litegate.inputs`,
:mod:`litegate.quantize.variants`, :mod:`litegate.compat`, :mod:`litegate.benchmarks`, :mod:`litegate.report`,
:mod:`litegate.gate`). Heavy work (TensorFlow conversion, LiteRT execution) runs in isolated child processes;
this module only wires the stages and assembles the :class:`~litegate.types.Report`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from litegate import gate, history, machine, report, shard
from litegate.artifacts import (
    atomic_copy,
    atomic_write_text,
    output_lock,
    save_npz,
    sha256_file,
    tool_versions,
    write_model_card,
)
from litegate.backends.runtime import signatures_of
from litegate.backends.spec import is_aihub_backend, is_arm_backend, is_local_cpu_backend
from litegate.baseline import compare
from litegate.benchmarks.accuracy import OutputJobs, evaluate_variants, generator_bench_inputs
from litegate.benchmarks.matrix import bench_variant
from litegate.benchmarks.paired import PairedProtocol, find_baseline_model, remeasure
from litegate.benchmarks.peak import measure_peak, with_efficiency
from litegate.benchmarks.profile import profile_slowest
from litegate.benchmarks.size import measure_size
from litegate.compat import coreml, qnn
from litegate.compat.check import check_target
from litegate.config import ReleaseConfig
from litegate.errors import DataError
from litegate.inputs import (
    EvalData,
    Source,
    calibration,
    eval_data,
    prune_data,
    resolve_source,
    selection_data,
)
from litegate.quantize.variants import BuildPlan, build_variants
from litegate.tasks import TextEncoder, load_tokenizer
from litegate.tflite.summary import graph_summary
from litegate.tflite.verify import load_model
from litegate.timing import Stages
from litegate.types import BenchResult, PairedCell, RecipeKind, Report, Status, Task, VariantResult
from litegate.version import __version__

Progress = Callable[[str], None]


def run_release(cfg: ReleaseConfig, progress: Progress | None = None, *, jobs: int = 1) -> Report:
    """Run the whole release pipeline for ``cfg`` and write its report files.

    ``jobs`` child processes convert variants, and evaluate them, at once; latency cells always run one at a time.
    Each stage's wall time goes to ``run.stages`` of the report.

    Returns:
        The report (its ``passed`` field is the gate's verdict).

    Raises:
        LitegateError: configuration, data or model errors that stop the run before a report.
    """
    say = progress or (lambda _msg: None)
    if cfg.history.enabled:  # a wrong history URL fails now, not after the pipeline
        history.prepare(cfg)
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    stages = Stages()
    with output_lock(cfg.output_dir):
        with tempfile.TemporaryDirectory(prefix="litegate-run-", dir=cfg.output_dir) as work_str:
            work = Path(work_str)
            with stages.clock("inputs"):
                source, encoder, data, plan, versions = _inputs(cfg, work)
            say(f"convert: {len(cfg.variants)} variants from {source.kind.value} {source.path}")
            # A variant's evaluation starts as soon as it is built, in a slot a finished conversion child frees;
            # every child is done before the first latency cell (they run alone).
            with _output_jobs(cfg, data, work, say, jobs=jobs, stages=stages) as evals:
                with stages.clock("convert"):
                    built = build_variants(plan, versions, work, say, jobs=jobs, stages=stages, slots=evals.slots,
                                           on_built=evals.submit)
                with stages.clock("eval"):
                    evals.wait()
                variants = []
                for v in _publish(cfg, source, encoder, built):
                    if v.status is Status.OK:
                        with stages.clock("inspect"):
                            v = inspect_variant(v, cfg.delegates)
                        say(f"bench: {v.name}")
                        with stages.clock("bench"):
                            v = dataclasses.replace(v, bench=tuple(_bench_cells(cfg, v, data, work)))
                    variants.append(v)
                with stages.clock("coreml"):
                    variants = _core_ml(cfg, variants, say)
                with stages.clock("eval"):
                    variants = _evaluate(cfg, variants, data, work, say, jobs=jobs, stages=stages, started=evals)
            peak = None
            if cfg.bench.peak_probe and any(b.status is Status.OK for v in variants for b in v.bench):
                say("bench: machine peak (sgemm probe)")
                with stages.clock("peak"):
                    peak = measure_peak(list(cfg.bench.threads), cache_dir=cfg.cache_dir)
                variants = [with_efficiency(v, peak) for v in variants]
            with stages.clock("profile"):
                profile = profile_slowest(variants, inputs_npz=data.bench_npz, runs=cfg.bench.profile_runs,
                                          timeout_s=cfg.bench.timeout_s, generator=data.task is Task.TEXT_GENERATION,
                                          say=say)
            base = report.load(cfg.baseline) if cfg.baseline is not None else None
            with stages.clock("baseline"):
                paired = _remeasure_baseline(cfg, base, variants, data, work, say) if base is not None else {}
        run_info = {
            "name": cfg.name,
            "config": str(cfg.path),
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - t_start, 2),
            "jobs": jobs,
            "stages": stages.to_dict(),
            "litegate": __version__,
            "tool_versions": versions,
            "machine": machine.describe(),
            **_shared_run_info(cfg, data),
            "cache_hits": sum(1 for v in variants if v.cached),
            "machine_peak": peak,
            "op_profile": profile,
        }
        return _gate_and_write(cfg, run_info, _model_info(cfg, source), variants, base, paired, say)


def _gate_and_write(cfg: ReleaseConfig, run_info: dict[str, Any], model_info: dict[str, Any],
                    variants: Sequence[VariantResult], base: Report | None,
                    paired: dict[tuple[str, str, int], PairedCell], say: Progress, *,
                    unpaired: str | None = None) -> Report:
    """Gate ``variants`` (and compare them with ``base``), add the history's trend, write every rendering and join
    the history: the end of a run and of a merge alike. ``unpaired``: why no cell was re-timed beside the baseline."""
    verdicts, gate_info = gate.evaluate(cfg, list(variants))
    if base is not None:
        draft = Report(run=run_info, model=model_info, variants=tuple(variants), verdicts=(), passed=False)
        base_verdicts, rows = compare(base, draft, cfg.compare, paired)
        verdicts = verdicts + base_verdicts
        gate_info["passed"] = bool(gate_info["passed"]) and all(x.passed for x in base_verdicts)
        run_info["baseline"] = {"path": str(cfg.baseline), "started_at": base.run.get("started_at"),
                                "config": dataclasses.asdict(cfg.compare), "rows": rows,
                                "paired": [p.to_dict() for p in paired.values()]}
        if unpaired:
            run_info["baseline"]["paired_not_run"] = unpaired
    run_info["gate"] = gate_info
    if cfg.history.enabled:  # the last runs of this config, so report.md/.html read the trend from report.json
        run_info["trend"] = history.trend(history.for_release(cfg), cfg.name, last=cfg.history.last,
                                          mach=machine.describe())
    rep = Report(run=run_info, model=model_info, variants=tuple(variants), verdicts=tuple(verdicts),
                 passed=bool(gate_info["passed"]))
    say(f"report: {cfg.output_dir}")
    report.write(rep, cfg.output_dir)
    if cfg.history.enabled:
        added = history.ingest_run(cfg, cfg.output_dir / "report.json")
        say(f"history: {added.report_sha256[:12]} added to {history.for_release(cfg)}")
    return rep


def _output_jobs(cfg: ReleaseConfig, data: EvalData, work: Path, say: Progress, *, jobs: int,
                 stages: Stages | None) -> OutputJobs:
    """The run's evaluation children on the backend ``cfg`` evaluates on, ``jobs`` at a time (:class:`OutputJobs`)."""
    return OutputJobs(data, backend=cfg.bench.eval_backend, threads=cfg.bench.eval_threads,
                      timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb, work=work, say=say, jobs=jobs, stages=stages)


def _evaluate(cfg: ReleaseConfig, variants: list[VariantResult], data: EvalData, work: Path, say: Progress, *,
              jobs: int, stages: Stages | None = None, started: OutputJobs | None = None) -> list[VariantResult]:
    """The accuracy stage of ``variants`` on every backend ``cfg`` evaluates on (:func:`evaluate_variants`);
    ``started``: the evaluation children already given the variants as they were built."""
    return evaluate_variants(
        variants, data, reference=cfg.reference, backend=cfg.bench.eval_backend,
        threads=cfg.bench.eval_threads, on_gpu="gpu" in cfg.bench.backends, timeout_s=cfg.bench.timeout_s,
        mem_mb=cfg.mem_mb, work=work, say=say, htp_socs=_emulated_socs(cfg), htp_samples=cfg.emulate_samples,
        phones=tuple(b for b in cfg.bench.backends if is_aihub_backend(b)),
        arm_backends=tuple(b for b in cfg.bench.backends if is_arm_backend(b) and cfg.emulate_samples),
        jobs=jobs, stages=stages, started=started)


def _build_plan(cfg: ReleaseConfig, source: Source, encoder: TextEncoder | None, data: EvalData,
                work: Path) -> BuildPlan:
    """The convert stage's inputs: calibration and recovery data, and what ``auto`` variants score against."""
    calib_npz, calib_hash = calibration(cfg, source, encoder, work)
    # pruning recovery and quantization-aware distillation train on the same data
    recovery = prune_data(cfg, source, work) if any(v.prune or v.recipe.params.get("qat") for v in cfg.variants) else {}
    auto_eval: dict[str, Any] = {}
    auto = [v for v in cfg.variants if v.recipe.kind is RecipeKind.AUTO]
    if auto:
        if data.inputs_npz is None or data.task is Task.TEXT_GENERATION:
            raise DataError(f"variant {auto[0].name!r} (recipe auto) needs data.eval to score its candidates")
        auto_eval = selection_data(cfg, source, data, work)
    budgets = {v.name: cfg.budget_for(v.name).max_accuracy_drop for v in auto}
    return BuildPlan(
        source=cfg.model.source, source_sha256=source.sha256, variants=cfg.variants, cache_dir=cfg.cache_dir,
        debug_dir=cfg.output_dir, timeout_s=cfg.convert_timeout_s, mem_mb=cfg.mem_mb, calibration_npz=calib_npz,
        calibration_hash=calib_hash, prune_data=recovery,
        auto_eval=auto_eval, auto_budgets={k: 1.0 if b is None else float(b) for k, b in budgets.items()},
        auto_guard={"backend": gate.cpu_backend(cfg), "threads": sorted(set(cfg.bench.threads)) or [1]} if auto else {},
        debug=cfg.debug)


def _publish(cfg: ReleaseConfig, source: Source, encoder: TextEncoder | None,
             built: list[VariantResult]) -> list[VariantResult]:
    """Copy each variant to ``<output>/<name>.tflite`` with the sidecars an app needs."""
    first = next((v.artifact.path for v in built if v.artifact is not None), None)
    tokenizer = encoder.to_json() if encoder is not None else str(load_tokenizer(source.tokenizer).to_str())
    atomic_write_text(cfg.output_dir / "tokenizer.json", tokenizer)
    write_model_card(cfg.output_dir / "model.json", task=cfg.model.source.task.value, seq_len=cfg.model.source.seq_len,
                     signatures=signatures_of(first) if first else {}, labels=source.info.get("labels", {}),
                     tokenizer="tokenizer.json", source_sha256=source.sha256)
    out = []
    for v in built:
        if v.status is Status.OK and v.artifact is not None:
            dest = cfg.output_dir / f"{v.name}.tflite"
            atomic_copy(v.artifact.path, dest)
            v = dataclasses.replace(v, artifact=dataclasses.replace(v.artifact, path=str(dest)), size=measure_size(dest))
        out.append(v)
    return out


def _core_ml(cfg: ReleaseConfig, variants: list[VariantResult], say: Progress) -> list[VariantResult]:
    """Each ``mlprogram[:DEPLOYMENT]`` target of ``check.delegates`` (each once): every variant's Core ML record, and
    its ``.mlpackage`` beside the ``.tflite`` files."""
    targets = tuple(dict.fromkeys(coreml.canonical(d) for d in cfg.delegates if coreml.is_mlprogram_target(d)))
    for target in targets:
        say(f"coreml: {target} for {len(cfg.variants)} variants")
        done = coreml.convert_variants(cfg.variants, cfg.model.source, target, cfg.output_dir,
                                       timeout_s=cfg.convert_timeout_s, mem_mb=cfg.mem_mb)
        variants = [dataclasses.replace(v, coreml=(*v.coreml, done[v.name])) if v.name in done else v
                    for v in variants]
    return variants


def _emulated_socs(cfg: ReleaseConfig) -> tuple[str, ...]:
    """The SoCs of the ``qnn:SOC`` targets in ``check.delegates``, each once; none when emulation is off."""
    if not cfg.emulate_samples:
        return ()
    return tuple(dict.fromkeys(qnn.parse_target(d) for d in cfg.delegates if qnn.is_qnn_target(d)))


def inspect_variant(v: VariantResult, delegates: tuple[str, ...]) -> VariantResult:
    """Read the published flatbuffer: graph summary and static compatibility per delegate (no TF, no run).

    ``mlprogram`` targets convert the TF graph instead (:func:`_core_ml`)."""
    assert v.artifact is not None
    model = load_model(v.artifact.path)
    compat = tuple(check_target(model, v.artifact.path, d, model_name=v.name) for d in delegates
                   if not coreml.is_mlprogram_target(d))
    return dataclasses.replace(v, graph=graph_summary(model), compat=compat)


def _bench_inputs(v: VariantResult, data: EvalData, work: Path) -> tuple[Path, str | None]:
    """The inputs a variant is timed on, and the signature: a generator is timed per token on its decode/step
    signature."""
    assert v.artifact is not None
    inputs, signature = data.bench_npz, None
    if data.task is Task.TEXT_GENERATION:
        signature, feeds = generator_bench_inputs(Path(v.artifact.path), data.bench_tokens)
        inputs = work / f"{v.name}.bench_inputs.npz"
        save_npz(inputs, feeds)
    assert inputs is not None
    return inputs, signature


def _remeasure_baseline(cfg: ReleaseConfig, base: Report, variants: list[VariantResult], data: EvalData,
                        work: Path, say: Progress) -> dict[tuple[str, str, int], PairedCell]:
    """Each measured local-CPU cell whose baseline variant's model file is at hand, re-timed beside the baseline's
    model in one child (:mod:`litegate.benchmarks.paired`); the comparison judges these pairs, not two runs."""
    if cfg.compare.paired_rounds == 0:
        return {}
    assert cfg.baseline is not None
    protocol = PairedProtocol(rounds=cfg.compare.paired_rounds)
    out: dict[tuple[str, str, int], PairedCell] = {}
    for v in variants:
        b = base.variant(v.name)
        cells = [c for c in v.bench if c.status is Status.OK and c.latency is not None and is_local_cpu_backend(c.backend)]
        if b is None or b.artifact is None or v.artifact is None or not cells:
            continue
        model = find_baseline_model(cfg.baseline, b.artifact.path, b.artifact.sha256)
        if model is None:
            say(f"baseline: {v.name}: the baseline's model ({Path(b.artifact.path).name}, sha256 "
                f"{b.artifact.sha256[:12]}) is not next to {cfg.baseline.name}: latency compared unpaired")
            continue
        inputs, signature = _bench_inputs(v, data, work)
        for c in cells:
            say(f"baseline: {v.name} on {c.backend}x{c.threads}, re-timed beside the baseline's model")
            out[(v.name, c.backend, c.threads)] = remeasure(
                variant=v.name, base_path=model, new_path=v.artifact.path, backend=c.backend, threads=c.threads,
                inputs_npz=inputs, signature=signature, protocol=protocol, timeout_s=cfg.bench.timeout_s,
                mem_mb=cfg.mem_mb)
    return out


def _bench_cells(cfg: ReleaseConfig, v: VariantResult, data: EvalData, work: Path) -> Iterator[BenchResult]:
    """Latency cells of one variant."""
    inputs, signature = _bench_inputs(v, data, work)
    assert v.artifact is not None
    yield from bench_variant(v, backends=cfg.bench.backends, threads=cfg.bench.threads, inputs_npz=inputs,
                             protocol=cfg.bench.protocol(), timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb,
                             signature=signature)


# Sharded runs (litegate plan / run --cells / merge): the items and what each carries are in litegate.shard.

def _inputs(cfg: ReleaseConfig, work: Path) -> tuple[Source, TextEncoder | None, EvalData, BuildPlan, dict[str, str]]:
    """The inputs stage of :func:`run_release`: the source, its encoder, the evaluation data and the convert plan."""
    source = resolve_source(cfg)
    encoder = None if cfg.model.source.task is Task.TEXT_GENERATION else TextEncoder(source.tokenizer,
                                                                                      cfg.model.source.seq_len)
    versions = tool_versions()
    data = eval_data(cfg, source, encoder, work)
    return source, encoder, data, _build_plan(cfg, source, encoder, data, work), versions


def _plan_of(cfg: ReleaseConfig, data: EvalData, build: BuildPlan, versions: dict[str, str]) -> shard.Plan:
    return shard.make_plan(cfg, build, versions, eval_sha256=data.sha256, eval_samples=data.n,
                           bench_inputs=data.bench_desc)


def plan_release(cfg: ReleaseConfig) -> shard.Plan:
    """The work items of ``cfg``'s release (:mod:`litegate.shard`); reads the inputs, converts and runs nothing."""
    with tempfile.TemporaryDirectory(prefix="litegate-plan-") as work_str:
        _source, _encoder, data, build, versions = _inputs(cfg, Path(work_str))
        return _plan_of(cfg, data, build, versions)


def _shared_run_info(cfg: ReleaseConfig, data: EvalData) -> dict[str, Any]:
    """The run fields a sharded run reports as :func:`run_release` does."""
    return {"bench_protocol": {**cfg.bench.protocol(), "inputs": data.bench_desc,
                               "isolation": "one child process per cell, cells run one at a time"},
            "eval": {"data": str(cfg.data.eval) if cfg.data.eval else None, "task": cfg.model.source.task.value,
                     "samples": data.n, "backend": cfg.bench.eval_backend, "threads": cfg.bench.eval_threads}}


def _model_info(cfg: ReleaseConfig, source: Source) -> dict[str, Any]:
    return {"source": cfg.model.source.to_dict(), "sha256": source.sha256, "seq_len": cfg.model.source.seq_len,
            "tokenizer": str(source.tokenizer), **source.info}


def run_cells(cfg: ReleaseConfig, plan_path: Path, ids: list[int] | None, progress: Progress | None = None, *,
              jobs: int = 1) -> Report:
    """Run the items ``ids`` of the plan at ``plan_path`` (every item for None) and write a partial ``report.json``.

    A conversion item converts its variant (or finds it in the cache), publishes and inspects it, converts it to Core
    ML for ``mlprogram`` targets and evaluates its accuracy (against the reference, built or found here too); a
    measurement cell times one backend × threads. ``run.partial`` names the plan, the items, and per variant whether
    its model came from the cache or was converted here. No gate: ``litegate merge`` gates the whole. ``jobs``: as
    :func:`run_release`'s.

    Raises:
        ConfigError: the plan is not this config's (another config, model, data or tool versions), or an unknown id.
    """
    say = progress or (lambda _msg: None)
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    wanted = shard.load_plan(plan_path)
    with output_lock(cfg.output_dir):
        with tempfile.TemporaryDirectory(prefix="litegate-run-", dir=cfg.output_dir) as work_str:
            work = Path(work_str)
            source, encoder, data, build, versions = _inputs(cfg, work)
            plan = _plan_of(cfg, data, build, versions)
            shard.check_same_plan(wanted, plan, str(plan_path))
            items = shard.select(plan, ids)
            converting = [i.variant for i in items if i.kind == shard.CONVERT]
            mine = {i.variant for i in items}
            needed = mine | ({cfg.reference} if converting and data.inputs_npz is not None else set())
            subset = tuple(v for v in cfg.variants if v.name in needed)
            say(f"cells: items {', '.join(str(i.id) for i in items)} of plan {plan.hash[:12]} "
                f"({len(converting)} conversions, {len(items) - len(converting)} cells)")
            built = build_variants(dataclasses.replace(build, variants=subset), versions, work, say, jobs=jobs)
            conversions = {v.name: ("cache" if v.cached else "converted") if v.status is Status.OK
                           else f"failed: {v.reason}" for v in built}
            variants = {v.name: inspect_variant(v, cfg.delegates) if v.status is Status.OK else v
                        for v in _publish(cfg, source, encoder, built)}
            if converting:
                only = dataclasses.replace(cfg, variants=tuple(v for v in cfg.variants if v.name in converting))
                done = _core_ml(only, [variants[n] for n in converting], say)
                pool = done + [variants[n] for n in needed if n not in converting]
                for v in _evaluate(cfg, pool, data, work, say, jobs=jobs):
                    if v.name in converting:
                        variants[v.name] = v
            for item in (i for i in items if i.kind == shard.MEASURE):
                v = variants[item.variant]
                if v.status is not Status.OK or v.artifact is None:
                    continue
                say(f"bench: {v.name} on {item.backend}x{item.threads}")
                inputs, signature = _bench_inputs(v, data, work)
                cells = tuple(bench_variant(v, backends=(str(item.backend),), threads=(int(item.threads or 1),),
                                            inputs_npz=inputs, protocol=cfg.bench.protocol(),
                                            timeout_s=cfg.bench.timeout_s, mem_mb=cfg.mem_mb, signature=signature))
                variants[v.name] = dataclasses.replace(v, bench=v.bench + cells)
            peak = None
            if cfg.bench.peak_probe and any(b.status is Status.OK for v in variants.values() for b in v.bench):
                say("bench: machine peak (sgemm probe)")
                peak = measure_peak(list(cfg.bench.threads), cache_dir=cfg.cache_dir)
        ours = [variants[v.name] for v in cfg.variants if v.name in mine]
        mach = machine.describe()
        run_info = {
            "name": cfg.name,
            "config": str(cfg.path),
            "started_at": started.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - t_start, 2),
            "jobs": jobs,
            "litegate": __version__,
            "tool_versions": versions,
            "machine": mach,
            **_shared_run_info(cfg, data),
            "cache_hits": sum(1 for v in ours if v.cached),
            "machine_peak": peak,
            "op_profile": {"not_run": shard.SHARDED_NOT_RUN},
            "partial": shard.partial_info(plan, items, conversions, mach),
        }
        rep = Report(run=run_info, model=_model_info(cfg, source), variants=tuple(ours), verdicts=(), passed=False)
        say(f"report: {cfg.output_dir} (partial)")
        atomic_write_text(cfg.output_dir / "report.json", report.to_json(rep))
        for stale in ("report.md", "report.html", "junit.xml"):  # an earlier gated run's, not this report's
            (cfg.output_dir / stale).unlink(missing_ok=True)
        return rep


def merge_release(cfg: ReleaseConfig, paths: Sequence[Path], progress: Progress | None = None) -> Report:
    """Merge the partial reports of a sharded run into one report, rendered and gated as :func:`run_release` does.

    The published models, ``tokenizer.json`` and ``model.json`` are copied from the partials' folders when they are
    there (each model checked by its sha256). Cells measured on machines of different fingerprints are marked not
    comparable (``run.sharded``). The per-op profile is not run; a baseline is compared unpaired.

    Raises:
        ConfigError: a partial is not a partial report, partials of different plans, a duplicate or missing cell,
            or ``cfg`` plans another release than the partials ran.
    """
    say = progress or (lambda _msg: None)
    partials = shard.load_partials(paths)
    if cfg.history.enabled:  # a wrong history URL fails now, not after the merge
        history.prepare(cfg)
    with output_lock(cfg.output_dir):
        with tempfile.TemporaryDirectory(prefix="litegate-merge-", dir=cfg.output_dir) as work_str:
            source, _encoder, data, build, versions = _inputs(cfg, Path(work_str))
            shard.check_same_plan(partials[0].plan, _plan_of(cfg, data, build, versions), str(cfg.path))
        merged = shard.merge(partials)
        say(f"merge: {len(partials)} partial reports, {len(merged.plan.items)} items of plan {merged.plan.hash[:12]}")
        owner = {i: q for q in merged.partials for i in q.items}
        convert_items = {i.variant: i for i in merged.plan.of_kind(shard.CONVERT)}
        variants = []
        for v in merged.variants:
            folder = owner[convert_items[v.name].id].path.parent
            variants.append(_adopt_model(cfg, v, folder, merged.sharded["notes"]))
        first = owner[merged.plan.items[0].id].path.parent if merged.plan.items else None
        for name in ("tokenizer.json", "model.json"):
            if first is not None and (first / name).is_file() and first.resolve() != cfg.output_dir.resolve():
                atomic_copy(first / name, cfg.output_dir / name)
        runs = [q.report.run for q in merged.partials]
        run_info: dict[str, Any] = {
            "name": cfg.name,
            "config": str(cfg.path),
            "started_at": min(str(r.get("started_at")) for r in runs),
            "wall_s": max(float(r.get("wall_s", 0.0)) for r in runs),
            "jobs": max(int(r.get("jobs", 1)) for r in runs),  # the most child processes one partial used at once
            "litegate": __version__,
            "tool_versions": versions,
            "machine": dict(merged.machine),
            **_shared_run_info(cfg, data),
            "cache_hits": sum(1 for v in variants if v.cached),
            "machine_peak": merged.machine_peak,
            "op_profile": {"not_run": shard.SHARDED_NOT_RUN},
            "sharded": merged.sharded,
        }
        base = report.load(cfg.baseline) if cfg.baseline is not None else None
        return _gate_and_write(cfg, run_info, _model_info(cfg, source), variants, base, {}, say,
                               unpaired="sharded run: no cell was re-timed beside the baseline's model")


def _adopt_model(cfg: ReleaseConfig, v: VariantResult, folder: Path, notes: list[str]) -> VariantResult:
    """``v`` with its model copied from the partial's ``folder`` to ``<output>/<name>.tflite`` (checked by sha256);
    where the partial's folder lacks it, the artifact keeps the partial's path and ``notes`` says so."""
    if v.status is not Status.OK or v.artifact is None:
        return v
    found = folder / f"{v.name}.tflite"
    dest = cfg.output_dir / f"{v.name}.tflite"
    if not found.is_file() or sha256_file(found) != v.artifact.sha256:
        notes.append(f"{v.name}: its model is not beside {folder / 'report.json'} (or differs from its sha256 "
                     f"{v.artifact.sha256[:12]}): not copied to {dest}")
        return v
    if found.resolve() != dest.resolve():
        atomic_copy(found, dest)
    return dataclasses.replace(v, artifact=dataclasses.replace(v.artifact, path=str(dest)))

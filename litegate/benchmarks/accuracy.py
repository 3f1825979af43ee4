"""Task metrics per variant, and the child-process jobs that produce the outputs they score.

* text-classification: accuracy and macro F1 on labelled text; fidelity = agreement of the
  predicted class with the reference variant.
* sentence-embedding: label-free fidelity to the reference variant: mean and min cosine of the
  embeddings, and nearest-neighbour agreement (does each sentence keep its nearest neighbour).
* text-generation: perplexity of next-token prediction over held-out windows, and top-1
  next-token agreement with the reference variant: of ``prefill``'s logits, and, for a KV-cache
  generator, of its ``decode`` steps too (what an app runs for every generated token).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from litegate.artifacts import save_npz
from litegate.backends import aihub, arm
from litegate.backends import qnn as htp
from litegate.backends.gpu import run_gpu
from litegate.backends.registry import why_not_runnable
from litegate.backends.runtime import Runner
from litegate.errors import LitegateError, ModelLoadError
from litegate.isolation import run_isolated
from litegate.tasks import agreement, classification_metrics, cosine
from litegate.tflite.verify import load_model
from litegate.timing import Stages
from litegate.types import AccuracyResult, Status, Task, VariantResult


def embedding_metrics(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Fidelity of embeddings [N, D] to reference embeddings."""
    cos = cosine(emb, ref)
    out = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if len(emb) > 2:
        def nearest(e: np.ndarray) -> np.ndarray:
            n = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            sim = n @ n.T
            np.fill_diagonal(sim, -np.inf)
            return np.argmax(sim, axis=1)

        out["nn_agreement"] = float(np.mean(nearest(emb) == nearest(ref)) * 100.0)
    return out


def lm_metrics(logits: np.ndarray, windows: np.ndarray, ref_logits: np.ndarray | None = None, *,
               decode: np.ndarray | None = None, ref_decode: np.ndarray | None = None) -> dict[str, float]:
    """Perplexity of next-token prediction, and top-1 agreement with reference logits.

    logits: [N, P, V] for token windows [N, P]; position t predicts token t + 1. ``decode`` and ``ref_decode``
    ([N, K, V], :func:`lm_eval_job`): the decode steps' logits of both models, scored as
    ``decode_top1_agreement``.

    Raises:
        ModelLoadError: the logits are not [N, P, V] over a vocabulary holding every token of ``windows``.
    """
    logits, windows = np.asarray(logits), np.asarray(windows)
    if logits.ndim != 3 or logits.shape[:2] != windows.shape or not windows.size or logits.shape[2] <= windows.max():
        raise ModelLoadError(f"the generator's prefill logits have shape {list(logits.shape)}, not [windows, positions, "
                             f"vocabulary] for token windows of shape {list(windows.shape)}")
    z = logits[:, :-1, :].astype(np.float64)
    target = windows[:, 1:]
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    out = {"perplexity": float(math.exp(nll.mean())), "tokens": int(nll.size),
           "top1_accuracy": float(np.mean(np.argmax(z, -1) == target) * 100.0)}
    if ref_logits is not None:
        out["top1_agreement"] = float(np.mean(np.argmax(logits, -1) == np.argmax(ref_logits, -1)) * 100.0)
    if decode is not None and ref_decode is not None and decode.shape == ref_decode.shape and decode.size:
        out["decode_top1_agreement"] = float(np.mean(np.argmax(decode, -1) == np.argmax(ref_decode, -1)) * 100.0)
        out["decode_steps"] = int(decode.shape[0] * decode.shape[1])
    return out


DECODE_STEPS = 8  # teacher-forced decode steps scored per window (at most a quarter of the window)


def decode_logits(prefill: Runner, decode: Runner, window: np.ndarray) -> np.ndarray:
    """[K, V] logits of the last K = min(DECODE_STEPS, P // 4) teacher-forced ``decode`` steps of ``window`` [P]:
    ``prefill`` on its first P - K tokens (padded at the end, as an app pads a short prompt; causal attention keeps
    the padding out), then ``decode`` of tokens P - K .. P - 2, each at its position, on the cache the step before
    returned. Step j's logits predict token j + 1, as ``prefill``'s position j does."""
    p = len(window)
    k = min(DECODE_STEPS, p // 4)
    if k < 1:
        return np.zeros((0, 0), np.float32)
    first = np.zeros_like(window)
    first[: p - k] = window[: p - k]
    out = prefill({"tokens": first[None]})
    caches = {n: x for n, x in out.items() if n in decode.inputs}
    steps = []
    for j in range(p - k - 1, p - 1):
        res = decode({"token": window[None, j:j + 1], "pos": np.array([j], np.int32), **caches})
        steps.append(np.asarray(res["logits"]).reshape(-1))
        caches = {n: x for n, x in res.items() if n in decode.inputs}
    return np.stack(steps).astype(np.float32)


def classification_scores(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> dict[str, float]:
    m = classification_metrics(logits, labels)
    if ref is not None:
        m["agreement_with_reference"] = agreement(logits, ref)
        m["max_abs_logit_diff"] = float(np.max(np.abs(logits - ref)))
    return m


def lm_eval_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: logits of the ``prefill`` signature for every window (those in ``[start, stop)`` when
    given), zero initial state."""
    with np.load(payload["windows_npz"]) as data:
        windows = data["tokens"][payload.get("start"):payload.get("stop")]
    runner = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]), signature="prefill")
    zeros = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.inputs.items() if k != "tokens"}
    out = [runner({"tokens": w[None], **zeros})["logits"][0] for w in windows]
    arrays = {"logits": np.stack(out)}
    if "decode" in runner.interpreter.get_signature_list():  # a KV-cache generator: score its decode steps too
        decode = Runner(payload["path"], backend=payload["backend"], threads=int(payload["threads"]), signature="decode")
        if {"token", "pos"} <= set(decode.inputs) and len(windows):
            arrays["decode_logits"] = np.stack([decode_logits(runner, decode, w) for w in windows])
    save_npz(payload["out_npz"], arrays)
    return {"n": len(windows)}


def generator_bench_inputs(path: Path, tokens: list[int], n: int = 16) -> tuple[str, dict[str, np.ndarray]]:
    """The per-token signature of a generator (``decode`` or ``step``) and ``n`` realistic feeds for it.

    Shapes and dtypes come from the verified flatbuffer (:func:`litegate.tflite.verify.load_model`): this runs in
    the pipeline's own process, where nothing native may open the file.

    Raises:
        ModelLoadError: the model is unsound, or has neither a ``decode`` nor a ``step`` signature.
    """
    model = load_model(path)
    keys = [s.key for s in model.signatures]
    name = "decode" if "decode" in keys else "step"
    if name not in keys:
        raise ModelLoadError(f"{path}: not a litegate text generator: signatures {', '.join(keys) or 'none'} "
                             "(expected step, or prefill + decode)")
    inputs = model.signature_inputs(name)
    cache_len = next((int(t.shape[2]) for k, t in inputs.items() if "_cache_" in k and len(t.shape) > 2), 1)
    feeds: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        for k, t in inputs.items():
            shape = tuple(max(int(s), 1) for s in t.shape)
            dtype = TFLITE_DTYPES.get(t.type)
            if dtype is None:
                raise ModelLoadError(f"{path}: signature {name!r} input {k!r} is {t.type}, not a type litegate feeds")
            if k == "token":
                v = np.array([[tokens[i % len(tokens)]]], np.int32)
            elif k == "pos":
                v = np.array([min(i + 8, max(cache_len, 1) - 1)], np.int32)
            else:  # recurrent state or KV cache: a realistic scale, not zeros (kernels skip no work either way)
                v = (np.random.default_rng(i).standard_normal(shape) * 0.5).astype(dtype)
            feeds.setdefault(k, []).append(v[0] if v.ndim and v.shape[0] == 1 else v)
    return name, {k: np.stack(v) for k, v in feeds.items()}


TFLITE_DTYPES: dict[str, type[np.generic]] = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64, "INT16": np.int16,
    "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_, "FLOAT64": np.float64}


def summarize_task(task: str, outputs: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray] | None,
                   labels: np.ndarray | None, windows: np.ndarray | None) -> tuple[str, float, dict[str, float]]:
    """(metric name, value, all metrics) for one variant's outputs."""
    key = "logits" if "logits" in outputs else next(iter(outputs))
    out = outputs[key]
    r = ref[key] if ref is not None and key in ref else None
    if task == "text-classification":
        assert labels is not None
        m = classification_scores(out, labels, r)
        return "accuracy", m["accuracy"], m
    if task == "sentence-embedding":
        m = embedding_metrics(out, r if r is not None else out)
        return "cosine_to_reference", m["cosine_mean"], m
    assert windows is not None
    m = lm_metrics(out, windows, r, decode=outputs.get("decode_logits"),
                   ref_decode=None if ref is None else ref.get("decode_logits"))
    return "perplexity", m["perplexity"], m


class EvalInputs(Protocol):
    """What the accuracy stage reads of the run's evaluation data (:class:`litegate.inputs.EvalData`)."""

    task: Task
    n: int
    inputs_npz: Path | None
    labels: np.ndarray | None
    windows: np.ndarray | None


class OutputJobs:
    """The evaluation children of a run: each variant's outputs on the evaluation set, its samples split into ``jobs``
    shards, at most ``jobs`` children at a time.

    :meth:`submit` starts a variant's children as soon as it is built (``--jobs N``: while other variants still
    convert); ``slots`` is the semaphore the conversion children hold too, so conversion and evaluation children
    together never exceed ``jobs``. :meth:`collect` waits for them all: ({name: outputs}, {name: why it failed}).
    ``stages`` receives each variant's summed child time (``eval:NAME``)."""

    def __init__(self, data: EvalInputs, *, backend: str, threads: int, timeout_s: float, mem_mb: int | None,
                 work: Path, say: Callable[[str], None], jobs: int = 1, stages: Stages | None = None,
                 slots: threading.Semaphore | None = None) -> None:
        self._data, self._backend, self._threads = data, backend, threads
        self._timeout_s, self._mem_mb, self._work, self._say, self._stages = timeout_s, mem_mb, work, say, stages
        self._shards = _shards(data.n, jobs)
        self._slots = slots or threading.Semaphore(max(1, jobs))
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
        self._futures: list[tuple[str, concurrent.futures.Future[dict[str, np.ndarray] | str]]] = []
        self._names: set[str] = set()
        self._closed = False
        text_gen = data.task is Task.TEXT_GENERATION
        self._job = "litegate.benchmarks.accuracy:lm_eval_job" if text_gen else "litegate.benchmarks.latency:eval_job"

    def submit(self, v: VariantResult) -> None:
        """Queue ``v``'s shards, once per variant name (a variant that was not built has no outputs to compute)."""
        if v.name in self._names:
            return
        if v.status is Status.OK and v.artifact is not None and self._data.inputs_npz is not None:
            self._names.add(v.name)
            for i in range(len(self._shards)):
                self._futures.append((v.name, self._pool.submit(self._one, v, i)))

    def _one(self, v: VariantResult, i: int) -> dict[str, np.ndarray] | str:
        assert v.artifact is not None and self._data.inputs_npz is not None
        start, stop = self._shards[i]
        with self._slots:
            if self._closed:  # the run stopped while this child waited for a slot
                return "not run: the run stopped before this evaluation started"
            if i == 0:
                self._say(f"eval: {v.name} on {self._data.n} samples"
                          + (f" ({len(self._shards)} shards)" if len(self._shards) > 1 else ""))
            out_npz = self._work / f"{v.name}.outputs.{i}.npz"
            t0 = time.monotonic()
            try:
                run_isolated(self._job,
                             {"path": v.artifact.path, "backend": self._backend, "threads": self._threads,
                              "start": start, "stop": stop, "inputs_npz": str(self._data.inputs_npz),
                              "windows_npz": str(self._data.inputs_npz), "out_npz": str(out_npz)},
                             timeout_s=self._timeout_s, mem_mb=self._mem_mb)
                with np.load(out_npz) as arrays:
                    return {k: arrays[k] for k in arrays.files}
            except LitegateError as exc:
                return exc.message
            finally:
                if self._stages is not None:
                    self._stages.add(f"eval:{v.name}", time.monotonic() - t0)

    def __enter__(self) -> OutputJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the children not started yet and wait for the running ones (a run that stops early)."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def slots(self) -> threading.Semaphore:
        """The semaphore every child of the run holds while it runs (conversion children too)."""
        return self._slots

    def wait(self) -> None:
        """Wait until every queued child is done (latency cells never run beside them)."""
        concurrent.futures.wait([f for _, f in self._futures])

    def collect(self) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
        """Wait for every queued child; the outputs of each variant (shards concatenated in order) and failures."""
        outputs: dict[str, dict[str, np.ndarray]] = {}
        failures: dict[str, str] = {}
        try:
            for name, fut in self._futures:
                part = fut.result()
                if isinstance(part, str):
                    failures.setdefault(name, part)
                elif name not in failures:
                    outputs.setdefault(name, {})
                    for k, arr in part.items():  # shards come back in order: concatenate along the sample axis
                        prev = outputs[name].get(k)
                        outputs[name][k] = arr if prev is None else np.concatenate([prev, arr])
        finally:
            self.close()
        for name in failures:
            outputs.pop(name, None)
        return outputs, failures


def evaluate_variants(variants: Sequence[VariantResult], data: EvalInputs, *, reference: str, backend: str, threads: int,
                      on_gpu: bool, timeout_s: float, mem_mb: int | None, work: Path,
                      say: Callable[[str], None], htp_socs: Sequence[str] = (),
                      htp_samples: int = 200, phones: Sequence[str] = (),
                      arm_backends: Sequence[str] = (), jobs: int = 1,
                      stages: Stages | None = None, started: OutputJobs | None = None) -> list[VariantResult]:
    """The task metric of every built variant on ``backend`` (and, when ``on_gpu``, on LiteRT's GPU delegate; for
    each of ``htp_socs``, on that Snapdragon's emulated HTP; for each of ``arm_backends``, on aarch64 LiteRT under
    QEMU), each run in a child process, with its delta to the ``reference`` variant. The emulators run the first
    ``htp_samples`` samples (they are slow), scored against the same samples of the reference. The variants'
    evaluation runs in ``jobs`` children at a time, each variant's samples split into ``jobs`` shards
    (:class:`OutputJobs`; ``started``: the one the run already gave its variants to as they were built); ``stages``
    receives each variant's summed child time (``eval:NAME``)."""
    task = data.task
    if data.inputs_npz is None:
        res = AccuracyResult(task=task, metric="accuracy", value=None, backend=backend, n_samples=0,
                             status=Status.NOT_RUN, reason="no evaluation data configured (data.eval)")
        return [dataclasses.replace(v, accuracy=(res,)) if v.status is Status.OK else v for v in variants]
    if started is None:
        started = OutputJobs(data, backend=backend, threads=threads, timeout_s=timeout_s, mem_mb=mem_mb, work=work,
                             say=say, jobs=jobs, stages=stages)
    for v in variants:  # those not started yet
        started.submit(v)
    outputs, failures = started.collect()
    ref = outputs.get(reference)
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
        gpu_row = _gpu_accuracy(v, data, ref, ref_value, threads=threads, timeout_s=timeout_s, mem_mb=mem_mb, say=say) if on_gpu else ()
        htp_rows = tuple(_htp_accuracy(v, data, ref, soc, samples=htp_samples, timeout_s=timeout_s, mem_mb=mem_mb,
                                       work=work, say=say) for soc in htp_socs)
        phone_rows = tuple(_phone_accuracy(v, data, ref, phone, timeout_s=timeout_s, say=say)
                           for phone in phones)
        arm_rows = tuple(_arm_accuracy(v, data, ref, outputs.get(v.name), backend=b, samples=htp_samples,
                                       timeout_s=timeout_s, mem_mb=mem_mb, say=say) for b in arm_backends)
        out.append(dataclasses.replace(v, accuracy=(res,) + gpu_row + htp_rows + arm_rows + phone_rows))
    return out


def _gpu_accuracy(v: VariantResult, data: EvalInputs, ref: dict[str, np.ndarray] | None, ref_value: float | None, *,
                  threads: int, timeout_s: float, mem_mb: int | None,
                  say: Callable[[str], None]) -> tuple[AccuracyResult, ...]:
    """The task metric on LiteRT's GPU delegate (fp16 arithmetic), its own row, when ``gpu`` is benchmarked here."""
    task = data.task
    if task is Task.TEXT_GENERATION or v.artifact is None or data.inputs_npz is None:
        return ()
    reason = why_not_runnable("gpu")
    if reason:
        return (AccuracyResult(task=task, metric="accuracy", value=None, backend="gpu", n_samples=0,
                               status=Status.NOT_RUN, reason=reason),)

    say(f"eval: {v.name} on the GPU delegate")
    try:
        run = run_gpu(v.artifact.path, inputs=data.inputs_npz, threads=threads, timeout_s=timeout_s, mem_mb=mem_mb)
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


def _shards(n: int, jobs: int) -> list[tuple[int | None, int | None]]:
    """``[start, stop)`` of each evaluation shard: ``jobs`` contiguous slices of the ``n`` samples (one slice, the
    whole set, when ``jobs`` is 1), so one slow variant (int16x8 on reference kernels) is spread over the children."""
    if jobs <= 1 or n < 2 * jobs:
        return [(None, None)]
    bounds = np.linspace(0, n, jobs + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def htp_row_name(soc: str) -> str:
    """The backend name of an accuracy row measured on QNN's HTP emulator (never a latency)."""
    return f"qnn:{soc} (emulated HTP)"


def _unscored(data: EvalInputs, backend: str, status: Status, reason: str) -> AccuracyResult:
    """An accuracy row with no value: not run here, failed or timed out, and why."""
    return AccuracyResult(task=data.task, metric="accuracy", value=None, backend=backend, n_samples=0, status=status,
                          reason=reason)


def _refusal(v: VariantResult, data: EvalInputs, backend: str, generator_reason: str, *,
             registered: bool = True) -> AccuracyResult | None:
    """The row of a variant another backend cannot score (a generator; no evaluation data; a ``registered``
    backend that cannot run here), else None."""
    if data.task is Task.TEXT_GENERATION:
        return _unscored(data, backend, Status.NOT_RUN, generator_reason)
    if v.artifact is None or data.inputs_npz is None:
        return _unscored(data, backend, Status.NOT_RUN, "no evaluation data")
    if registered and (reason := why_not_runnable(backend)):
        return _unscored(data, backend, Status.NOT_RUN, reason)
    return None


def _scored_first(data: EvalInputs, backend: str, outputs: Mapping[str, np.ndarray],
                  ref: Mapping[str, np.ndarray] | None, n: int, extra: Mapping[str, float]) -> AccuracyResult:
    """The row of outputs for the first ``n`` evaluation samples, scored against the reference on the same ``n``."""
    ref_n = None if ref is None else {k: a[:n] for k, a in ref.items()}
    labels = None if data.labels is None else data.labels[:n]
    metric, value, scores = summarize_task(data.task.value, outputs, ref_n, labels, data.windows)
    ref_value = None if ref_n is None else summarize_task(data.task.value, ref_n, ref_n, labels, data.windows)[1]
    return AccuracyResult(task=data.task, metric=metric, value=value, backend=backend, n_samples=n,
                          reference=ref_value, delta=None if ref_value is None else value - ref_value,
                          extra={**scores, **extra})


def _htp_accuracy(v: VariantResult, data: EvalInputs, ref: dict[str, np.ndarray] | None, soc: str, *, samples: int,
                  timeout_s: float, mem_mb: int | None, work: Path, say: Callable[[str], None]) -> AccuracyResult:
    """The task metric with the variant compiled for ``soc``'s HTP and run on QNN's HTP emulator, its own row.

    Its delta and agreement are against the reference variant on the CPU over the same (first ``samples``) inputs.
    """
    name = htp_row_name(soc)
    if refused := _refusal(v, data, name, "the emulated HTP runs one-signature models; a generator's prefill and "
                                          "decode are two", registered=False):
        return refused
    assert v.artifact is not None and data.inputs_npz is not None
    n = min(samples, data.n)
    inputs = work / f"htp-inputs-{n}.npz"
    if not inputs.is_file():
        with np.load(data.inputs_npz) as arrays:
            save_npz(inputs, {k: arrays[k][:n] for k in arrays.files})
    say(f"eval: {v.name} on the emulated HTP of {soc} ({n} samples)")
    run = htp.emulate(v.artifact.path, soc, inputs, timeout_s=timeout_s, mem_mb=mem_mb)
    if run.outputs is None:
        return _unscored(data, name, Status(run.status), run.reason)
    return _scored_first(data, name, run.outputs, ref, n,
                         {"emulated": 1.0, "compile_s": float(run.compile.get("seconds", 0.0))})


def _arm_accuracy(v: VariantResult, data: EvalInputs, ref: dict[str, np.ndarray] | None,
                  x86: dict[str, np.ndarray] | None, *, backend: str, samples: int, timeout_s: float,
                  mem_mb: int | None, say: Callable[[str], None]) -> AccuracyResult:
    """The task metric on ARM kernels (aarch64 LiteRT under QEMU, ``backend`` = ``arm64-emu[?kernels=...]``), its
    own row: delta and agreement against the reference variant on the CPU over the same (first ``samples``) inputs,
    and ``max_abs_diff_vs_x86``, the largest difference to the same variant's outputs on this machine's CPU."""
    if refused := _refusal(v, data, backend, "arm64-emu scores one-signature models; a generator's prefill and "
                                             "decode are two"):
        return refused
    assert v.artifact is not None and data.inputs_npz is not None
    n = min(samples, data.n)
    say(f"eval: {v.name} on {backend} ({n} samples, emulated)")
    try:
        run = arm.run_arm(v.artifact.path, data.inputs_npz, backend, samples=n, timeout_s=timeout_s, mem_mb=mem_mb)
    except LitegateError as exc:
        return _unscored(data, backend, Status.FAILED, exc.message)
    extra = {"instructions_per_inference": float(run.per_inference)}
    diffs = [float(np.max(np.abs(run.outputs[k] - x86[k][:n]))) for k in run.outputs if x86 is not None and k in x86]
    if diffs:
        extra["max_abs_diff_vs_x86"] = max(diffs)
    return _scored_first(data, backend, run.outputs, ref, n, extra)


def _phone_accuracy(v: VariantResult, data: EvalInputs, ref: dict[str, np.ndarray] | None, backend: str, *,
                    timeout_s: float, say: Callable[[str], None]) -> AccuracyResult:
    """The task metric with every evaluation sample run on a real phone through Qualcomm AI Hub, its own row."""
    if refused := _refusal(v, data, backend, "a generator is scored through its prefill signature; AI Hub runs "
                                             "the first one"):
        return refused
    assert v.artifact is not None and data.inputs_npz is not None
    say(f"eval: {v.name} on {backend}")
    try:
        outputs = _phone_outputs(v.artifact.path, data.inputs_npz, data.n, backend, timeout_s=timeout_s)
    except aihub.AihubJobError as exc:
        return _unscored(data, backend, exc.status, exc.message)
    except LitegateError as exc:
        return _unscored(data, backend, Status.FAILED, exc.message)
    except (ValueError, OSError) as exc:
        return _unscored(data, backend, Status.FAILED, f"{backend}: {exc}")
    return _scored_first(data, backend, outputs, ref, data.n, {})


def _phone_outputs(path: str, inputs_npz: Path, n: int, backend: str, *, timeout_s: float) -> dict[str, np.ndarray]:
    """Every sample of ``inputs_npz`` run on the phone, (de)quantized like the CPU's and keyed by signature name.

    Inputs go in the model's input order and outputs come back in its output order (AI Hub names the tensors, not
    the signature's keys)."""
    runner = Runner(path, backend="cpu")  # the signature's (de)quantization, applied around the phone
    model = load_model(path)
    in_order = {t: i for i, t in enumerate(model.subgraph_inputs[0])}
    out_order = {t: i for i, t in enumerate(model.subgraph_outputs[0])}
    names = sorted(runner.inputs, key=lambda k: in_order.get(runner.inputs[k]["index"], len(in_order)))
    outs = sorted(runner.outputs, key=lambda k: out_order.get(runner.outputs[k]["index"], len(out_order)))
    with np.load(inputs_npz) as arrays:
        feeds = {k: arrays[k] for k in arrays.files}
    prepared = [runner.prepare({k: a[i:i + 1] for k, a in feeds.items()}) for i in range(n)]
    raw = aihub.run_outputs(path, {k: np.concatenate([p[k] for p in prepared]) for k in names}, backend,
                            timeout_s=timeout_s)
    if len(raw) != len(outs):
        raise ValueError(f"the phone returned {len(raw)} outputs ({', '.join(raw)}); the model has {len(outs)}")
    return runner.dequantize(dict(zip(outs, raw.values(), strict=True)))

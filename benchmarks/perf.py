"""``make perf``: litegate's own performance, measured, written to ``reports/perf.json``.

* ``harness_overhead``: litegate's latency median against a bare ``interpreter.invoke()`` loop on
  the same model in the same process, interleaved in blocks so drift hits both equally.
* ``stability``: coefficient of variation of p50 over 5 repeated measurements of one cell, each
  in its own child process, the way the pipeline measures.
* ``pipeline``: wall time of ``litegate run`` for the embedded default and MiniLM (convert + 4 PTQ
  variants + static checks + CPU bench + report), cold (empty cache) and warm.
* ``peers``: the same MiniLM as a TensorFlow ``tf.function``, the TFLite variants on XNNPACK, and
  ONNX Runtime when installed (``pip install -e '.[peers]'``; model from ``scripts/export_onnx.py``),
  as ratios to TFLite fp32 at 1 thread, all from this run.

Every figure printed comes from this run; anything that could not run says why.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from litegate.benchmarks.latency import summarize

from litegate.artifacts import atomic_write_text, save_npz
from litegate.errors import LitegateError
from litegate.isolation import run_isolated

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def overhead_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: interleave blocks of litegate's timed call and a bare invoke() loop on the same interpreter."""
    from litegate.benchmarks.latency import measure
    from litegate.delegates.runtime import Runner

    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    runner = Runner(payload["path"], backend="xnnpack", threads=int(payload["threads"]))
    feeds = [runner.prepare({k: v[i : i + 1] for k, v in arrays.items()}) for i in range(len(arrays["input_ids"]))]
    interp = runner.interpreter
    details = {d["name"]: d for d in interp.get_input_details()}
    ordered = []
    for f in feeds:  # the same inputs, set by tensor index for the bare loop
        ordered.append([(d["index"], f[_match(name, f)]) for name, d in details.items()])
    lite: list[float] = []
    bare: list[float] = []
    block = int(payload.get("block", 50))
    for _ in range(int(payload.get("blocks", 10))):
        _, s = measure(runner.invoke, feeds, {"warmup_runs": 3, "min_runs": block, "min_seconds": 0, "max_runs": block})
        lite += s
        for i in range(3 + block):
            for idx, val in ordered[i % len(ordered)]:
                interp.set_tensor(idx, val)
            t = time.perf_counter()
            interp.invoke()
            if i >= 3:
                bare.append((time.perf_counter() - t) * 1e3)
    return {"litegate_ms": lite, "bare_ms": bare}


def _match(tensor_name: str, feed: dict[str, np.ndarray]) -> str:
    base = tensor_name.split(":")[0].removeprefix("serving_default_")
    if base in feed:
        return base
    return next(k for k in feed if k in base)


def tf_function_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: latency of the float TF model (``tf.function``) with a given thread count."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    threads = int(payload["threads"])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from litegate.converter.sources import load

    from litegate.types import ModelSource

    loaded = load(ModelSource.from_dict(payload["source"]), int(payload["seq_len"]))
    with np.load(payload["inputs_npz"]) as data:
        x = {k: tf.constant(data[k][:1]) for k in ("input_ids", "attention_mask")}
    fn = loaded.serve.get_concrete_function()
    for _ in range(5):
        fn(**x)
    samples = []
    t_end = time.perf_counter() + float(payload.get("seconds", 3.0))
    while time.perf_counter() < t_end or len(samples) < 10:
        t = time.perf_counter()
        fn(**x)
        samples.append((time.perf_counter() - t) * 1e3)
    return {"samples_ms": samples}


def _run(cmd: list[str]) -> tuple[int, float, str]:
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return r.returncode, time.monotonic() - t, r.stderr[-600:]


def pipeline_times(config: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "litegate", "run", str(config), "--output", str(out), "-q"]
    rc1, cold, err1 = _run(cmd)
    rc2, warm, err2 = _run(cmd)
    res: dict[str, Any] = {"config": str(config.relative_to(ROOT)), "cold_s": round(cold, 1), "warm_s": round(warm, 1),
                           "exit_codes": [rc1, rc2]}
    if rc1 not in (0, 1) or rc2 not in (0, 1):
        res["error"] = (err1 or err2).strip().splitlines()[-1:]
    return res


def main() -> int:
    from litegate.benchmarks.peak import measure_peak

    from litegate.api import convert_model
    from litegate.tasks import TextEncoder, read_texts
    from litegate.types import ModelSource, SourceKind, Task

    report: dict[str, Any] = {"machine": __import__("litegate.machine", fromlist=["describe"]).describe()}
    work = ROOT / "reports" / "perf"
    work.mkdir(parents=True, exist_ok=True)
    have_minilm = (MINILM / "model.safetensors").is_file()
    model_dir = MINILM if have_minilm else ROOT / "examples" / "demo" / "model"
    head, task, seq = ("mean", Task.SENTENCE_EMBEDDING, 128) if have_minilm else ("classification", Task.TEXT_CLASSIFICATION, 64)
    report["model"] = {"path": str(model_dir.relative_to(ROOT)), "seq_len": seq,
                       "note": "" if have_minilm else "MiniLM absent (run `make models`): measured on the embedded default"}
    source = ModelSource(kind=SourceKind.HF_BERT, path=str(model_dir), task=task, options={"head": head})
    text_file = SST2 / "dev.tsv" if SST2.is_dir() else ROOT / "examples" / "demo" / "eval.tsv"
    inputs = work / "inputs.npz"
    save_npz(inputs, TextEncoder(model_dir / "tokenizer.json", seq).encode(read_texts(text_file, limit=32)))

    print("peak: sgemm probe", flush=True)
    report["machine_peak"] = measure_peak([1, 2])

    variants: dict[str, Path] = {}
    for recipe in ("fp32", "dynamic-int8", "fp16"):
        path = work / f"{recipe}.tflite"
        t = time.monotonic()
        convert_model(source, path, seq_len=seq, recipe=recipe)
        variants[recipe] = path
        print(f"convert {recipe}: {time.monotonic() - t:.1f} s", flush=True)

    print("harness overhead", flush=True)
    res = run_isolated("litegate.benchmarks.perf:overhead_job",
                       {"path": str(variants["fp32"]), "threads": 2, "inputs_npz": str(inputs)}, timeout_s=900)
    lite, bare = statistics.median(res["litegate_ms"]), statistics.median(res["bare_ms"])
    report["harness_overhead"] = {"litegate_median_ms": round(lite, 4), "bare_invoke_median_ms": round(bare, 4),
                                  "overhead_pct": round((lite / bare - 1) * 100, 2), "target_pct": 2.0,
                                  "samples": [len(res["litegate_ms"]), len(res["bare_ms"])], "threads": 2}

    print("stability: 5 repeated cells", flush=True)
    from litegate.benchmarks.matrix import run_cell

    p50s = []
    for _ in range(5):
        cell = run_cell(path=variants["fp32"], sha256="0" * 64, variant="fp32", backend="xnnpack", threads=2,
                        inputs_npz=inputs, protocol={"warmup_runs": 10, "min_runs": 50, "min_seconds": 1.0},
                        timeout_s=600)
        if cell.latency:
            p50s.append(cell.latency.p50)
    cv = statistics.pstdev(p50s) / statistics.mean(p50s) * 100 if len(p50s) > 1 else None
    report["stability"] = {"p50_ms": [round(p, 4) for p in p50s], "cv_pct": None if cv is None else round(cv, 2),
                           "target_pct": 3.0}

    print("peers", flush=True)
    peers: dict[str, Any] = {}
    for name, path in variants.items():
        for threads in (1, 2):
            cell = run_cell(path=path, sha256="0" * 64, variant=name, backend="xnnpack", threads=threads,
                            inputs_npz=inputs, protocol={"warmup_runs": 10, "min_runs": 50, "min_seconds": 2.0},
                            timeout_s=600)
            if cell.latency:
                peers[f"tflite {name} x{threads}"] = round(cell.latency.p50, 3)
    for threads in (1, 2):
        try:
            r = run_isolated("litegate.benchmarks.perf:tf_function_job",
                             {"source": source.to_dict(), "seq_len": seq, "threads": threads, "inputs_npz": str(inputs)},
                             timeout_s=600)
            peers[f"tf.function fp32 x{threads}"] = round(summarize(r["samples_ms"]).p50, 3)
        except LitegateError as exc:
            peers[f"tf.function fp32 x{threads}"] = f"not run: {exc.message}"
    peers.update(onnxruntime_peers(model_dir, inputs))
    base = peers.get("tflite fp32 x1")
    report["peers"] = {"p50_ms": peers,
                       "ratio_to_tflite_fp32_x1": {k: round(v / base, 3) for k, v in peers.items()
                                                   if isinstance(v, float) and isinstance(base, float)}}

    print("pipeline wall time", flush=True)
    pipes = {"demo": pipeline_times(ROOT / "examples" / "demo" / "perf.toml", work / "pipeline-demo")}
    if have_minilm and SST2.is_dir():
        pipes["minilm"] = pipeline_times(ROOT / "examples" / "minilm-sst2" / "perf.toml", work / "pipeline-minilm")
        pipes["minilm"]["targets_s"] = {"cold": 300, "warm": 30}
    else:
        pipes["minilm"] = {"not_run": "needs `make models` and ../shared/data/sst2"}
    report["pipeline"] = pipes

    atomic_write_text(ROOT / "reports" / "perf.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("harness_overhead", "stability", "peers", "pipeline")}, indent=2))
    print(f"wrote {ROOT / 'reports' / 'perf.json'}")
    return 0


def onnxruntime_peers(model_dir: Path, inputs: Path) -> dict[str, Any]:
    """ONNX Runtime on the same weights, when installed and exported (scripts/export_onnx.py)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"onnxruntime": "not run: onnxruntime is not installed (pip install -e '.[peers]')"}
    onnx_dir = ROOT / "reports" / "perf" / "onnx"
    script = ROOT / "scripts" / "export_onnx.py"
    if not script.is_file():
        return {"onnxruntime": "not run: scripts/export_onnx.py is missing"}
    r = subprocess.run([sys.executable, str(script), "--model", str(model_dir), "--out", str(onnx_dir),
                        "--inputs", str(inputs), "--json"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        return {"onnxruntime": f"not run: export failed: {r.stderr.strip().splitlines()[-1:] }"}
    return {k: v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


if __name__ == "__main__":
    sys.exit(main())

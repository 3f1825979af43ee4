"""litegate's quantized variants beside Google's ``litert-quantizer`` on the same fp32 MiniLM, in one run.

``make quantizer-compare`` (and ``make perf``, as ``quantizer_comparison`` in ``reports/perf.json``):

* litegate's side is one ``litegate run examples/minilm-sst2/embeddings.toml`` (fp32, dynamic-int8, int8, int8-qat,
  int16x8, auto; calibrated on the first 200 SST-2 train sentences; its output folder's cache makes a second run quick);
* litert-quantizer quantizes that run's ``fp32.tflite`` with its ``dynamic_wi8_afp32``, ``static_wi8_ai8`` and
  ``static_wi8_ai16`` recipes, calibrated on the same 200 sentences, encoded by the same tokenizer;
* every file's embeddings of the first 200 SST-2 dev sentences are compared with ``fp32.tflite``'s (cosine mean and
  min), its size is read from disk, and its latency is a paired ratio to litegate's ``dynamic-int8`` at 1 and 2
  threads (:mod:`litegate.benchmarks.paired`: both models in one child, alternating blocks; median of the rounds'
  ratios).

Each litegate row is set against its litert-quantizer counterpart (same weight and activation types) and the report
says, per fidelity column, whether litegate's is at least as good. Without ``litert-quantizer`` (the ``peers`` extra)
or MiniLM (``make models``) the result says ``not_run`` and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import atomic_write_text, save_npz
from litegate.benchmarks.paired import PairedProtocol, remeasure
from litegate.errors import LitegateError
from litegate.tasks import TextEncoder, cosine, read_texts
from tools.isolated import run_tool_job

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "minilm-sst2" / "embeddings.toml"
MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
RUN_DIR = ROOT / "reports" / "minilm-embeddings"  # embeddings.toml's [output] dir
SST2 = ROOT.parent / "shared" / "data" / "sst2"
SAMPLES = 200  # calibration sentences (embeddings.toml's calibration_samples) and evaluation sentences
OURS = ("dynamic-int8", "int8", "int8-qat", "int16x8", "auto")
THEIRS = ("dynamic_wi8_afp32", "static_wi8_ai8", "static_wi8_ai16")
COUNTERPART = {"dynamic-int8": "dynamic_wi8_afp32", "int8": "static_wi8_ai8", "int8-qat": "static_wi8_ai8",
               "int16x8": "static_wi8_ai16"}
PROTOCOL = PairedProtocol(rounds=9, block=5, warmup=1)
REFERENCE = "dynamic-int8"


def litert_quantize_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child: quantize ``src`` with litert-quantizer's recipe ``recipe`` (calibrated on ``calibration_npz`` rows)."""
    import litert_quantizer
    from litert_quantizer import quantizer
    from litert_quantizer import recipe as recipes

    q = quantizer.Quantizer(payload["src"], getattr(recipes, payload["recipe"])())
    result = None
    if q.need_calibration:
        with np.load(payload["calibration_npz"]) as data:
            arrays = {k: data[k] for k in data.files}
        rows = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]
        result = q.calibrate({"serving_default": rows}, num_threads=2)
    out = q.quantize(result, enable_progress_report=False)
    Path(payload["out"]).write_bytes(out.quantized_model)
    return {"bytes": len(out.quantized_model), "version": getattr(litert_quantizer, "__version__", "unknown")}


def _encoded(path: Path, out: Path) -> Path:
    enc = TextEncoder(MINILM / "tokenizer.json", 128).encode(read_texts(path, limit=SAMPLES), source=path)
    save_npz(out, {k: enc[k] for k in ("input_ids", "attention_mask")})
    return out


def _embeddings(path: Path, inputs: Path, work: Path) -> np.ndarray:
    npy = work / f"{path.stem}.embeddings.npy"
    run_tool_job("tools.perf:tflite_outputs_job", {"path": str(path), "inputs_npz": str(inputs), "out_npy": str(npy)},
                 timeout_s=1800)
    return np.load(npy)


def _ratio(base: Path, new: Path, inputs: Path, threads: int) -> float | None:
    cell = remeasure(variant=new.stem, base_path=base, new_path=str(new), backend="xnnpack", threads=threads,
                     inputs_npz=inputs, signature=None, protocol=PROTOCOL, timeout_s=1800)
    if cell.reason:
        return None
    return round(float(np.median(np.asarray(cell.new_blocks) / np.asarray(cell.base_blocks))), 3)


def compare(work: Path) -> dict[str, Any]:
    """Run both quantizers and measure every file; the table and verdicts as a dict (``not_run`` when impossible)."""
    if not (MINILM / "model.safetensors").is_file() or not SST2.is_dir():
        return {"not_run": "needs MiniLM (`make models`) and ../shared/data/sst2"}
    try:
        import litert_quantizer  # noqa: F401
    except ImportError:
        return {"not_run": "litert-quantizer is not installed (pip install -e '.[peers]')"}
    work.mkdir(parents=True, exist_ok=True)
    # The config's own output folder (RUN_DIR): its conversion cache is reused from run to run. Exit 0 or 1 (the
    # gate's verdict) means this run wrote its report; any other exit leaves at most an earlier run's files there.
    proc = subprocess.run([sys.executable, "-m", "litegate", "run", str(CONFIG)], capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not (RUN_DIR / "report.json").is_file():
        return {"not_run": f"litegate run {CONFIG.name} wrote no report (exit {proc.returncode}): "
                           f"{(proc.stderr.strip().splitlines() or [''])[-1]}"}
    files = {f"litegate {v}": RUN_DIR / f"{v}.tflite" for v in OURS if (RUN_DIR / f"{v}.tflite").is_file()}
    fp32 = RUN_DIR / "fp32.tflite"
    calibration = _encoded(SST2 / "train.tsv", work / "calibration.npz")
    inputs = _encoded(SST2 / "dev.tsv", work / "inputs.npz")
    notes: dict[str, str] = {}
    version = "unknown"
    for recipe in THEIRS:
        out = work / f"lq-{recipe}.tflite"
        try:
            version = run_tool_job("tools.quantizer_compare:litert_quantize_job",
                                   {"src": str(fp32), "recipe": recipe, "out": str(out),
                                    "calibration_npz": str(calibration)}, timeout_s=3600)["version"]
            files[f"litert-quantizer {recipe}"] = out
        except LitegateError as exc:
            notes[f"litert-quantizer {recipe}"] = f"not run: {exc.message}"
    reference = _embeddings(fp32, inputs, work)
    base = files[f"litegate {REFERENCE}"]
    rows: dict[str, dict[str, Any]] = {}
    for label, path in files.items():
        cos = cosine(_embeddings(path, inputs, work), reference)
        rows[label] = {"cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
                       "mb": round(path.stat().st_size / 1e6, 2)}
        for threads in (1, 2):
            rows[label][f"latency_vs_{REFERENCE}_x{threads}"] = 1.0 if path == base else _ratio(base, path, inputs, threads)
    return {"model": str(MINILM.relative_to(ROOT)), "config": str(CONFIG.relative_to(ROOT)),
            "litert_quantizer_version": version, "sentences": SAMPLES, "reference": "fp32.tflite of the same run",
            "paired_protocol": PROTOCOL.to_dict(), "rows": rows, "litegate_at_least_as_good": verdicts(rows),
            "notes": notes, "table": table(rows)}


def verdicts(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per litegate recipe and its litert-quantizer counterpart: is litegate's fidelity at least as good, per column."""
    out = {}
    for ours, theirs in COUNTERPART.items():
        a, b = rows.get(f"litegate {ours}"), rows.get(f"litert-quantizer {theirs}")
        if a and b:
            out[f"{ours} vs {theirs}"] = {col: a[col] >= b[col] for col in ("cosine_mean", "cosine_min")}
    return out


def table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The comparison as Markdown lines."""
    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [f"| variant | cosine mean | cosine min | MB | time / {REFERENCE} ×1 | ×2 |", "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['mb']:.2f} | "
                     f"{fmt(r.get(f'latency_vs_{REFERENCE}_x1'))} | {fmt(r.get(f'latency_vs_{REFERENCE}_x2'))} |")
    return lines


def main() -> int:
    result = compare(ROOT / "reports" / "quantizer-compare")
    atomic_write_text(ROOT / "reports" / "quantizer-compare.json", json.dumps(result, indent=2) + "\n")
    if "not_run" in result:
        print(f"quantizer comparison not run: {result['not_run']}")
        return 0
    print("\n".join(result["table"]))
    for pair, ok in result["litegate_at_least_as_good"].items():
        print(f"{pair}: " + ", ".join(f"{col} {'yes' if v else 'NO'}" for col, v in ok.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Calibrate the latency gate on this machine: false alarms on identical models, detection of a 10% slowdown.

``make gate-calibration`` runs litegate's paired re-measurement (:mod:`litegate.benchmarks.paired`, what
``litegate run --baseline`` does when the baseline's model file is at hand) ``--pairs`` times on a model and a
byte-identical copy of it, and ``--pairs`` times on the model and the same model made ``--slowdown`` slower (the
candidate busy-waits that fraction of each of its own inferences: a simulated regression, labelled as such). Each
pair is judged exactly as the gate judges it (:func:`litegate.baseline.compare`, default threshold and confidence).

Targets (issue 17): at most 1 false alarm in 30 identical pairs, at least 95% of 10% slowdowns detected.

Usage: python -m tools.gate_calibration [--model M.tflite | --seq-len 64] [--pairs 30] [--slowdown 0.10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from litegate import machine
from litegate.artifacts import save_npz
from litegate.baseline import CompareConfig, paired_ratio
from litegate.benchmarks.paired import PairedProtocol, remeasure

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "model"


def _model(path: str | None, seq_len: int, work: Path) -> Path:
    """The model to calibrate on: ``--model``, else the embedded default converted at ``seq_len`` (fp32)."""
    if path:
        return Path(path)
    out = work / "fp32.tflite"
    subprocess.run([sys.executable, "-m", "litegate", "convert", str(DEMO), "--seq-len", str(seq_len), "-o", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--slowdown", type=float, default=0.10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interleave", choices=("block", "run"), default=None, help="default: the gate's")
    ap.add_argument("--seq-len", type=int, default=64, help="of the embedded default, when no --model is given")
    ap.add_argument("--out", default=str(ROOT / "reports" / "gate-calibration.json"))
    args = ap.parse_args()
    cfg = CompareConfig()
    protocol = PairedProtocol(rounds=cfg.paired_rounds)
    if args.interleave:
        protocol = dataclasses.replace(protocol, interleave=args.interleave)
    with tempfile.TemporaryDirectory(prefix="litegate-calibration-") as tmp:
        work = Path(tmp)
        model = _model(args.model, args.seq_len, work)
        copy = work / "baseline" / model.name
        copy.parent.mkdir()
        shutil.copy(model, copy)
        ids = np.random.default_rng(0).integers(5, 100, size=(16, 512)).astype(np.int32)  # cut to the model's length
        npz = work / "inputs.npz"
        save_npz(npz, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        results: dict[str, list[dict[str, float]]] = {"identical": [], "slower": []}
        t0 = time.monotonic()
        for i in range(args.pairs):
            for kind, slowdown in (("identical", 0.0), ("slower", args.slowdown)):
                pc = remeasure(variant="m", base_path=copy, new_path=str(model), backend="xnnpack",
                               threads=args.threads, inputs_npz=npz, signature=None,
                               protocol=PairedProtocol(**{**protocol.to_dict(), "seed": i}), timeout_s=600,
                               slowdown=slowdown)
                if pc.reason:
                    print(f"pair {i} ({kind}): {pc.reason}", file=sys.stderr)
                    return 2
                r, lo, hi = paired_ratio(pc.base_blocks, pc.new_blocks, confidence=cfg.confidence,
                                         resamples=cfg.resamples, seed=cfg.seed)
                results[kind].append({"ratio": r, "low": lo, "high": hi, "regressed": lo > 1 + cfg.threshold,
                                      "base_ms": float(np.median(pc.base_blocks))})
            print(f"pair {i + 1}/{args.pairs}: identical {results['identical'][-1]['ratio']:.3f}, "
                  f"slower {results['slower'][-1]['ratio']:.3f} ({time.monotonic() - t0:.0f} s)", flush=True)
    alarms = sum(r["regressed"] for r in results["identical"])
    detected = sum(r["regressed"] for r in results["slower"])
    ident = np.array([r["ratio"] for r in results["identical"]])
    slow = np.array([r["ratio"] for r in results["slower"]])
    summary = {
        "model": str(args.model or f"embedded default, fp32, seq {args.seq_len}"), "threads": args.threads, "pairs": args.pairs,
        "slowdown": args.slowdown, "slowdown_kind": "simulated: the candidate busy-waits that fraction of each inference",
        "protocol": protocol.to_dict(), "threshold": cfg.threshold, "confidence": cfg.confidence,
        "false_alarms": int(alarms), "detected": int(detected), "machine": machine.describe(),
        "identical_ratio": {"median": float(np.median(ident)), "min": float(ident.min()), "max": float(ident.max())},
        "slower_ratio": {"median": float(np.median(slow)), "min": float(slow.min()), "max": float(slow.max())},
        "base_ms_median": float(np.median([r["base_ms"] for r in results["identical"]])),
        "wall_s": round(time.monotonic() - t0, 1), "pairs_detail": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    ok = alarms <= args.pairs / 30 and detected >= 0.95 * args.pairs
    print(f"false alarms on identical models: {alarms}/{args.pairs} (target <= {args.pairs / 30:g}); "
          f"{args.slowdown * 100:g}% slowdowns (simulated) detected: {detected}/{args.pairs} (target >= 95%); "
          f"identical ratio median {summary['identical_ratio']['median']:.4f} "
          f"[{summary['identical_ratio']['min']:.4f} .. {summary['identical_ratio']['max']:.4f}], slower ratio median "
          f"{summary['slower_ratio']['median']:.4f}; {summary['wall_s']} s -> {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

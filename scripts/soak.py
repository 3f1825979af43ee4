"""Soak test (``make soak``, not in CI): many consecutive ``bench`` runs of the embedded model, each
cell in its own child process, then check that nothing leaked: processes, file descriptors,
temporary files. Prints the counts it checked; exits 1 on any leak or failed run.

    python scripts/soak.py --runs 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def isolation_processes() -> list[str]:
    """litegate child processes started by this soak (they carry its private TMPDIR)."""
    mine = f"TMPDIR={os.environ.get('TMPDIR', '')}".encode()
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    out = []
    for ln in ps.splitlines():
        if "litegate.isolation" not in ln:
            continue
        try:
            env = Path(f"/proc/{ln.split()[0]}/environ").read_bytes()
        except OSError:
            continue
        if mine in env.split(b"\0"):
            out.append(ln.strip())
    return out


def temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--model", default=str(ROOT / "reports" / "soak" / "fp32.tflite"))
    args = ap.parse_args()

    # A private temp dir: every child inherits it, so leftovers are ours alone (not other processes').
    private = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = str(private)

    from litegate.api import bench_model

    model = Path(args.model)
    if not model.is_file():
        model.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "litegate", "convert", str(ROOT / "examples/demo/model"),
                            "--seq-len", "64", "-o", str(model)], cwd=ROOT)
        if r.returncode:
            return r.returncode
    fds_before = len(os.listdir("/proc/self/fd"))
    temps_before = temp_entries()
    procs_before = len(isolation_processes())
    t0 = time.monotonic()
    failed = 0
    for i in range(args.runs):
        cells = bench_model(model, text=ROOT / "examples/demo/eval.tsv", backends=["xnnpack"], threads=[1],
                            protocol={"warmup_runs": 2, "min_runs": 20, "min_seconds": 0.0, "max_runs": 20})
        failed += sum(1 for c in cells if c.status.value != "ok")
        if (i + 1) % 50 == 0:
            print(f"{i + 1} runs, {time.monotonic() - t0:.0f} s, open fds {len(os.listdir('/proc/self/fd'))}", flush=True)
    fds_after = len(os.listdir("/proc/self/fd"))
    leaked_children = children(os.getpid())
    leaked_procs = len(isolation_processes()) - procs_before
    leaked_temps = sorted(temp_entries() - temps_before)
    print(f"runs: {args.runs} (child processes: {args.runs}), failed cells: {failed}")
    print(f"file descriptors: {fds_before} before, {fds_after} after")
    print(f"child processes still alive: {len(leaked_children)}; litegate.isolation processes leaked: {leaked_procs}")
    print(f"temp files/dirs leaked (private TMPDIR {private}): {len(leaked_temps)} {leaked_temps[:5]}")
    print(f"wall: {time.monotonic() - t0:.0f} s")
    ok = failed == 0 and fds_after <= fds_before and not leaked_children and leaked_procs <= 0 and not leaked_temps
    print("soak: PASS" if ok else "soak: FAIL")
    if ok:
        private.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

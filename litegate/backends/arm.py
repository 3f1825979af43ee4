"""The ``arm64-emu`` backend: a variant run by aarch64 LiteRT under QEMU user-mode emulation, on this machine.

``arm64-emu[?kernels=xnnpack|builtin]`` runs the variant with the aarch64 build of LiteRT (``ai_edge_litert``, the
same version as here) inside an arm64 Debian root, through the dynamic ``qemu-aarch64`` with a pinned Cortex-A76
(its ``/proc/cpuinfo`` and CPU features fixed, one thread), so ARM's XNNPACK kernels (``kernels=xnnpack``, the
default) or LiteRT's builtin kernels (``kernels=builtin``) compute the outputs. ``make arm-sim`` (root) sets it up
under ``$LITEGATE_ARM_ROOT`` (default ``/opt/litegate-arm64``) and writes a ``ready`` file this module reads.

What it measures: the outputs (accuracy and fidelity on ARM kernels, and their difference to the same variant's x86
outputs), and **guest instructions per inference**, counted by litegate's own TCG plugin
(``scripts/arm_sim/insn_count.c``) between marker system calls the guest makes around each ``Invoke``
(:mod:`litegate.backends.arm_guest`). The count is a property of the code executed, not of this machine's load, so
two runs agree to within a few instructions. What it never measures: latency. Emulated wall time is 200-2000x a
phone's and follows the host, so no time is reported for this backend.

The inputs are prepared (quantized, shaped) and the outputs dequantized here by the x86 LiteRT's signature
details (:class:`litegate.backends.runtime.Runner`), so both architectures see identical tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import save_npz
from litegate.backends.runtime import Runner
from litegate.backends.spec import ARM_EMU, is_arm_backend, parse_options
from litegate.errors import BenchmarkError
from litegate.isolation import run_isolated

NAME = ARM_EMU
FORM = f"{NAME}[?kernels=xnnpack|builtin]"
ROOT_ENV = "LITEGATE_ARM_ROOT"
DEFAULT_HOME = Path("/opt/litegate-arm64")
KERNELS = ("xnnpack", "builtin")
SOURCE = "qemu-aarch64 TCG instruction count"
SETUP = "run `make arm-sim` (root) to build it"
GUEST = Path(__file__).with_name("arm_guest.py")
NO_LATENCY = "emulated Arm CPU (QEMU): instructions per inference are counted; emulated time is no latency"


def parse_backend(backend: str) -> str:
    """The kernels (``xnnpack`` or ``builtin``) of an ``arm64-emu[?kernels=...]`` backend.

    Raises:
        ValueError: not of that form; the message says what is wrong.
    """
    if not is_arm_backend(backend):
        raise ValueError(f"{backend!r} is not an {FORM} backend")
    options = parse_options(backend, backend[len(NAME) + 1:], "option")
    unknown = sorted(set(options) - {"kernels"})
    if unknown:
        raise ValueError(f"{backend!r}: unknown option {unknown[0]!r} (takes kernels=xnnpack|builtin)")
    kernels = options.get("kernels", "xnnpack")
    if kernels not in KERNELS:
        raise ValueError(f"{backend!r}: kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    return kernels


def home() -> Path:
    """Where ``make arm-sim`` builds the arm64 root and the plugin (``$LITEGATE_ARM_ROOT``)."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_HOME)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What ``make arm-sim`` installed, from its ``ready`` file."""

    home: Path
    qemu: str
    python: str  # the guest's interpreter, a path inside the root
    site: str  # the guest's aarch64 packages, a path inside the root
    plugin: str
    cpu: str
    litert: str

    @property
    def root(self) -> Path:
        return self.home / "rootfs"


def read_setup() -> tuple[Setup | None, str]:
    """The installed set-up, or None and why there is none (or why it cannot run)."""
    where = home()
    ready = where / "ready"
    if not ready.is_file():
        return None, f"arm64 root not set up at {where}: {SETUP}"
    fields = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
    try:
        setup = Setup(home=where, qemu=fields["qemu"], python=fields["python"], site=fields["site"],
                      plugin=fields["plugin"], cpu=fields["cpu"], litert=fields["litert"])
    except KeyError as exc:
        return None, f"{ready} lacks {exc.args[0]!r}: {SETUP} again"
    for what, path in (("qemu-aarch64", Path(setup.qemu)), ("the instruction-count plugin", Path(setup.plugin)),
                       ("the guest's python", setup.root / setup.python.lstrip("/")),
                       ("the guest's LiteRT", setup.root / setup.site.lstrip("/") / "ai_edge_litert")):
        if not path.exists():
            return None, f"{what} ({path}) is missing: {SETUP} again"
    return setup, ""


def why_not_runnable(backend: str) -> str | None:
    """None if ``backend`` can run here, else why not (bad syntax, or the arm64 root is not set up)."""
    try:
        parse_backend(backend)
    except ValueError as exc:
        return str(exc)
    return read_setup()[1] or None


@dataclasses.dataclass(frozen=True)
class ArmRun:
    """One emulated run: dequantized outputs stacked per sample, and the instructions of each inference."""

    outputs: dict[str, np.ndarray]
    instructions: tuple[int, ...]
    kernels: str
    cpu: str
    litert: str
    emulator_s: float  # the emulator's wall time: what the run cost here, never a latency

    @property
    def n_inputs(self) -> int:
        return len(self.instructions)

    @property
    def per_inference(self) -> int:
        """Instructions per inference: the median over the samples (they agree within a few instructions)."""
        return int(np.median(self.instructions))

    def protocol(self) -> dict[str, Any]:
        """What a bench cell records of the run: the counts and what they were counted on."""
        counts = self.instructions
        return {"source": SOURCE, "kernels": self.kernels, "cpu": self.cpu, "litert": self.litert, "threads_run": 1,
                "n_inputs": self.n_inputs, "instructions_per_invoke": list(counts),
                "instructions_spread": (max(counts) - min(counts)) / max(1, self.per_inference),
                "latency_emulated": True, "emulator_wall_s": round(self.emulator_s, 2)}


def run_arm(path: str | Path, inputs_npz: str | Path, backend: str = NAME, *, samples: int | None = None,
            signature: str | None = None, timeout_s: float, mem_mb: int | None = None) -> ArmRun:
    """Run the first ``samples`` (default: all) rows of ``inputs_npz`` through ``path`` on ``backend``, in a child.

    Raises:
        ValueError: ``backend`` is not an ``arm64-emu[?kernels=...]`` backend.
        BenchmarkError: not set up, or the emulated run failed (the guest's stderr in the message).
        IsolationError: the child crashed, hung or ran out of memory.
    """
    kernels = parse_backend(backend)
    setup, reason = read_setup()
    if setup is None:
        raise BenchmarkError(reason)
    with tempfile.TemporaryDirectory(prefix="litegate-arm-") as tmp:
        out_npz = Path(tmp) / "outputs.npz"
        r = run_isolated("litegate.backends.arm:emulate_job",
                         {"path": str(Path(path).resolve()), "inputs_npz": str(Path(inputs_npz).resolve()),
                          "samples": samples, "signature": signature, "kernels": kernels, "out_npz": str(out_npz),
                          "home": str(setup.home)},
                         timeout_s=timeout_s, mem_mb=mem_mb)
        with np.load(out_npz) as arrays:
            outputs = {k: arrays[k] for k in arrays.files}
    return ArmRun(outputs=outputs, instructions=tuple(int(c) for c in r["instructions"]), kernels=kernels,
                  cpu=setup.cpu, litert=setup.litert, emulator_s=float(r["emulator_s"]))


def emulate_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: prepare the inputs with the x86 LiteRT's signature details, run the guest under
    ``qemu-aarch64`` with the instruction-count plugin, and save the dequantized outputs to ``out_npz``."""
    os.environ[ROOT_ENV] = payload["home"]
    setup, reason = read_setup()
    if setup is None:
        raise BenchmarkError(reason)
    runner = Runner(payload["path"], backend="cpu", signature=payload.get("signature"))
    with np.load(payload["inputs_npz"]) as data:
        arrays = {k: data[k] for k in data.files}
    n = len(next(iter(arrays.values())))
    n = min(n, int(payload["samples"])) if payload.get("samples") else n
    prepared = [runner.prepare({k: v[i:i + 1] for k, v in arrays.items()}) for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="litegate-arm-guest-") as tmp_str:
        tmp = Path(tmp_str)
        save_npz(tmp / "inputs.npz", {k: np.stack([p[k] for p in prepared]) for k in runner.inputs})
        job = {"model": payload["path"], "inputs_npz": str(tmp / "inputs.npz"), "signature": runner.signature,
               "kernels": payload["kernels"], "out_npz": str(tmp / "raw.npz"), "result_json": str(tmp / "result.json")}
        (tmp / "job.json").write_text(json.dumps(job))
        counts_path = tmp / "instructions.txt"
        guest_python = str(setup.root / setup.python.lstrip("/"))
        cmd = [setup.qemu, "-L", str(setup.root), "-cpu", setup.cpu, "-plugin", f"{setup.plugin},out={counts_path}",
               guest_python, "-P", "-s", str(GUEST), str(tmp / "job.json")]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": setup.site, "PYTHONNOUSERSITE": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        emulator_s = time.monotonic() - t0
        if proc.returncode != 0 or not (tmp / "result.json").is_file():
            tail = " ".join(proc.stderr.split()[-60:]) or f"exit code {proc.returncode}"
            raise BenchmarkError(f"the arm64 guest failed (exit code {proc.returncode}): {tail}")
        machine = json.loads((tmp / "result.json").read_text()).get("machine")
        if machine != "aarch64":
            raise BenchmarkError(f"the guest ran on {machine!r}, not aarch64: {setup.qemu} did not emulate it")
        counts = [int(line) for line in counts_path.read_text().split()]
        if len(counts) != n:
            raise BenchmarkError(f"the instruction-count plugin recorded {len(counts)} inferences for {n} samples")
        with np.load(tmp / "raw.npz") as raw:
            stacked = {k: raw[k][:, 0] for k in raw.files}  # one batch-1 output per sample, as Runner.run_batch
        save_npz(payload["out_npz"], runner.dequantize(stacked))
    return {"n": n, "instructions": counts, "emulator_s": emulator_s}

"""The guest side of the ``arm64-emu`` backend: runs inside the arm64 root under ``qemu-aarch64``.

Standalone on purpose: the guest's Python has only numpy and aarch64 ``ai_edge_litert`` (``make arm-sim``), not
litegate. ``python3 arm_guest.py JOB.json`` reads a .tflite and an .npz of already prepared (quantized, shaped)
inputs, one row per sample, runs every sample on one thread, and writes the raw outputs, stacked, to an .npz.

Each ``Invoke`` is wrapped in the two marker system calls of litegate's TCG plugin
(``scripts/arm_sim/insn_count.c``): ``umask(0x4c470000 | mask)`` zeroes its instruction counter,
``umask(0x4c480000 | mask)`` writes the count (the kernel keeps the low 9 bits, the current ``mask``: the calls
change nothing and cannot fail), so the plugin records the guest instructions of one inference, one line per
sample.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

MARK_START = 0x4C470000
MARK_STOP = 0x4C480000
RESOLVERS = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def main(job_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    with open(job["model"], "rb") as f:
        content = f.read()
    interpreter = Interpreter(model_content=content, num_threads=1,
                              experimental_op_resolver_type=RESOLVERS[job["kernels"]])
    runner = interpreter.get_signature_runner(job["signature"])
    with np.load(job["inputs_npz"]) as data:
        feeds = {k: data[k] for k in data.files}
    n = len(next(iter(feeds.values())))
    runner(**{k: v[0] for k, v in feeds.items()})  # allocates the signature's tensors once
    # The signature runner's own __call__ resizes and re-allocates on every call; the wrapper below is LiteRT's
    # (ai-edge-litert as pinned by make arm-sim), so that only Invoke lies between the markers.
    wrapper, subgraph = runner._interpreter_wrapper, runner._subgraph_index
    inputs = runner._inputs
    outputs = dict(runner._outputs)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
    mask = os.umask(0o022)
    os.umask(mask)
    start, stop = MARK_START | mask, MARK_STOP | mask
    for i in range(n):
        for name, index in inputs.items():
            wrapper.SetTensor(index, feeds[name][i], subgraph)
        os.umask(start)
        wrapper.Invoke(subgraph)
        os.umask(stop)
        for name, index in outputs.items():
            rows[name].append(np.array(wrapper.GetTensor(index, subgraph)))
    np.savez(job["out_npz"], **{k: np.stack(v) for k, v in rows.items()})  # type: ignore[arg-type]  # numpy stub: **kwds as bool
    with open(job["result_json"], "w") as f:
        json.dump({"n": n, "machine": os.uname().machine}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

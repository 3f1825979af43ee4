"""Functions the isolation tests run in child processes (importable through PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time

from litegate.errors import DataError


def echo(payload):
    return {"got": payload["x"] * 2, "pid": os.getpid()}


def raise_data_error(payload):
    raise DataError("calibration.txt:3: calibration text is not valid UTF-8")


def raise_value_error(payload):
    raise ValueError("boom")


def segfault(payload):
    os.kill(os.getpid(), signal.SIGSEGV)


def abort(payload):
    os.abort()


def hang(payload):
    # a grandchild that would outlive a naive kill
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    time.sleep(600)


def exit_zero_without_result(payload):
    os._exit(0)


def allocate(payload):
    blocks = []
    for _ in range(int(payload["mb"])):
        blocks.append(bytearray(1024 * 1024))
    return {"n": len(blocks)}


def allocate_in_grandchild(payload):
    # the memory sits in a forked grandchild: the cap is on the whole process group
    if os.fork() == 0:
        allocate(payload)
        time.sleep(600)
        os._exit(0)
    time.sleep(600)


def openblas_style_retry(payload):
    # a library that retries a failed allocation forever (OpenBLAS's thread start-up under an address-space
    # rlimit did this): under a resident-memory cap the first allocation succeeds and the cap kills it
    blocks = []
    while True:
        try:
            blocks.append(bytearray(16 * 1024 * 1024))
        except MemoryError:
            time.sleep(0.01)


def spawn_isolated_hang(payload):
    # a litegate parent that itself runs an isolated child; the test kills this parent
    from litegate.isolation import run_isolated

    run_isolated("child_targets:record_pid_and_hang", payload, timeout_s=600,
                 env={"PYTHONPATH": payload["pythonpath"]})


def record_pid_and_hang(payload):
    with open(payload["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def import_tf_then_allocate(payload):
    # a conversion-like child: TensorFlow's import (~700 MB resident), then memory that keeps growing
    import tensorflow as tf  # noqa: F401

    return allocate(payload)


def write_in_tempdir(payload):
    # what TensorFlow's autograph does on every conversion: a module file in the temporary directory, left there
    import tempfile

    fd, name = tempfile.mkstemp(prefix="__autograph_generated_file", suffix=".py")
    os.close(fd)
    return {"tempdir": tempfile.gettempdir(), "file": name}

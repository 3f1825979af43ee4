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

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from litegate.errors import DataError, IsolationError
from litegate.isolation import CRASH_HOOK_ENV, run_isolated

ENV = {"PYTHONPATH": str(Path(__file__).parent)}


def test_run_isolated_returns_child_result_from_another_process():
    r = run_isolated("child_targets:echo", {"x": 21}, timeout_s=60, env=ENV)
    assert r["got"] == 42 and r["pid"] != os.getpid()


def test_litegate_error_in_child_is_reraised_with_its_class():
    with pytest.raises(DataError, match="calibration.txt:3"):
        run_isolated("child_targets:raise_data_error", {}, timeout_s=60, env=ENV)


def test_other_exception_in_child_is_classified_failed():
    with pytest.raises(IsolationError, match="ValueError: boom") as info:
        run_isolated("child_targets:raise_value_error", {}, timeout_s=60, env=ENV)
    assert info.value.kind == "failed" and "Traceback" in info.value.stderr


@pytest.mark.parametrize("target,signame", [("segfault", "SIGSEGV"), ("abort", "SIGABRT")])
def test_crashing_child_is_classified_with_its_signal(target, signame):
    with pytest.raises(IsolationError, match=f"crashed: {signame}") as info:
        run_isolated(f"child_targets:{target}", {}, timeout_s=60, env=ENV)
    assert info.value.kind == "crashed"


def test_crash_hook_injects_segfault_into_a_named_target():
    with pytest.raises(IsolationError, match="crashed: SIGSEGV"):
        run_isolated("child_targets:echo", {"x": 1}, timeout_s=60, env={**ENV, CRASH_HOOK_ENV: "child_targets:echo"})


def test_hanging_child_and_its_grandchildren_are_killed_at_timeout():
    t0 = time.monotonic()
    with pytest.raises(IsolationError, match=r"timeout after 2 s") as info:
        run_isolated("child_targets:hang", {}, timeout_s=2, env=ENV)
    assert info.value.kind == "timeout"
    assert time.monotonic() - t0 < 30


def test_child_exiting_zero_without_result_is_a_failure():
    with pytest.raises(IsolationError, match="exited 0 without a result") as info:
        run_isolated("child_targets:exit_zero_without_result", {}, timeout_s=60, env=ENV)
    assert info.value.kind == "no_result"


def test_memory_cap_is_classified_as_oom():
    with pytest.raises(IsolationError) as info:
        run_isolated("child_targets:allocate", {"mb": 2048}, timeout_s=60, mem_mb=600, env=ENV)
    assert info.value.kind == "oom"


def test_memory_cap_counts_the_whole_process_group_and_reports_the_resident_figure():
    t0 = time.monotonic()
    with pytest.raises(IsolationError, match=r"out of memory: hit the 300 MB memory cap \(resident \d+ MB") as info:
        run_isolated("child_targets:allocate_in_grandchild", {"mb": 1024}, timeout_s=120, mem_mb=300, env=ENV)
    assert info.value.kind == "oom"
    assert time.monotonic() - t0 < 60  # killed at the cap, not at the timeout


def test_a_library_that_retries_allocation_forever_is_killed_at_the_cap_not_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(IsolationError, match="out of memory") as info:
        run_isolated("child_targets:openblas_style_retry", {}, timeout_s=300, mem_mb=300, env=ENV)
    assert info.value.kind == "oom"
    assert time.monotonic() - t0 < 60


def test_an_isolated_child_dies_with_its_parent(tmp_path):
    """CI kills litegate (a job timeout): its isolated children go too instead of running on as orphans."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "pid"
    payload = {"pid_file": str(pid_file), "pythonpath": ENV["PYTHONPATH"]}
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys, json, child_targets; child_targets.spawn_isolated_hang(json.loads(sys.argv[1]))",
                               __import__("json").dumps(payload)], env={**os.environ, **ENV})
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), "the isolated child never started"
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"isolated child {child} outlived its killed parent by 30 s")


@pytest.mark.parametrize("cap", [50, 300])
def test_a_cap_too_low_to_start_the_child_says_so_naming_the_cap(cap):
    """`memory_mb = 50`: Python and the conversion job's imports (TensorFlow's, ~700 MB resident) cannot start under
    it; the error said "exited 1 without a result", then "hit the cap" as if the job had run."""
    with pytest.raises(IsolationError, match=rf"out of memory: the {cap} MB memory cap is too low to even start") as info:
        run_isolated("litegate.quantize.build:build_job", {}, timeout_s=120, mem_mb=cap, preload=("tensorflow",))
    assert info.value.kind == "oom"


def test_a_tensorflow_child_over_a_generous_cap_is_out_of_memory_not_a_timeout():
    """`memory_mb = 1500`: the conversion child spun at the cap until the timeout (an address-space rlimit). Under
    the resident-memory cap a child that imported TensorFlow and keeps growing is killed at the cap."""
    t0 = time.monotonic()
    with pytest.raises(IsolationError, match=r"out of memory: hit the 1500 MB memory cap") as info:
        run_isolated("child_targets:import_tf_then_allocate", {"mb": 4000}, timeout_s=300, mem_mb=1500, env=ENV)
    assert info.value.kind == "oom"
    assert time.monotonic() - t0 < 120

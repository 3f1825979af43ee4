"""Run a library function in a child process group with a timeout and an optional memory cap.

TensorFlow's converter and the TFLite interpreter can segfault, abort or hang on real graphs.
Each such call runs here, in ``python -m litegate.isolation MODULE:FUNC IN.json OUT.json``,
so that a crash becomes a classified :class:`IsolationError` (``crashed: SIGSEGV``,
``timeout after 120 s``, ``out of memory``, ``exited 0 without a result``) instead of killing
the run. A litegate error raised in the child is re-raised in the parent with its own class.

The memory cap is on resident memory (RSS) of the child's whole process group, the figure a CI
runner's cgroup or a build machine's OOM killer acts on. The parent samples it and kills the group
when it goes over. An address-space rlimit is not used: TensorFlow reserves far more virtual memory
than it touches, and some libraries (OpenBLAS's thread start-up in scipy) retry a failed ``mmap``
forever instead of failing, which turned a capped conversion into a 15-minute hang.

When the cap kills a child before it could even import its job and the heavy modules the caller names
(``preload``: Python and TensorFlow's import need ~700 MB resident), the error says that the cap is too low
to start the child, naming it, rather than blaming the job.

With ``sandbox`` (the children that load an untrusted model), the child confines itself with
:func:`litegate.sandbox.confine` before it imports the job: it may write only beneath its scratch folder (its
``TMPDIR``) and the folders the caller names, and it has no network.

A child whose litegate parent disappears (killed by CI, by a timeout one level up) kills its own
process group rather than running on as an orphan.

Each child gets a private ``TMPDIR`` inside its scratch directory, removed with it when the call returns
(however the child ended): TensorFlow's autograph writes ``__autograph_generated_file*.py`` modules to the
temporary directory on every conversion and never removes them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from litegate import errors, sandbox

CRASH_HOOK_ENV = "LITEGATE_TEST_CRASH_IN"
_PARENT_ENV = "LITEGATE_ISOLATION_PARENT"  # the parent's pid, for the child's orphan check
_READY_SUFFIX = ".ready"  # OUT.json.ready: the child imported its job (so the cap did not stop its start-up)
_PRELOAD_ENV = "LITEGATE_ISOLATION_PRELOAD"  # comma-separated modules the child imports before it counts as started
_SANDBOX_ENV = "LITEGATE_SANDBOX_WRITABLE"  # JSON list of the folders a sandboxed child may write beneath
_STDERR_TAIL = 4000


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


_POLL_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid``, in MB (0 if none is left)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after its closing ")"
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 21 and int(fields[2]) == pgid:
            total += int(fields[21])
    return total * _PAGE / 1e6


def _wait(proc: subprocess.Popen[bytes], timeout_s: float, mem_mb: int | None) -> tuple[int | None, float]:
    """Wait for ``proc``; return (exit code or None on timeout, peak group RSS in MB).

    With ``mem_mb`` the group is killed with SIGKILL as soon as its RSS goes over the cap.
    """
    deadline = time.monotonic() + timeout_s
    peak = 0.0
    while True:
        rc = proc.poll()
        if rc is not None:
            return rc, peak
        if mem_mb:
            rss = group_rss_mb(proc.pid)
            peak = max(peak, rss)
            if rss > mem_mb:
                _kill_group(proc)
                return proc.returncode if proc.returncode is not None else -signal.SIGKILL, peak
        if time.monotonic() >= deadline:
            return None, peak
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_POLL_S if mem_mb else min(1.0, max(0.0, deadline - time.monotonic())))


def run_isolated(
    target: str,
    payload: Mapping[str, Any],
    *,
    timeout_s: float,
    mem_mb: int | None = None,
    env: Mapping[str, str] | None = None,
    preload: tuple[str, ...] = (),
    sandbox: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Call ``target`` (``"package.module:function"``) with ``payload`` in a child process.

    Args:
        target: the function to call; it takes a dict and returns a JSON-serialisable dict.
        payload: its argument (JSON-serialisable).
        timeout_s: wall-clock limit; on expiry the whole child process group is killed.
        mem_mb: optional cap on the resident memory (RSS) of the child's process group, in MB.
        env: extra environment variables for the child.
        preload: modules the child imports before calling ``target`` (e.g. ``("tensorflow",)`` for a job that
            imports it lazily): a memory cap hit before they are imported is reported as too low to start.
        sandbox: confine the child (see :mod:`litegate.sandbox`): it may write only beneath these folders
            and its own scratch folder (its ``TMPDIR``), and has no network. ``None``: not confined.

    Returns:
        The function's result.

    Raises:
        LitegateError: the child raised a litegate error (same class, same message).
        IsolationError: the child crashed, hung, ran out of memory or returned nothing.
    """
    with tempfile.TemporaryDirectory(prefix="litegate-child-") as tmp:
        in_path, out_path, err_path = (Path(tmp) / n for n in ("in.json", "out.json", "stderr.txt"))
        in_path.write_text(json.dumps(dict(payload)))
        private_tmp = Path(tmp) / "tmp"
        private_tmp.mkdir()
        child_env = dict(os.environ)
        child_env["TMPDIR"] = str(private_tmp)  # removed with the scratch directory (autograph's leftovers too)
        child_env.update(env or {})
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        child_env[_PARENT_ENV] = str(os.getpid())
        child_env[_PRELOAD_ENV] = ",".join(preload)
        if sandbox is not None:  # its private TMPDIR lies beneath tmp
            child_env[_SANDBOX_ENV] = json.dumps([tmp, *(str(p) for p in sandbox)])
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "litegate.isolation", target, str(in_path), str(out_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=child_env,
                start_new_session=True,
            )
            started = time.monotonic()
            try:
                rc, peak_mb = _wait(proc, timeout_s, mem_mb)
                if rc is None:
                    _kill_group(proc)
                    raise errors.IsolationError(
                        f"{target}: timeout after {timeout_s:g} s", kind="timeout", stderr=read_tail(err_path))
            except BaseException:  # KeyboardInterrupt, SystemExit from a signal handler
                _kill_group(proc)
                raise
            finally:
                # grandchildren that outlived the child go too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        elapsed = time.monotonic() - started
        stderr = read_tail(err_path)
        if rc < 0:
            name = _signal_name(-rc)
            if mem_mb and (name == "SIGKILL" or _looks_oom(stderr)):
                if not Path(str(out_path) + _READY_SUFFIX).exists():
                    modules = " and ".join(dict.fromkeys((target.split(":")[0], *preload)))
                    raise errors.IsolationError(
                        f"{target}: out of memory: the {mem_mb} MB memory cap is too low to even start the child "
                        f"(Python and the import of {modules} reached {peak_mb:.0f} MB resident; {name} after "
                        f"{elapsed:.1f} s, before the job ran): raise the memory cap", kind="oom", stderr=stderr)
                raise errors.IsolationError(f"{target}: out of memory: hit the {mem_mb} MB memory cap (resident "
                                            f"{peak_mb:.0f} MB, {name} after {elapsed:.1f} s)", kind="oom",
                                            stderr=stderr)
            raise errors.IsolationError(f"{target}: crashed: {name} after {elapsed:.1f} s", kind="crashed", stderr=stderr)
        result: dict[str, Any] | None = None
        if out_path.is_file():
            with contextlib.suppress(ValueError):
                result = json.loads(out_path.read_text())
        if isinstance(result, dict) and "error" in result:
            err_info = result["error"]
            cls = getattr(errors, err_info.get("type", ""), None)
            if isinstance(cls, type) and issubclass(cls, errors.LitegateError):
                exc = cls(err_info["message"])
                exc.child_traceback = err_info.get("traceback", "")  # type: ignore[attr-defined]
                raise exc
            oom = err_info.get("type") == "MemoryError" or bool(mem_mb and _looks_oom(err_info.get("message", "")))
            kind = "oom" if oom else "failed"
            cap = f" (memory cap {mem_mb} MB)" if mem_mb and oom else ""
            raise errors.IsolationError(
                f"{target}: {'out of memory' + cap if oom else 'failed'}: {err_info['message'][:500]}",
                kind=kind,
                stderr=err_info.get("traceback", "") + stderr,
            )
        if rc != 0 or result is None:
            how = f"exited {rc}" + (" without a result" if result is None else "")
            raise errors.IsolationError(f"{target}: {how}", kind="no_result" if rc == 0 else "failed", stderr=stderr)
        return result["result"]


_OOM_MARKERS = ("std::bad_alloc", "MemoryError", "Cannot allocate memory", "out of memory", "OOM",
                "ResourceExhausted", "failed to allocate", "Resource temporarily unavailable")


def _looks_oom(text: str) -> bool:
    return any(m in text for m in _OOM_MARKERS)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def read_tail(path: Path, limit: int = _STDERR_TAIL) -> str:
    """The last ``limit`` bytes of a child's log as text ("" if it cannot be read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _die_with_parent(parent: int) -> None:
    """Kill this child's process group once the process that started it is gone (re-parented)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="litegate-parent-watch", daemon=True).start()


def _child_main(argv: list[str]) -> int:
    target, in_path, out_path = argv
    if os.environ.get(_SANDBOX_ENV):  # first, while this process has one thread: every later one inherits it
        sandbox.confine(json.loads(os.environ[_SANDBOX_ENV]))
    _die_with_parent(int(os.environ.get(_PARENT_ENV, os.getppid())))
    payload = json.loads(Path(in_path).read_text())
    if os.environ.get(CRASH_HOOK_ENV) == target:
        os.kill(os.getpid(), signal.SIGSEGV)
    module_name, func_name = target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        for heavy in filter(None, os.environ.get(_PRELOAD_ENV, "").split(",")):
            importlib.import_module(heavy)
        Path(out_path + _READY_SUFFIX).touch()
        out: dict[str, Any] = {"result": func(payload)}
        code = 0
    except errors.LitegateError as exc:
        out = {"error": {"type": type(exc).__name__, "message": exc.message, "traceback": traceback.format_exc()}}
        code = 3
    except MemoryError:
        out = {"error": {"type": "MemoryError", "message": "MemoryError", "traceback": traceback.format_exc()}}
        code = 4
    except Exception as exc:  # noqa: BLE001 - every failure must reach the parent classified
        out = {"error": {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()}}
        code = 5
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, out_path)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    # Exit without running TensorFlow's atexit handlers, which can themselves crash.
    code = _child_main(sys.argv[1:])
    os._exit(code)

"""Confine a child process that loads an untrusted model: no writes outside named folders, no network.

A SavedModel is a program: its functions and resource initializers run when TensorFlow loads and calls it.
:func:`litegate.converter.trust.check_saved_model` refuses the file-system and process ops before anything
runs; this module is the second line, for what that list misses and for models loaded with the opt-in.

:func:`confine` is called by the isolation child (``litegate.isolation``) before it imports the job, while the
process is still single-threaded, so every thread TensorFlow starts later inherits it:

- **Writes**: Linux Landlock (kernel 5.13+, unprivileged, no package needed). Every write-like file-system
  access (write or truncate a file, create or remove a file, folder, link, socket or device, rename across
  folders) is denied except beneath the given folders (the child's scratch folder, the job's output folders)
  and on ``/dev/null``. Reading is not restricted: TensorFlow reads its libraries from anywhere.
- **Network**: a fresh network namespace (``unshare(CLONE_NEWNET)``, inside a user namespace when not root),
  which leaves only a loopback device that is down; where namespaces are refused (a container without
  ``CAP_SYS_ADMIN`` and with user namespaces blocked), Landlock's TCP rules (ABI 4, kernel 6.7+) deny TCP
  connect and bind instead. Landlock ABI 6 also scopes abstract Unix sockets and signals to the child.

What is not covered: reading files (any file the user running litegate can read; the op check refuses
``ReadFile`` and friends by default), connecting to a Unix socket by its path, UDP where no namespace could be
made, CPU and memory (the isolation timeout and memory cap cover those). Where a layer is unavailable the
child goes on without it and :func:`status` says so in one line.

This module imports nothing from litegate: it sits on the ground floor next to the error types.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

# Landlock UAPI (linux/landlock.h). The syscall numbers are the same on every architecture litegate runs on.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

_FS_WRITE_FILE = 1 << 1
_FS_WRITE = (_FS_WRITE_FILE | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10)
             | (1 << 11) | (1 << 12))  # write, remove dir/file, make char/dir/reg/sock/fifo/block/sym
_FS_REFER = 1 << 13  # ABI 2: link or rename into another folder
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # ABI 4: bind and connect TCP
_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABI 6: abstract Unix sockets, signals


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_state: dict[str, object] = {"applied": False, "notice": "", "summary": "not sandboxed"}


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock is missing, disabled or filtered out."""
    try:
        libc = _libc()
    except OSError:
        return 0
    v = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return int(v) if v > 0 else 0


def _unshare_network() -> str:
    """Move this (single-threaded) process into a new network namespace; "" or why not."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0:
        return ""
    first = errno.errorcode.get(ctypes.get_errno(), "?")
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare: {first}, with a user namespace: {errno.errorcode.get(ctypes.get_errno(), '?')}"
    try:  # keep our own uid and gid inside the user namespace, so files we write keep their owner
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as exc:
        return f"user namespace id map: {exc.strerror}"
    return ""


def _landlock(abi: int, writable: Sequence[str]) -> None:
    """Deny writes outside ``writable`` (and TCP where ``abi`` >= 4) for this process and its future threads."""
    libc = _libc()
    fs = _FS_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else (16 if abi >= 4 else 8)
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        rules = [(p, fs) for p in writable] + [("/dev/null", _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))]
        for path, access in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a folder that is not there cannot be written to either
            try:
                rule = _PathBeneathAttr(access if os.path.isdir(path) else access & (_FS_WRITE_FILE | _FS_TRUNCATE), pfd)
                if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(fd), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                os.close(pfd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(fd)


def confine(writable: Sequence[str]) -> None:
    """Sandbox this process: writes only beneath ``writable``, no network. Never raises.

    Call it while the process is single-threaded (namespaces and Landlock apply to the calling thread and
    the threads it starts afterwards). What could not be applied is recorded for :func:`status`.
    """
    missing: list[str] = []
    net_why = _unshare_network()
    abi = landlock_abi()
    if not abi:
        missing.append("file-system writes are not confined (Linux Landlock is not available: kernel 5.13+ "
                       "with landlock in its LSM list)")
    else:
        try:
            _landlock(abi, [os.path.realpath(p) for p in writable])
        except OSError as exc:
            missing.append(f"file-system writes are not confined ({exc.filename or ''}: {os.strerror(exc.errno or 0)})")
            abi = 0
    if net_why and abi < 4:
        missing.append(f"network is not confined (no network namespace: {net_why}; Landlock TCP rules need ABI 4)")
    layers = ([f"Landlock ABI {abi}: writes only in the scratch and output folders"] if abi else []) + (
        ["no network namespace; TCP denied by Landlock" if net_why and abi >= 4 else "own network namespace"]
        if not (net_why and abi < 4) else [])
    _state.update(applied=bool(abi) and not missing, summary="; ".join(layers) or "not sandboxed",
                  notice=("sandbox incomplete: " + "; ".join(missing)) if missing else "")


def status() -> dict[str, object]:
    """What :func:`confine` applied in this process: ``applied`` (bool), ``summary``, ``notice`` (one line, or
    "" when everything was applied)."""
    return dict(_state)


def selftest_job(payload: dict[str, object]) -> dict[str, object]:
    """Isolation-child entry used by ``litegate doctor`` and the tests: try what an untrusted model would.

    Payload: ``outside`` (a file path outside the writable folders), ``inside`` (one inside them), ``port`` (a
    TCP port listening on 127.0.0.1 in the parent's network namespace, 0 for none).
    Returns which attempts succeeded, and :func:`status`.
    """
    import socket

    def attempt(path: str) -> str:
        try:
            with open(path, "w") as f:
                f.write("sandbox self-test")
        except OSError as exc:
            return f"denied: {exc.strerror}"
        return "written"

    net = "not tried"
    if payload.get("port"):
        try:
            with socket.create_connection(("127.0.0.1", int(str(payload["port"]))), timeout=2):
                net = "connected"
        except OSError as exc:
            net = f"denied: {exc.strerror or exc}"
    return {"outside": attempt(str(payload["outside"])), "inside": attempt(str(payload["inside"])), "network": net,
            **status()}

"""Content hashes, atomic writes and the step cache.

A step's output is cached under a hash of (input hash, step name, step config, tool versions).
A cache entry is verified by re-hashing before it is used; a corrupted entry is discarded.

Every write failure (a parent that is a file, a read-only or immutable directory, ``/proc``, a full disk) is
an :class:`~litegate.errors.OutputError` naming the path; a destination that exists but is not a regular file
(a directory, ``/dev/null`` or another device, a FIFO) is refused rather than replaced by a rename.
:func:`check_output_path` runs those checks before minutes of conversion; :func:`write_file_set` writes
several files that belong together (a report) so that they are replaced together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from litegate.errors import OutputBusyError, OutputError
from litegate.types import Artifact

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

_TOOLS = ("litegate", "tensorflow", "tf-keras", "ai-edge-litert", "numpy", "tokenizers")


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that decide a step's output (read from metadata, no imports), and
    ``litegate-source``: a digest of litegate's own code and recipes (:func:`source_digest`)."""
    versions = {}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["litegate-source"] = source_digest()
    return versions


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 (16 hex digits) of litegate's installed ``.py`` and ``.json`` files, names and contents.

    Cached steps are keyed on it as well as on the package version: a checkout that changes how a model is
    spelled or quantized without a release (the version stays the same) must not be served the conversions its
    previous code made (a GPT-2 ``int16x8`` built before a recipe fix came back from the cache unchanged).
    """
    return code_digest(Path(__file__).resolve().parent)


def code_digest(root: Path) -> str:
    """sha256 (16 hex digits) of the ``.py`` and ``.json`` files under ``root`` (relative names and contents);
    compiled caches and other files do not count."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.suffix in (".py", ".json") and "__pycache__" not in q.parts):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike[str]) -> str:
    """Hash of a file, or of a directory's files (relative names and contents, sorted)."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _refuse_non_regular(final: Path) -> None:
    """An existing ``final`` that is not a regular file (a directory, a device such as /dev/null, a FIFO) is not
    replaced: a rename would put a regular file where the device or directory was."""
    try:
        st = os.stat(final)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise OutputError(f"{final}: cannot write: {_file_ancestor(final)} is not a directory") from None
        raise OutputError(f"{final}: cannot write: {_reason(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise OutputError(f"{final}: cannot write: it exists and is {kind}; give a file path")


def _file_ancestor(final: Path) -> Path:
    """The nearest existing ancestor of ``final`` (a file when a parent "directory" is one)."""
    d = final.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    return d


def _make_parent(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{final}: cannot write: {_file_ancestor(final)} is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{final}: cannot write: {_reason(exc)}") from None


def check_output_path(final: str | os.PathLike[str]) -> None:
    """Fail fast, before the work that produces it, when ``final`` could not be written.

    Checks that ``final`` is not an existing directory or device, that its nearest existing ancestor is a
    directory, and that a file can be created there (a probe file, removed at once; nothing else is created).

    Raises:
        OutputError: ``final`` could not be written, naming why.
    """
    final = Path(final)
    _refuse_non_regular(final)
    d = _file_ancestor(final)
    if not d.is_dir():
        raise OutputError(f"{final}: cannot write: {d} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".probe", dir=d)
    except OSError as exc:
        raise OutputError(f"{final}: cannot write in {d}: {_reason(exc)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the final file's directory; on success fsync and rename it into place.

    On any exception the temp file is removed and the final path is left untouched. Failures to create, write,
    sync or rename the file are :class:`OutputError`; an existing ``final`` that is not a regular file is refused.
    """
    final = Path(final)
    _refuse_non_regular(final)
    _make_parent(final)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise OutputError(f"{final}: cannot write: {_reason(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and (exc.errno in _NO_SPACE or exc.errno == errno.EIO
                                         or exc.filename in (str(tmp), str(final))):
            raise OutputError(f"{final}: {_reason(exc)}; nothing was written there "
                              "(the previous file, if any, is intact)") from None
        raise


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (in the main thread) until the block is done, then deliver them.

    For a few renames that belong together: an interrupt lands before or after them, not between.
    Elsewhere (another thread, a handler not set from Python) the block runs unprotected.
    """
    caught: list[int] = []
    saved: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old is not None:
                saved[sig] = old
                signal.signal(sig, lambda num, _frame: caught.append(num))
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        for num in caught[:1]:
            signal.raise_signal(num)


def write_file_set(out_dir: str | os.PathLike[str], files: Sequence[tuple[str, str | bytes]]) -> None:
    """Write ``files`` ((name, content), in order) into ``out_dir`` so that they are replaced together.

    All are written and synced into a temporary directory inside ``out_dir`` first; only then is each renamed
    into place, in the order given (put the file that marks completion last), with SIGINT/SIGTERM held off
    (:func:`deferred_signals`). A failure or interrupt before the renames leaves the previous set untouched
    and no temporary files. What is left: a SIGKILL, a crash or a power cut during the renames (microseconds
    for a handful of files) can leave the first files new and the rest old; since the last file is renamed
    last, a new last file means the whole set is new.

    Raises:
        OutputError: a file could not be written or renamed (nothing replaced unless the renames had begun:
            then the message says so).
    """
    out = Path(out_dir)
    for name, _ in files:
        _refuse_non_regular(out / name)
    _make_parent(out / "x")
    try:
        stage = Path(tempfile.mkdtemp(prefix=".litegate-write-", dir=out))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {_reason(exc)}") from None
    try:
        try:
            for name, content in files:
                data = content.encode("utf-8") if isinstance(content, str) else content
                with open(stage / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{out}: {_reason(exc)} writing {', '.join(n for n, _ in files)}; nothing was "
                              "replaced (the previous files, if any, are intact)") from None
        done: list[str] = []
        with deferred_signals():
            try:
                for name, _ in files:
                    os.replace(stage / name, out / name)
                    done.append(name)
            except OSError as exc:
                raise OutputError(f"{out}: {_reason(exc)} renaming the new files into place; replaced "
                                  f"{', '.join(done) or 'none'}, the others are the previous ones") from None
        with contextlib.suppress(OSError):
            dfd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def write_model_card(path: str | os.PathLike[str], *, task: str, seq_len: int, **fields: Any) -> None:
    """The model sidecar an app reads beside a .tflite (``OUT.json``, or ``model.json`` in a release folder):
    ``task`` and ``seq_len`` first, then ``fields`` in the order given; written atomically."""
    atomic_write_text(path, json.dumps({"task": str(task), "seq_len": int(seq_len), **fields}, indent=2) + "\n")


def atomic_copy(src: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)


def make_artifact(
    path: str | os.PathLike[str],
    *,
    parent_sha256: str | None,
    produced_by: str,
    step_config: Mapping[str, Any],
    versions: Mapping[str, str] | None = None,
) -> Artifact:
    p = Path(path)
    return Artifact(
        path=str(p),
        sha256=sha256_file(p),
        size_bytes=p.stat().st_size,
        parent_sha256=parent_sha256,
        produced_by=produced_by,
        step_config=dict(step_config),
        tool_versions=dict(versions if versions is not None else tool_versions()),
    )


class StepCache:
    """A directory of step outputs keyed by the hash of everything that decides them.

    Layout: ``<root>/<key>/output.tflite`` and ``<root>/<key>/artifact.json``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def key(parent_sha256: str | None, step: str, config: Mapping[str, Any], versions: Mapping[str, str]) -> str:
        return stable_hash({"parent": parent_sha256, "step": step, "config": config, "versions": versions})

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> Artifact | None:
        """The cached artifact for ``key``, verified by hash; None if absent or corrupted."""
        entry = self._entry(key)
        meta = entry / "artifact.json"
        out = entry / "output.tflite"
        if not meta.is_file() or not out.is_file():
            return None
        try:
            art = Artifact.from_dict(json.loads(meta.read_text()))
            ok = sha256_file(out) == art.sha256
        except (ValueError, KeyError, TypeError, OSError):
            ok = False
        if not ok:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return dataclass_replace_path(art, out)

    def put(self, key: str, file: str | os.PathLike[str], artifact: Artifact,
            extra: Mapping[str, Any] | None = None) -> Artifact:
        """Store ``file`` (and what the step reported about it) under ``key``; return the cached artifact.

        ``artifact.json`` is written last: an entry without it is incomplete and never used.
        """
        entry = self._entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        out = entry / "output.tflite"
        atomic_copy(file, out)
        stored = dataclass_replace_path(artifact, out)
        atomic_write_text(entry / "extra.json", json.dumps(dict(extra or {}), sort_keys=True, default=str))
        atomic_write_text(entry / "artifact.json", json.dumps(stored.to_dict(), indent=2, sort_keys=True))
        return stored

    def extra(self, key: str) -> dict[str, Any]:
        """What the step reported alongside its output (empty if nothing was stored)."""
        try:
            data = json.loads((self._entry(key) / "extra.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def dataclass_replace_path(art: Artifact, path: Path) -> Artifact:
    return dataclasses.replace(art, path=str(path))


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
    """Write named arrays to an .npz file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``out_dir``: a second run on the same directory is refused, never interleaved."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / ".litegate.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the output directory: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"{out_dir}: another litegate run is using this output directory") from None
        yield
    finally:
        os.close(fd)

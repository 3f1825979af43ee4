"""Backend names and their syntax: what a backend string means, before anything is loaded.

The bottom of :mod:`litegate.backends`: ``xnnpack`` and ``cpu`` run in-process through LiteRT,
``external:PATH.so[?key=value&...]`` loads a delegate library, ``adb[:SERIAL][?...]`` runs on an
Android device (:mod:`litegate.backends.adb` parses its options), ``aihub:DEVICE[?...]`` on a phone
through Qualcomm AI Hub (:mod:`litegate.backends.aihub`), ``arm64-emu[?kernels=...]`` with aarch64 LiteRT under
QEMU (:mod:`litegate.backends.arm`). The table of every backend, with
why each can or cannot run here, is :mod:`litegate.backends.registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl

RUNNABLE = ("xnnpack", "cpu")
EXTERNAL_PREFIX = "external:"
AIHUB_PREFIX = "aihub:"
ARM_EMU = "arm64-emu"


@dataclasses.dataclass(frozen=True)
class ExternalSpec:
    """A parsed ``external:PATH[?key=value&...]`` backend: the delegate library and its options."""

    library: str
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


def is_external_backend(backend: str) -> bool:
    """True for ``external:...`` backends."""
    return backend.startswith(EXTERNAL_PREFIX)


def is_local_cpu_backend(backend: str) -> bool:
    """True for a backend timed on this machine's CPU (LiteRT's kernels or an external delegate): not a GPU, a
    phone or an emulator."""
    return backend in RUNNABLE or is_external_backend(backend)


def parse_external(backend: str) -> ExternalSpec:
    """Parse ``external:PATH[?key=value&key2=value2]``.

    Raises:
        ValueError: not of that form; the message says what is wrong.
    """
    if not is_external_backend(backend):
        raise ValueError(f"{backend!r} is not an external backend (external:/path/libdelegate.so?key=value)")
    library, _, query = backend[len(EXTERNAL_PREFIX):].partition("?")
    if not library:
        raise ValueError(f"{backend!r}: no delegate library after 'external:'")
    return ExternalSpec(library=library, options=parse_options(backend, query, "delegate option"))


def parse_options(backend: str, query: str, what: str = "option") -> dict[str, str]:
    """``key=value&key2=value2`` (percent-decoded) of a backend name, each key once.

    Raises:
        ValueError: malformed pairs or a repeated key; the message names the backend.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{backend!r}: {what}s must be key=value pairs joined by '&'") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"{backend!r}: {what} {key!r} given twice")
        options[key] = value
    return options


def backend_relative_to(backend: str, base: Path) -> str:
    """``backend`` with a relative ``external:`` library path (one containing ``/``) made absolute under ``base``."""
    if not is_external_backend(backend):
        return backend
    library, sep, query = backend[len(EXTERNAL_PREFIX):].partition("?")
    if "/" not in library or Path(library).is_absolute():
        return backend
    return f"{EXTERNAL_PREFIX}{(base / library).resolve()}{sep}{query}"


def is_adb_backend(backend: str) -> bool:
    """True for ``adb``, ``adb:SERIAL`` and ``adb?...`` forms."""
    return backend == "adb" or backend.startswith(("adb:", "adb?"))


def is_arm_backend(backend: str) -> bool:
    """True for ``arm64-emu`` and ``arm64-emu?...`` (aarch64 LiteRT under QEMU: :mod:`litegate.backends.arm`)."""
    return backend == ARM_EMU or backend.startswith(f"{ARM_EMU}?")


def is_aihub_backend(backend: str) -> bool:
    """True for ``aihub:DEVICE[?...]`` backends."""
    return backend.startswith(AIHUB_PREFIX)


def external_why_not(backend: str) -> str | None:
    """None if an ``external:`` backend's library may be loaded (a path must exist), else why not."""
    try:
        spec = parse_external(backend)
    except ValueError as exc:
        return str(exc)
    if "/" in spec.library and not Path(spec.library).is_file():
        what = "is not a file" if Path(spec.library).exists() else "does not exist"
        return f"delegate library {spec.library} {what}"
    return None

"""Every backend litegate knows, in one table: its syntax, and why it can or cannot run here.

A backend is a row of :data:`BACKENDS`: a name (or a prefix form such as ``external:`` or
``adb[:SERIAL]``, ``aihub:DEVICE``, ``arm64-emu[?kernels=...]``), the form shown to users, a syntax check and a ``not run`` reason. The release
config, the CLI, ``litegate doctor`` and the benchmark matrix ask this table; adding a backend
means adding a row here (and the module that runs it).
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable

from litegate.backends import adb, aihub, arm, gpu
from litegate.backends.spec import (
    RUNNABLE,
    external_why_not,
    is_adb_backend,
    is_aihub_backend,
    is_arm_backend,
    is_external_backend,
    parse_external,
)


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}"


def _runs_here(_backend: str) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend: ``matches`` a backend string; ``parse`` raises ValueError on bad syntax; ``why_not`` says
    why it cannot run on this machine (None: it can)."""

    name: str
    form: str
    matches: Callable[[str], bool]
    why_not: Callable[[str], str | None]
    parse: Callable[[str], object] | None = None
    named: bool = True  # a plain name (listed by `litegate doctor`), not a form with a path or serial


def _named(name: str, why_not: Callable[[str], str | None]) -> Backend:
    return Backend(name=name, form=name, matches=lambda b: b == name, why_not=why_not)


BACKENDS: tuple[Backend, ...] = (
    _named("xnnpack", _runs_here),
    _named("cpu", _runs_here),
    _named("gpu", lambda _b: gpu.why_not_runnable()),
    _named("hexagon", lambda _b: ("the Hexagon DSP delegate needs a Qualcomm SoC with libhexagon_interface.so; "
                                  f"this is {_machine()}")),
    _named("coreml", lambda _b: f"the Core ML delegate runs only on Apple devices (iOS/macOS); this is {_machine()}"),
    Backend(name="external", form="external:PATH.so[?key=value&...]", matches=is_external_backend,
            why_not=external_why_not, parse=parse_external, named=False),
    Backend(name="adb", form="adb[:SERIAL][?delegate=gpu|hexagon|nnapi|xnnpack|cpu]", matches=is_adb_backend,
            why_not=adb.why_not_runnable, parse=adb.parse_backend, named=False),
    Backend(name="aihub", form="aihub:DEVICE[?compute_unit=npu|gpu|cpu]", matches=is_aihub_backend,
            why_not=aihub.why_not_runnable, parse=aihub.parse_backend, named=False),
    Backend(name=arm.NAME, form=arm.FORM, matches=is_arm_backend, why_not=arm.why_not_runnable,
            parse=arm.parse_backend),
)
KNOWN = tuple(b.name for b in BACKENDS if b.named)
BACKEND_FORMS = tuple(b.form for b in BACKENDS)
assert set(RUNNABLE) <= set(KNOWN)


def lookup(backend: str) -> Backend | None:
    """The row of ``backend``, or None for a name litegate does not know."""
    return next((b for b in BACKENDS if b.matches(backend)), None)


def backend_syntax_error(backend: object) -> str | None:
    """None if ``backend`` is a backend name litegate knows (it may still not run here), else why not."""
    if not isinstance(backend, str):
        return f"a backend must be a string, got {backend!r}"
    row = lookup(backend)
    if row is None:
        return f"unknown backend {backend!r} (known: {', '.join(BACKEND_FORMS)})"
    if row.parse is not None:
        try:
            row.parse(backend)
        except ValueError as exc:
            return str(exc)
    return None


def why_not_runnable(backend: str) -> str | None:
    """None if ``backend`` runs on this machine, else the reason it cannot."""
    row = lookup(backend)
    return f"unknown backend {backend!r}" if row is None else row.why_not(backend)


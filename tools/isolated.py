"""``run_isolated`` for ``tools.*`` targets: the child process can import ``tools`` wherever it was started.

:func:`litegate.isolation.run_isolated` starts ``python -m litegate.isolation TARGET ...``, which puts only
the child's working directory on ``sys.path``; ``tools`` is not in the litegate wheel, so the child gets
the repository root on ``PYTHONPATH`` too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from litegate.isolation import run_isolated

ROOT = Path(__file__).resolve().parents[1]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` plus ``PYTHONPATH``: the repository root first, then what this process's ``PYTHONPATH`` holds."""
    paths = [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {**(env or {}), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def run_tool_job(target: str, payload: Mapping[str, Any], *, timeout_s: float, mem_mb: int | None = None,
                 env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`~litegate.isolation.run_isolated` of ``target`` (``"tools.<module>:<function>"``) with :func:`child_env`."""
    return run_isolated(target, payload, timeout_s=timeout_s, mem_mb=mem_mb, env=child_env(env))

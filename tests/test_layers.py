"""The house rule, `make lint`'s import-layer contract: imports flow downward (cli -> pipeline -> stages -> ground).

The contract (``[tool.importlinter]`` in pyproject.toml) is checked on the real tree, and on a copy into which a
function-level import that closes a cycle has been slipped, the way the old cycles hid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept_by_the_tree():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_layers_contract_breaks_on_a_cycle_hidden_in_a_function_level_import(tmp_path):
    shutil.copytree(ROOT / "litegate", tmp_path / "litegate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    reader = tmp_path / "litegate" / "tflite" / "flatbuffer.py"
    reader.write_text(reader.read_text() + "\n\ndef _sneaky() -> object:\n"
                      "    from litegate.backends.runtime import Runner\n\n    return Runner\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "litegate.tflite.flatbuffer -> litegate.backends.runtime" in r.stdout

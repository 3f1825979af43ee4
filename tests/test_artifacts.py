from __future__ import annotations

import json
from pathlib import Path

import pytest

from litegate.artifacts import (
    StepCache,
    atomic_path,
    atomic_write_bytes,
    code_digest,
    make_artifact,
    sha256_file,
    sha256_tree,
    tool_versions,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_sha256_tree_depends_on_names_and_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("x")
    h1 = sha256_tree(tmp_path / "d")
    (tmp_path / "d" / "a").rename(tmp_path / "d" / "b")
    assert sha256_tree(tmp_path / "d") != h1


def test_cached_steps_are_keyed_on_litegate_s_own_code(tmp_path):
    """The version stays 0.1.0 between commits: a cached conversion must still not outlive the code that made it."""
    import litegate

    pkg = tmp_path / "pkg"
    (pkg / "quantize" / "__pycache__").mkdir(parents=True)
    (pkg / "quantize" / "build.py").write_text("x = 1\n")
    (pkg / "quantize" / "recipes.json").write_text("{}")
    before = code_digest(pkg)
    (pkg / "quantize" / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"\0")
    (pkg / "notes.txt").write_text("not code")
    assert code_digest(pkg) == before  # compiled caches and other files do not count
    (pkg / "quantize" / "recipes.json").write_text('{"qat": {}}')
    assert code_digest(pkg) != before  # a recipe is code
    (pkg / "quantize" / "recipes.json").write_text("{}")
    assert code_digest(pkg) == before
    (pkg / "quantize" / "build.py").write_text("x = 2\n")
    assert code_digest(pkg) != before
    assert tool_versions()["litegate-source"] == code_digest(Path(litegate.__file__).parent)


def test_cache_returns_verified_entry_and_discards_corrupted(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"\x00" * 4 + b"TFL3" + b"payload")
    cache = StepCache(tmp_path / "cache")
    key = cache.key("p" * 64, "convert", {"recipe": "fp32"}, {"tensorflow": "2.21"})
    assert key != cache.key("p" * 64, "convert", {"recipe": "fp16"}, {"tensorflow": "2.21"})
    art = make_artifact(f, parent_sha256="p" * 64, produced_by="convert", step_config={}, versions={})
    stored = cache.put(key, f, art)
    hit = cache.get(key)
    assert hit is not None and hit.sha256 == art.sha256 and sha256_file(hit.path) == art.sha256
    # corrupt the cached file: the entry must be dropped, not used
    with open(stored.path, "r+b") as fh:
        fh.seek(9)
        fh.write(b"X")
    assert cache.get(key) is None
    assert not (cache.root / key[:2] / key).exists()


def test_cache_discards_entry_with_broken_metadata(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"abcdTFL3")
    cache = StepCache(tmp_path / "cache")
    art = make_artifact(f, parent_sha256=None, produced_by="x", step_config={}, versions={})
    stored = cache.put("k" * 64, f, art)
    meta = tmp_path / "cache" / "kk" / ("k" * 64) / "artifact.json"
    meta.write_text(json.dumps({"nonsense": 1}))
    assert cache.get("k" * 64) is None
    assert stored.sha256 == art.sha256

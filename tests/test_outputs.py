"""Outputs under hostile paths and interrupts (issue 20, parts 6-8): sidecar collisions, unwritable destinations,
report files replaced as one set, timeouts and memory caps on the single-model commands, no temporary files left.

Each write failure is one line and exit 12 (a path clash with a sidecar is a usage error, exit 2), before any
conversion starts and without replacing what was there (a device node stays a device node).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO, ROOT, run_cli
from test_types import _report

from litegate import artifacts, report
from litegate.artifacts import atomic_write_text
from litegate.errors import OutputError

REPORT_FILES = ("report.md", "report.html", "junit.xml", "report.json")


def _one_line(r: subprocess.CompletedProcess[str], code: int, *patterns: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("litegate: error: "), r.stderr
    for p in patterns:
        assert p in lines[0], (p, lines[0])
    return lines[0]


def _device(path: Path) -> Path:
    """A character device like /dev/null (1, 3) at ``path``: what `-o /dev/null` meets, without risking the real one."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    return path


def _is_device(path: Path) -> bool:
    return stat.S_ISCHR(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:
    """One small conversion with a fresh, private $TMPDIR: (the model, that TMPDIR)."""
    root = tmp_path_factory.mktemp("converted")
    tmpdir = root / "tmpdir"
    tmpdir.mkdir()
    out = root / "m.tflite"
    r = subprocess.run([sys.executable, "-m", "litegate", "convert", str(tiny_checkpoint), "--seq-len", "16", "-o",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TMPDIR": str(tmpdir)})
    assert r.returncode == 0, r.stderr
    return out, tmpdir


# 6: outputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,sidecar", [("model.json", "metadata"), ("model.tokenizer.json", "metadata")])
def test_an_output_that_is_its_own_sidecar_is_refused_before_converting(tmp_path, tiny_checkpoint, name, sidecar):
    """`-o model.json` wrote the model, then replaced it with its metadata sidecar (exit 0, "0.00 MB")."""
    out = tmp_path / name
    r = run_cli("convert", str(tiny_checkpoint), "--seq-len", "16", "-o", str(out))
    _one_line(r, 2, str(out), f"{sidecar} sidecar", "would replace the model")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "device", "immutable-dir"])
def test_convert_to_an_unwritable_output_exits_12_with_one_line_before_converting(tmp_path, tiny_checkpoint, where):
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        out, pattern = tmp_path / "a-file" / "m.tflite", "a-file is not a directory"
    elif where == "under-proc":
        out, pattern = Path("/proc/litegate-test.tflite"), "cannot write in /proc"
    elif where == "device":
        out, pattern = _device(tmp_path / "null"), "it exists and is a device"
    else:
        (tmp_path / "imm").mkdir()
        if subprocess.run(["chattr", "+i", str(tmp_path / "imm")], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        out, pattern = tmp_path / "imm" / "m.tflite", "Operation not permitted"
    try:
        r = run_cli("convert", str(tiny_checkpoint), "--seq-len", "16", "-o", str(out), "--timeout", "600")
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "imm")], capture_output=True)
    _one_line(r, 12, str(out), pattern)
    if where == "device":
        assert _is_device(out), "the device node was replaced by a regular file"


def test_prune_report_and_init_refuse_a_device_as_output(tmp_path, tiny_checkpoint):
    """A rename onto /dev/null (as root) replaced the device with a regular file, exit 0."""
    dev = _device(tmp_path / "null")
    r = run_cli("prune", str(tiny_checkpoint), "--recipe", "pruned-50", "--calibration", str(DEMO / "calibration.txt"),
                "--seq-len", "16", "-o", str(dev))
    _one_line(r, 12, "it exists and is a device")
    rep = tmp_path / "report.json"
    rep.write_text(report.to_json(_report()))
    _one_line(run_cli("report", str(rep), "-o", str(dev)), 12, "it exists and is a device")
    _one_line(run_cli("init", str(tiny_checkpoint), "-o", str(dev), "--force"), 12, "it exists and is a device")
    assert _is_device(dev)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_output_under_a_file_exits_12(tmp_path):
    rep = tmp_path / "report.json"
    rep.write_text(report.to_json(_report()))
    _one_line(run_cli("report", str(rep), "-o", str(rep / "comment.md")), 12, "report.json is not a directory")


def test_a_write_error_that_is_not_a_full_disk_is_an_output_error(tmp_path, monkeypatch):
    """EIO (or any error renaming the file into place) was an internal error (exit 10)."""
    (tmp_path / "f.txt").write_text("old")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error", str(dst))

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="Input/output error"):
        atomic_write_text(tmp_path / "f.txt", "new")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _old_report_set(out: Path) -> dict[str, str]:
    out.mkdir(exist_ok=True)
    for name in REPORT_FILES:
        (out / name).write_text(f"old {name}")
    return {name: f"old {name}" for name in REPORT_FILES}


def _contents(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in REPORT_FILES}


def test_a_full_disk_between_report_files_leaves_the_old_set(tmp_path, monkeypatch):
    """The third file (junit.xml) hits ENOSPC: before, report.md and report.html were already new beside the old
    report.json."""
    old = _old_report_set(tmp_path / "out")
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    with pytest.raises(OutputError, match="No space left on device"):
        report.write(_report(), tmp_path / "out")
    assert _contents(tmp_path / "out") == old
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)


def test_an_interrupt_while_report_files_are_written_leaves_the_old_set(tmp_path, monkeypatch):
    old = _old_report_set(tmp_path / "out")

    def interrupted(_rep):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "to_junit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write(_report(), tmp_path / "out")
    assert _contents(tmp_path / "out") == old
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)


def test_an_interrupt_during_the_renames_is_delivered_after_the_whole_set(tmp_path, monkeypatch):
    """SIGINT arriving right after the first rename: the set is still replaced whole, then the interrupt lands."""
    _old_report_set(tmp_path / "out")
    real_replace, sent = os.replace, []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if not sent:
            sent.append(dst)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(artifacts.os, "replace", replace_then_signal)
    with pytest.raises(KeyboardInterrupt):
        report.write(_report(), tmp_path / "out")
    new = _contents(tmp_path / "out")
    assert not [name for name, text in new.items() if text.startswith("old ")], new
    assert json.loads(new["report.json"])["passed"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)


def test_a_report_file_that_is_a_directory_is_refused_and_nothing_replaced(tmp_path):
    old = _old_report_set(tmp_path / "out")
    (tmp_path / "out" / "junit.xml").unlink()
    (tmp_path / "out" / "junit.xml").mkdir()
    with pytest.raises(OutputError, match="junit.xml: cannot write: it exists and is a directory"):
        report.write(_report(), tmp_path / "out")
    out = tmp_path / "out"
    assert {n: (out / n).read_text() for n in REPORT_FILES if n != "junit.xml"} == {
        n: t for n, t in old.items() if n != "junit.xml"}
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)


# 7: limits on the single-model commands -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["convert", "prune"])
def test_convert_and_prune_take_a_timeout(tmp_path, tiny_checkpoint, command):
    """A huge config.json ran the conversion for the fixed 900 s: there was no --timeout. (1 s: TensorFlow's import
    alone takes longer.)"""
    extra = ["--recipe", "pruned-50", "--calibration", str(DEMO / "calibration.txt")] if command == "prune" else []
    r = run_cli(command, str(tiny_checkpoint), "--seq-len", "16", "-o", str(tmp_path / "m.tflite"), *extra,
                "--timeout", "1")
    _one_line(r, 9, "timeout after 1 s")
    assert not (tmp_path / "m.tflite").exists()


def test_bench_cells_take_a_memory_cap_and_say_out_of_memory(converted):
    """`bench` children ran without a memory cap. 30 MB is far under Python, NumPy and LiteRT's start-up."""
    model, _ = converted
    r = run_cli("bench", str(model), "--text", str(DEMO / "calibration.txt"), "--memory-mb", "30", "--json")
    assert r.returncode == 8, r.stderr
    cell = json.loads(r.stdout)[0]
    assert cell["status"] == "failed" and "out of memory" in cell["reason"] and "30 MB" in cell["reason"], cell


# 8: no temporary files left in the user's $TMPDIR ----------------------------------------------------------

def test_a_conversion_leaves_nothing_in_tmpdir(converted):
    """TensorFlow's autograph left 8 __autograph_generated_file*.py per conversion of this model in $TMPDIR."""
    _, tmpdir = converted
    assert not list(tmpdir.glob("__autograph_generated_file*")), sorted(p.name for p in tmpdir.iterdir())
    assert not list(tmpdir.iterdir()), sorted(p.name for p in tmpdir.iterdir())


def test_isolated_children_get_a_private_tmpdir_removed_with_them(tmp_path, monkeypatch):
    from litegate.isolation import run_isolated

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = run_isolated("child_targets:write_in_tempdir", {}, timeout_s=60,
                     env={"PYTHONPATH": str(Path(__file__).parent)})
    assert Path(r["tempdir"]) != tmp_path and Path(r["file"]).parent == Path(r["tempdir"])
    assert not Path(r["tempdir"]).exists()
    assert not list(tmp_path.iterdir())

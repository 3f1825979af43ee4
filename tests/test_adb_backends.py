"""Execution backends that run where the hardware is: ``external:PATH.so`` and ``adb[:SERIAL]``.

Fast and TensorFlow-free: ``benchmark_model`` outputs are recorded format samples under
``tests/data/benchmark_model``, ``adb`` is a fake executable put first on PATH, and the real
delegate load uses a no-op delegate compiled here (skipped without a C compiler).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from litegate.backends import adb
from litegate.backends.benchmark_model import DelegateApplication, parse, strip_prefix
from litegate.backends.registry import backend_syntax_error, why_not_runnable
from litegate.backends.runtime import Runner
from litegate.backends.spec import backend_relative_to, parse_external
from litegate.benchmarks.matrix import run_cell
from litegate.errors import BenchmarkError, DelegateError
from litegate.types import Status

DATA = Path(__file__).parent / "data" / "benchmark_model"
SHA = "ab" * 32
PROTOCOL = {"warmup_runs": 2, "min_runs": 5, "min_seconds": 0.0, "max_runs": 20}


def sample(name: str) -> str:
    return (DATA / name).read_text()


# --- the benchmark_model parser -------------------------------------------------------------


def test_parse_reads_every_field_of_modern_output():
    out = parse(sample("modern_xnnpack.txt"))
    assert out.model_size_mb == 4.41873 and out.init_session_ms == 38.512
    assert (out.init_us, out.first_inference_us, out.warmup_avg_us, out.inference_avg_us) == (
        38512, 15321, 12204.6, 11893.2)
    assert out.warmup is not None and out.warmup.count == 41 and out.warmup.first_us == 15321
    inf = out.inference
    assert inf is not None and (inf.count, inf.min_us, inf.max_us, inf.avg_us, inf.std_us) == (84, 11431, 14102, 11893.2, 418)
    assert (inf.p5_us, inf.median_us, inf.p95_us) == (11468, 11802, 12754) and not inf.all_same
    assert (out.memory_delta_init_mb, out.memory_delta_overall_mb) == (9.375, 17.8438)
    assert out.peak_memory_monitored_mb == 24.5547 and out.peak_memory_overall_mb is None
    assert out.delegates == (DelegateApplication("XNNPACK", "partial", 3),)
    assert out.errors == () and out.delegate_errors == ()
    assert out.parameters["Num threads"] == "4" and out.parameters["#threads used for CPU inference"] == "4"


def test_parse_reads_legacy_peak_memory_and_full_gpu_delegation():
    out = parse(sample("legacy_gpu_full.txt"))
    assert (out.peak_memory_init_mb, out.peak_memory_overall_mb) == (4.92969, 138.809)
    assert out.memory_delta_overall_mb is None and out.peak_memory_monitored_mb is None
    assert out.delegates == (DelegateApplication("GPU", "full"),)
    assert out.inference is not None and out.inference.count == 50 and out.inference.median_us is None
    assert out.warmup is not None and out.warmup.count == 6 and out.warmup.first_us == 100521


def test_parse_reads_scientific_notation():
    out = parse(sample("scientific_gpu_partial.txt"))
    assert out.inference_avg_us == pytest.approx(2.95034e6) and out.init_us == pytest.approx(1.23456e7)
    assert out.init_session_ms == pytest.approx(1.23456e4)
    assert out.inference is not None and out.inference.median_us == pytest.approx(2.94688e6)
    assert out.memory_delta_overall_mb == pytest.approx(1034.12) and out.peak_memory_monitored_mb == pytest.approx(1105.16)
    assert out.delegates == (DelegateApplication("GPU", "partial", 9),)
    assert out.warmup is not None and out.warmup.all_same and out.warmup.p95_us == pytest.approx(3.41877e6)


def test_parse_strips_full_logcat_lines_and_reads_no_delegation():
    out = parse(sample("logcat_threadtime_gpu_none.txt"))
    assert out.delegates == (DelegateApplication("GPU", "none"),)
    assert out.inference is not None and out.inference.count == 59 and out.inference.p95_us == 17620
    assert out.init_us == 40125 and out.peak_memory_monitored_mb == 37.8125 and out.model_size_mb == 17.5594
    assert out.parameters["Graph"] == "/data/local/tmp/litegate/9a1b2c3d4e5f6071.tflite"


def test_parse_strips_logcat_tag_and_brief_prefixes():
    out = parse(sample("logcat_tag_nnapi_partial.txt"))
    assert out.delegates == (DelegateApplication("NNAPI", "partial", 11),)
    assert out.inference is not None and out.inference.avg_us == 143630 and out.warmup is not None
    assert out.peak_memory_monitored_mb == 19.0117  # from the ``I/tflite  ( 8812):`` line


@pytest.mark.parametrize("line,expected", [
    ("INFO: count=3 curr=1", ("I", "count=3 curr=1")),
    ("ERROR: Failed to allocate tensors!", ("E", "Failed to allocate tensors!")),
    ("WARNING: Could not create Hexagon delegate", ("W", "Could not create Hexagon delegate")),
    ("I tflite  : Initialized session in 3ms.", ("I", "Initialized session in 3ms.")),
    ("11-21 10:00:00.123  1234  1234 I tflite  : STARTING!", ("I", "STARTING!")),
    ("2024-11-21 10:00:00.123  1234  1235 E tflite  : ERROR: boom", ("E", "boom")),
    ("E/tflite  ( 8812): Node number 3 failed", ("E", "Node number 3 failed")),
    ("count=50 first=1 curr=2", ("", "count=50 first=1 curr=2")),
])
def test_strip_prefix_handles_every_channel(line, expected):
    assert strip_prefix(line) == expected


def test_parse_fills_short_all_same_form_from_its_single_value():
    out = parse(sample("all_same.txt"))
    assert out.warmup is not None and out.warmup.all_same and out.warmup.count == 1 and out.warmup.min_us == 412
    inf = out.inference
    assert inf is not None and inf.all_same and inf.count == 3 and (inf.min_us, inf.max_us, inf.std_us) == (398, 398, 0)
    assert inf.median_us is None  # not printed: not invented


def test_parse_orders_phases_when_output_has_only_statistics_lines():
    out = parse(sample("stats_only.txt"))
    assert out.warmup is not None and out.warmup.count == 12
    assert out.inference is not None and out.inference.count == 80
    assert out.init_session_ms is None and out.model_size_mb is None


def test_parse_single_unlabelled_count_line_is_matched_to_the_average_it_equals():
    line = "count=7 first=10 curr=11 min=9 max=12 avg=10.5 std=1\n"
    inf = parse(line + "Inference timings in us: Init: 1, First inference: 20, Warmup (avg): 15, Inference (avg): 10.5")
    assert inf.inference is not None and inf.warmup is None
    unknown = parse(line)
    assert unknown.inference is None and unknown.warmup is None and len(unknown.runs) == 1


def test_parse_reads_tf1_average_timings():
    out = parse(sample("tf1_average.txt"))
    assert (out.init_us, out.warmup_avg_us, out.inference_avg_us) == (2870, 247880, 233506)
    assert out.first_inference_us is None and out.init_session_ms == 2.87
    assert out.inference is not None and out.inference.count == 50 and out.warmup is not None


def test_parse_collects_hexagon_creation_failure_as_a_delegate_error():
    out = parse(sample("hexagon_failed.txt"))
    line = "Could not create Hexagon delegate: platform may not support delegate or required libraries are missing"
    assert out.delegate_errors == (line,) and line in out.errors
    assert out.delegates == (DelegateApplication("XNNPACK", "partial", 2),)


def test_parse_collects_error_lines_and_reports_absent_fields_as_none():
    out = parse(sample("missing_op_error.txt"))
    assert out.errors[-1] == "Benchmarking failed." and "Node number 12 (FlexErf) failed to prepare." in out.errors
    assert out.inference is None and out.init_us is None and out.peak_memory_monitored_mb is None
    empty = parse("")
    assert empty == type(empty)()


def test_parse_result_is_frozen_and_serialisable():
    out = parse(sample("modern_xnnpack.txt"))
    with pytest.raises(AttributeError):
        out.init_us = 1.0  # type: ignore[misc]
    assert json.loads(json.dumps(out.to_dict()))["inference"]["count"] == 84


# --- from parsed output to bench fields -------------------------------------------------------


def test_summarize_output_maps_percentiles_and_says_where_they_came_from():
    s = adb.summarize_output(parse(sample("modern_xnnpack.txt")))
    lat = s["latency"]
    assert lat["p50"] == pytest.approx(11.802) and lat["p90"] == pytest.approx(12.754) and lat["p99"] == pytest.approx(14.102)
    assert lat["mean"] == pytest.approx(11.8932) and lat["std"] == pytest.approx(0.418) and lat["n"] == 84
    assert s["init_ms"] == pytest.approx(38.512) and s["first_ms"] == pytest.approx(15.321)
    assert s["peak_rss_mb"] == 24.5547
    fields = s["protocol"]["latency_fields"]
    assert fields["p90"] == "p95 (upper bound)" and fields["p99"] == "max (upper bound)" and fields["samples"] == "not available"


def test_summarize_output_without_percentiles_uses_avg_and_legacy_peak():
    s = adb.summarize_output(parse(sample("legacy_gpu_full.txt")))
    assert s["latency"]["p50"] == pytest.approx(80.2047) and s["latency"]["p90"] == pytest.approx(84.417)
    assert s["protocol"]["latency_fields"]["p50"] == "avg (no median printed)"
    assert s["peak_rss_mb"] == 138.809 and s["protocol"]["peak_memory_source"] == "peak memory footprint (overall)"


def test_summarize_output_raises_the_tools_line_for_a_delegate_it_could_not_create():
    with pytest.raises(DelegateError, match="^Could not create Hexagon delegate: platform may not support"):
        adb.summarize_output(parse(sample("hexagon_failed.txt")))


def test_summarize_output_raises_the_last_error_line_of_a_failed_run():
    with pytest.raises(BenchmarkError, match="Benchmarking failed"):
        adb.summarize_output(parse(sample("missing_op_error.txt")), returncode=1)
    with pytest.raises(BenchmarkError, match="no inference statistics"):
        adb.summarize_output(parse("INFO: STARTING!\n"))


# --- backend syntax -------------------------------------------------------------------------


def test_parse_adb_backend_forms():
    assert adb.parse_backend("adb") == adb.AdbSpec()
    spec = adb.parse_backend("adb:192.168.1.7:5555?delegate=gpu&gpu_precision_loss_allowed=true")
    assert spec.serial == "192.168.1.7:5555" and spec.delegate == "gpu"
    assert dict(spec.flags) == {"gpu_precision_loss_allowed": "true"}
    assert adb.parse_backend("adb?benchmark_model=/opt/bm%20x").benchmark_model == "/opt/bm x"


@pytest.mark.parametrize("backend,message", [
    ("adb?delegate=tpu", "delegate='tpu' is not one of"),
    ("adb:emu?num_threads=4", "--num_threads is set by litegate"),
    ("adb:bad serial", "device serial"),
    ("adb?device_dir=tmp", "absolute device path"),
    ("adb?Bad-Flag=1", "not a benchmark_model flag name"),
    ("adb?delegate", "key=value"),
])
def test_parse_adb_backend_rejects_mistakes(backend, message):
    with pytest.raises(ValueError, match=message):
        adb.parse_backend(backend)
    assert message in (backend_syntax_error(backend) or "")


def test_parse_external_backend_decodes_options():
    spec = parse_external("external:/opt/vx/libvx_delegate.so?logging_level=1&cache_dir=%2Ftmp%2Fc")
    assert spec.library == "/opt/vx/libvx_delegate.so" and dict(spec.options) == {"logging_level": "1", "cache_dir": "/tmp/c"}
    assert parse_external("external:libedgetpu.so.1").options == {}
    for bad in ("external:", "external:/x.so?a=1&a=2"):
        assert backend_syntax_error(bad)


def test_backend_syntax_accepts_every_form_and_names_them_for_unknown_ones():
    for ok in ("xnnpack", "hexagon", "external:/x/lib.so", "adb", "adb:emulator-5554", "adb?delegate=nnapi"):
        assert backend_syntax_error(ok) is None, ok
    msg = backend_syntax_error("tpu")
    assert msg and "unknown backend 'tpu'" in msg and "external:PATH.so" in msg and "adb[:SERIAL]" in msg
    assert backend_syntax_error(3) == "a backend must be a string, got 3"


def test_relative_external_path_is_resolved_against_a_folder(tmp_path):
    assert backend_relative_to("external:libs/d.so?x=1", tmp_path) == f"external:{tmp_path / 'libs' / 'd.so'}?x=1"
    for unchanged in ("external:/abs/d.so", "external:libedgetpu.so.1", "adb:emu", "xnnpack"):
        assert backend_relative_to(unchanged, tmp_path) == unchanged


def test_config_accepts_external_and_adb_backends(tmp_path):
    from conftest import write_config

    from litegate.config import load
    from litegate.errors import ConfigError

    path = write_config(tmp_path, model=tmp_path)
    text = path.read_text()
    good = text.replace("[bench]\n", '[bench]\nbackends = ["xnnpack", "external:libs/d.so?k=v", "adb", "adb:emu?delegate=gpu"]\n')
    path.write_text(good)
    cfg = load(path)
    assert cfg.bench.backends == ("xnnpack", f"external:{tmp_path / 'libs' / 'd.so'}?k=v", "adb", "adb:emu?delegate=gpu")
    path.write_text(text.replace("[bench]\n", '[bench]\nbackends = ["adb?delegate=tpu"]\n'))
    with pytest.raises(ConfigError, match="bench.backends.*delegate='tpu'"):
        load(path)


def test_cli_bench_rejects_a_malformed_backend():
    from litegate.cli import cli

    res = CliRunner().invoke(cli, ["bench", "m.tflite", "--text", "t.txt", "--backend", "xnnpack,adb?delegate=tpu"])
    assert res.exit_code == 2 and "delegate='tpu'" in res.output


# --- a fake adb ---------------------------------------------------------------------------------

FAKE_ADB = r'''
import json, os, sys
sc = json.load(open(os.environ["FAKE_ADB_SCENARIO"]))
args = sys.argv[1:]
with open(sc["log"], "a") as f:
    f.write(json.dumps(args) + "\n")
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
cmd = args[0] if args else ""
if cmd == "devices":
    if sc.get("devices_fail"):
        print("adb: failed to check server version: cannot connect to daemon", file=sys.stderr)
        sys.exit(1)
    print("* daemon not running; starting now at tcp:5037")
    print("* daemon started successfully")
    print("List of devices attached")
    for s, state in sc["devices"]:
        print(f"{s}\t{state}")
    print()
    sys.exit(0)
if dict(sc["devices"]).get(serial) != "device":
    print(f"adb: device '{serial}' not found", file=sys.stderr)
    sys.exit(1)
if cmd == "push":
    local = args[1]
    if not os.path.exists(local):
        print(f"adb: error: cannot stat '{local}': No such file or directory", file=sys.stderr)
        sys.exit(1)
    print(f"{local}: 1 file pushed, 0 skipped. 41.2 MB/s ({os.path.getsize(local)} bytes in 0.001s)")
    sys.exit(0)
if cmd == "shell":
    line = " ".join(args[1:])
    if line == "getprop":
        print("[ro.product.manufacturer]: [Google]\n[ro.product.model]: [Pixel 7]\n"
              "[ro.build.version.release]: [14]\n[ro.build.version.sdk]: [34]\n[ro.board.platform]: [gs201]")
    elif "--graph=" in line:
        if sc.get("hang"):
            import time
            time.sleep(120)
        sys.stdout.write(open(sc["output"]).read())
        if "__litegate_rc=" in line:
            print(f"__litegate_rc={sc.get('rc', 0)}")
    sys.exit(0)
print(f"fake adb: unexpected {args}", file=sys.stderr)
sys.exit(2)
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """Install a fake ``adb`` first on PATH; returns a function that sets its scenario."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "adb"
    exe.write_text(f"#!{sys.executable}\n{FAKE_ADB}")
    exe.chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake android binary")
    log = tmp_path / "adb.log"
    scenario = tmp_path / "scenario.json"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ADB_SCENARIO", str(scenario))
    monkeypatch.setenv(adb.BINARY_ENV, str(binary))

    def configure(devices=(("emulator-5554", "device"),), output="modern_xnnpack.txt", rc=0, **extra):
        scenario.write_text(json.dumps({"devices": [list(d) for d in devices], "output": str(DATA / output), "rc": rc,
                                        "log": str(log), **extra}))

        def calls() -> list[list[str]]:
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        return calls

    configure.binary = binary  # type: ignore[attr-defined]
    return configure


@pytest.fixture
def model(tmp_path) -> Path:
    # a real (tiny) flatbuffer: every model is verified before it is pushed or loaded
    return tiny_add_model(tmp_path / "m.tflite")


def adb_cell(model: Path, backend: str, threads: int = 1, timeout_s: float = 60):
    return run_cell(path=model, sha256=SHA, variant="int8", backend=backend, threads=threads, inputs_npz="unused.npz",
                    protocol=PROTOCOL, timeout_s=timeout_s)


def test_adb_cell_runs_benchmark_model_on_the_device(fake_adb, model):
    calls = fake_adb()
    r = adb_cell(model, "adb?delegate=gpu&gpu_precision_loss_allowed=true", threads=2)
    assert r.status is Status.OK, r.reason
    assert r.latency is not None and r.latency.p50 == pytest.approx(11.802) and r.latency.n == 84
    assert r.init_ms == pytest.approx(38.512) and r.first_ms == pytest.approx(15.321) and r.peak_rss_mb == 24.5547
    assert r.samples_ms == () and r.backend == "adb?delegate=gpu&gpu_precision_loss_allowed=true" and r.threads == 2
    p = r.protocol
    assert p["source"] == "benchmark_model" and p["device"] == "emulator-5554" and p["min_runs"] == 5
    assert p["device_info"]["model"] == "Pixel 7" and p["delegate"] == "gpu"
    assert "--use_gpu=true" in p["command"] and "--gpu_precision_loss_allowed=true" in p["command"]
    # the fixture's output says nothing about the GPU delegate: the result says so instead of guessing
    assert "did not say whether the GPU delegate was applied" in r.reason
    log = calls()
    assert log[0] == ["devices"]
    pushes = [c for c in log if c[2:3] == ["push"]]
    assert [c[3] for c in pushes] == [str(fake_adb.binary), str(model)]
    assert pushes[1][4] == f"/data/local/tmp/litegate/{SHA[:16]}.tflite"
    run = next(c for c in log if c[2:3] == ["shell"] and "--graph=" in c[3])
    for flag in ("--num_threads=2", "--warmup_runs=2", "--num_runs=5", "--min_secs=0",
                 "--report_peak_memory_footprint=true", f"--graph=/data/local/tmp/litegate/{SHA[:16]}.tflite"):
        assert flag in run[3]
    assert any(c[2:3] == ["shell"] and c[3].startswith("rm -f ") for c in log)


def test_adb_cell_reports_a_graph_the_delegate_did_not_take(fake_adb, model):
    fake_adb(output="logcat_threadtime_gpu_none.txt")
    r = adb_cell(model, "adb:emulator-5554?delegate=gpu")
    assert r.status is Status.OK and "executed no part of the graph" in r.reason
    assert r.protocol["delegates"] == [{"delegate": "GPU", "execution": "none", "kernels": None}]


def test_adb_cell_fails_with_the_hexagon_line(fake_adb, model):
    fake_adb(output="hexagon_failed.txt")
    r = adb_cell(model, "adb:emulator-5554?delegate=hexagon")
    assert r.status is Status.FAILED
    assert r.reason == ("Could not create Hexagon delegate: platform may not support delegate or required libraries "
                        "are missing")


def test_adb_cell_fails_with_the_tools_last_error(fake_adb, model):
    fake_adb(output="missing_op_error.txt", rc=1)
    r = adb_cell(model, "adb")
    assert r.status is Status.FAILED and r.reason == "Benchmarking failed."


def test_adb_cell_that_hangs_on_the_device_times_out(fake_adb, model):
    fake_adb(hang=True)
    r = adb_cell(model, "adb", timeout_s=4)
    assert r.status is Status.TIMEOUT and "timeout after 4 s" in r.reason and r.protocol["device"] == "emulator-5554"


@pytest.mark.parametrize("devices,backend,reason", [
    ((), "adb", "no device attached"),
    ((("emulator-5554", "device"),), "adb:R58M12345", "device R58M12345 not found (attached: emulator-5554)"),
    ((("R58M12345", "unauthorized"),), "adb:R58M12345", "device R58M12345 is unauthorized: accept the USB debugging"),
    ((("R58M12345", "offline"),), "adb", "no device ready: R58M12345 is offline"),
    ((("a", "device"), ("b", "device")), "adb", "2 devices attached (a, b): name one as adb:SERIAL"),
])
def test_adb_cell_is_not_run_without_a_usable_device(fake_adb, model, devices, backend, reason):
    calls = fake_adb(devices=devices)
    r = adb_cell(model, backend)
    assert r.status is Status.NOT_RUN and r.reason.startswith(reason), r.reason
    assert calls() == [["devices"]]  # nothing pushed, nothing run


def test_adb_cell_is_not_run_when_adb_devices_fails(fake_adb, model):
    fake_adb(devices_fail=True)
    r = adb_cell(model, "adb")
    assert r.status is Status.NOT_RUN and "adb devices failed (exit 1)" in r.reason and "cannot connect" in r.reason


def test_adb_cell_is_not_run_without_a_benchmark_model_binary(fake_adb, model, monkeypatch, tmp_path):
    fake_adb()
    monkeypatch.delenv(adb.BINARY_ENV)
    r = adb_cell(model, "adb")
    assert r.status is Status.NOT_RUN and adb.BINARY_ENV in r.reason and "?benchmark_model=PATH" in r.reason
    r = adb_cell(model, f"adb?benchmark_model={tmp_path / 'nope'}")
    assert r.status is Status.NOT_RUN and r.reason == f"benchmark_model binary {tmp_path / 'nope'} does not exist"
    monkeypatch.setenv(adb.BINARY_ENV, str(tmp_path / "missing"))
    assert "does not exist" in (why_not_runnable("adb") or "")


def test_adb_cell_is_not_run_when_adb_is_missing(model, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = adb_cell(model, "adb:emulator-5554")
    assert r.status is Status.NOT_RUN and r.reason.startswith("adb not found on PATH")


def test_adb_backend_cannot_run_in_process(model):
    with pytest.raises(DelegateError, match="adb backends run benchmark_model on the device"):
        Runner(model, backend="adb")


def test_doctor_shows_adb_devices_and_external_usage(fake_adb, monkeypatch, tmp_path):
    from litegate.doctor import check

    fake_adb(devices=(("emulator-5554", "device"), ("R58M12345", "unauthorized")))
    rows = {r["name"]: r for r in check()}
    assert rows["backend adb"]["ok"] and "emulator-5554 (device)" in rows["backend adb"]["detail"]
    assert "R58M12345 (unauthorized)" in rows["backend adb"]["detail"]
    assert rows["benchmark_model"]["ok"] and "external:/path/libdelegate.so" in rows["backend external"]["detail"]
    fake_adb(devices=())
    monkeypatch.delenv(adb.BINARY_ENV)
    rows = {r["name"]: r for r in check()}
    assert not rows["backend adb"]["ok"] and rows["backend adb"]["detail"].endswith("no device attached")
    assert "adb connect" in rows["backend adb"]["fix"]
    assert not rows["benchmark_model"]["ok"] and adb.BINARY_ENV in rows["benchmark_model"]["fix"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    row = {r["name"]: r for r in check()}["backend adb"]
    assert row["detail"] == "adb not found on PATH" and "platform-tools" in row["fix"]


# --- external delegates -------------------------------------------------------------------------


def test_external_cell_with_a_missing_library_is_not_run(model, tmp_path):
    lib = tmp_path / "libnope_delegate.so"
    r = run_cell(path=model, sha256=SHA, variant="fp32", backend=f"external:{lib}?a=1", threads=1,
                 inputs_npz="unused.npz", protocol=PROTOCOL, timeout_s=60)
    assert r.status is Status.NOT_RUN and r.reason == f"delegate library {lib} does not exist"


def test_external_runner_with_a_missing_library_raises_a_delegate_error(model, tmp_path):
    with pytest.raises(DelegateError, match="libnope.so does not exist"):
        Runner(model, backend=f"external:{tmp_path / 'libnope.so'}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses glibc's libm.so.6 as a non-delegate library")
def test_external_library_that_is_not_a_delegate_is_a_delegate_error(model):
    # a bare file name goes to the dynamic loader's search path
    with pytest.raises(DelegateError, match=r"libm.so.6: it is not a TFLite external delegate \(no tflite_plugin_create"):
        Runner(model, backend="external:libm.so.6")
    with pytest.raises(DelegateError, match="cannot load delegate libno_such_delegate.so: .*cannot open shared object"):
        Runner(model, backend="external:libno_such_delegate.so")


NOOP_DELEGATE_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* TfLiteDelegate's leading fields (tensorflow/lite/core/c/common.h), padded; Prepare claims no node. */
typedef struct NoopDelegate {
  void* data_;
  int (*Prepare)(void* context, struct NoopDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
  char reserved[128];
} NoopDelegate;
static int prepare_calls = 0;
static int num_options = -1;
static int noop_prepare(void* context, NoopDelegate* delegate) { (void)context; (void)delegate; return ++prepare_calls, 0; }
int noop_prepare_calls(void) { return prepare_calls; }
int noop_num_options(void) { return num_options; }
NoopDelegate* tflite_plugin_create_delegate(char** keys, char** values, int n, void (*report_error)(const char*)) {
  for (int i = 0; i < n; i++)
    if (strcmp(keys[i], "fail") == 0) { report_error(values[i]); return NULL; }
  num_options = n;
  NoopDelegate* d = calloc(1, sizeof(NoopDelegate));
  d->Prepare = noop_prepare;
  return d;
}
void tflite_plugin_destroy_delegate(NoopDelegate* d) { free(d); }
"""


@pytest.fixture(scope="module")
def noop_delegate(tmp_path_factory) -> Path:
    """A real external-delegate library (claims no node) built with the system C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build a test delegate (the installed ai_edge_litert wheel ships none)")
    folder = tmp_path_factory.mktemp("delegate")
    (folder / "noop.c").write_text(NOOP_DELEGATE_C)
    lib = folder / "libnoop_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(folder / "noop.c")], check=True, timeout=120)
    return lib


def tiny_add_model(path: Path) -> Path:
    """A one-op float model ``y = x + x`` (x: [1, 4]) with a ``serving_default`` signature, built without TensorFlow."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    tensors = []
    for name in (b"x", b"y"):
        t = s.TensorT()
        t.shape, t.type, t.name, t.buffer = [1, 4], s.TensorType.FLOAT32, name, 0
        tensors.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [0], [1], [op], b"main"
    maps = []
    for name, index in ((b"x", 0), (b"y", 1)):
        m = s.TensorMapT()
        m.name, m.tensorIndex = name, index
        maps.append(m)
    sig = s.SignatureDefT()
    sig.inputs, sig.outputs, sig.signatureKey, sig.subgraphIndex = [maps[0]], [maps[1]], b"serving_default", 0
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers, model.signatureDefs = [s.BufferT()], [sig]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


def test_external_delegate_is_really_loaded_with_its_options(noop_delegate, tmp_path):
    path = tiny_add_model(tmp_path / "add.tflite")
    runner = Runner(path, backend=f"external:{noop_delegate}?cache=%2Ftmp&level=2")
    out = runner({"x": np.arange(4, dtype=np.float32).reshape(1, 4)})
    np.testing.assert_allclose(out["y"], [[0, 2, 4, 6]])
    lib = ctypes.CDLL(str(noop_delegate))  # the same loaded library: its counters show the delegate was applied
    assert lib.noop_prepare_calls() >= 1 and lib.noop_num_options() == 2


def test_external_delegate_that_refuses_its_options_is_a_delegate_error(noop_delegate, tmp_path):
    path = tiny_add_model(tmp_path / "add.tflite")
    with pytest.raises(DelegateError, match="cannot load delegate .*libnoop_delegate.so: .*refused: bad option"):
        Runner(path, backend=f"external:{noop_delegate}?fail=refused:%20bad%20option")


def test_external_delegate_cell_is_measured_in_a_child_process(noop_delegate, tmp_path):
    path = tiny_add_model(tmp_path / "add.tflite")
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    r = run_cell(path=path, sha256=SHA, variant="fp32", backend=f"external:{noop_delegate}", threads=1,
                 inputs_npz=npz, protocol=PROTOCOL, timeout_s=120)
    assert r.status is Status.OK, r.reason
    assert r.latency is not None and r.latency.n >= 5 and r.protocol["n_inputs"] == 3
    bad = run_cell(path=path, sha256=SHA, variant="fp32", backend=f"external:{noop_delegate}?fail=no%20device",
                   threads=1, inputs_npz=npz, protocol=PROTOCOL, timeout_s=120)
    assert bad.status is Status.FAILED and "no device" in bad.reason

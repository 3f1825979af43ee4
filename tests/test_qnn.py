"""qnn:SOC targets: Qualcomm's own HTP compiler (LiteRT's AOT Qualcomm plugin with the QNN x86_64 libraries).

The compile tests run the real compiler on models made here (skipped with the reason where the registry could not
provide the `litegate[qualcomm]` extra); the parsing and not-installed paths run everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DEMO, ROOT, run_cli, write_config

from litegate.backends import qnn as htp
from litegate.cli import cli
from litegate.compat import qnn
from litegate.types import ModelSource, Status

UNAVAILABLE = htp.why_not_available()
needs_compiler = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"Qualcomm compiler unavailable: {UNAVAILABLE}")

# Real log lines of the compiler (QAIRT 2.51, ai-edge-litert 2.3.0): the demo's int16x8 on SM8450 and char GPT-2.
STDERR = """\
ERROR: [qnn_manager.cc:480]
QNN op validation failed: 'MatMul_25' (type=MatMul)
  QNN error=3110. See the QNN validator log lines above for the specific reason.
ERROR: [qnn_compiler_plugin.cc:538]
LiteRT Op #23 'BatchMatmul' (code=126) is not supported in Qualcomm Compiler.
INFO: [compiler_plugin.cc:742] Partitioned subgraph<0>, selected 99 ops, from a total of 100 ops. resulted in 2 partitions.
ERROR: [qnn_manager.cc:480]
QNN op validation failed: 'StridedSlice_3' (type=StridedSlice)
ERROR: [qnn_compiler_plugin.cc:538]
LiteRT Op #3 'StridedSlice' (code=45) is not supported in Qualcomm Compiler.
INFO: [compiler_plugin.cc:742] Partitioned subgraph<1>, selected 175 ops, from a total of 176 ops. resulted in 2 partitions.
"""
STDOUT = """\
     0.0ms [  INFO ] validateOpConfig started for MatMul_25
     0.0ms [ ERROR ]  <E> [4294967295] has incorrect Value 69, expected >= 73.     0.0ms [ ERROR ]  Op specific validation failed.
     0.0ms [ ERROR ]   <E> Failed to validate op MatMul_25 with error 0xc26
     0.0ms [  INFO ] validateOpConfig started for StridedSlice_3
 10000.0ms [ ERROR ]  Output[0] has incorrect Rank 1.
 12000.0ms [ ERROR ]  Op specific validation failed.
     0.0ms [ ERROR ]   <E> Failed to validate op StridedSlice_3 with error 0xc26
     0.0ms [ ERROR ]  unexpected GraphHtpSettings option 66
"""


def test_parse_log_assigns_each_refused_op_to_its_subgraph_with_qnns_reasons():
    v = htp.parse_log(STDERR, STDOUT)
    assert v["subgraphs"] == [{"index": 0, "offloaded": 99, "total": 100, "partitions": 2},
                              {"index": 1, "offloaded": 175, "total": 176, "partitions": 2}]
    (mm, ss) = v["refused"]
    assert (mm["subgraph"], mm["op_index"], mm["op"], mm["qnn_op"]) == (0, 23, "BatchMatmul", "MatMul_25")
    assert mm["reasons"] == ["[4294967295] has incorrect Value 69, expected >= 73."]
    assert (ss["subgraph"], ss["op_index"], ss["op"]) == (1, 3, "StridedSlice")
    assert ss["reasons"] == ["Output[0] has incorrect Rank 1."]


def test_unknown_soc_exits_2_naming_the_socs_the_compiler_knows(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 64)
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "qnn:SM9999"])
    assert res.exit_code == 2
    assert "unknown Snapdragon SoC 'SM9999'" in res.output and "SM8650" in res.output and "SM8350" in res.output


def test_without_the_libraries_check_says_not_run_with_the_fix_and_doctor_agrees(monkeypatch, tmp_path):
    from test_compat import _mlp_bytes

    from litegate import doctor

    monkeypatch.setattr(htp, "toolchain", lambda: (None, f"Qualcomm's QNN libraries are not installed: {htp.INSTALL}"))
    model = tmp_path / "mlp.tflite"
    model.write_bytes(_mlp_bytes())
    res = CliRunner().invoke(cli, ["check", str(model), "--delegate", "gpu,qnn:SM8650", "--format", "json"])
    assert res.exit_code == 0, res.output
    gpu, q = json.loads(res.output)
    assert gpu["status"] == "ok" and gpu["delegated_fraction"] == 1.0
    assert q["status"] == "not_run" and q["ops"] == [] and "pip install 'litegate[qualcomm]'" in q["reason"]
    text = CliRunner().invoke(cli, ["check", str(model), "--delegate", "qnn:SM8650"]).output
    assert text.startswith("qnn:SM8650: not run: Qualcomm's QNN libraries are not installed")
    row = next(r for r in doctor.check() if r["name"] == "compat qnn")
    assert row["ok"] is False and row["fix"] == qnn.INSTALL


@pytest.fixture(scope="module")
def demo_tflite(tmp_path_factory: pytest.TempPathFactory):
    """The embedded default converted once per recipe for this module (a real .tflite for the compiler)."""
    from litegate.api import convert_model

    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            out = tmp_path_factory.mktemp("qnn") / f"{recipe}.tflite"
            convert_model(ModelSource(kind="hf-bert", path=str(DEMO / "model"), task="text-classification", seq_len=64),
                          out, recipe=recipe, calibration=DEMO / "calibration.txt", samples=40)
            made[recipe] = out
        return made[recipe]

    return get


@needs_compiler
@pytest.mark.slow
def test_demo_int8_compiles_whole_for_sm8650_and_fp32_fails_graph_finalize_on_sm8350(demo_tflite):
    from litegate.compat.check import check_model

    (int8,) = check_model(demo_tflite("int8"), ["qnn:SM8650"])
    assert int8.status is Status.OK and int8.delegated_ops == int8.total_ops > 100 and int8.fully_delegated
    assert int8.extra["compile_status"] == "compiled" and int8.extra["compiled_bytes"] > 100_000
    assert int8.extra["compiler_subgraphs"] == [{"index": 0, "offloaded": int8.total_ops, "total": int8.total_ops,
                                                 "partitions": 1}]
    fp32_8650, fp32_8350 = check_model(demo_tflite("fp32"), ["qnn:SM8650", "qnn:SM8350"])
    assert fp32_8650.fully_delegated
    # Every op validates on SM8350 (v68), yet the graph fails at finalize: only a full compile tells.
    assert fp32_8350.extra["compiler_subgraphs"][0]["offloaded"] == fp32_8350.total_ops
    assert fp32_8350.delegated_ops == 0 and fp32_8350.extra["compiled_bytes"] is None
    assert "failed to compile" in fp32_8350.model_reason and "Gather" in fp32_8350.model_reason


@needs_compiler
@pytest.mark.slow
def test_int16x8_names_the_16_bit_matmuls_older_htps_refuse(demo_tflite):
    r = run_cli("check", str(demo_tflite("int16x8")), "--delegate", "qnn:SM8450,qnn:SM8650", "--format", "json")
    assert r.returncode == 0, r.stderr
    sm8450, sm8650 = json.loads(r.stdout)
    refused = [o for o in sm8450["ops"] if not o["supported"]]
    assert refused and {o["op"] for o in refused} == {"BATCH_MATMUL"}
    assert all("v69" in o["reason"] and "v73" in o["reason"] for o in refused)
    assert len(sm8450["partitions"]) == sm8450["extra"]["compiler_subgraphs"][0]["partitions"] > 1
    assert all(o["delegated"] for o in sm8650["ops"])


@needs_compiler
@pytest.mark.slow
def test_char_gpt2_decode_names_strided_slice_as_refused(tmp_path):
    out = tmp_path / "gpt2.tflite"
    r = run_cli("convert", "--from", "hf-gpt2", str(ROOT / "examples" / "textgen" / "char-gpt2"), "--seq-len", "32",
                "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = run_cli("check", str(out), "--delegate", "qnn:SM8650")
    assert r.returncode == 0, r.stderr
    assert "STRIDED_SLICE" in r.stdout and "Output[0] has incorrect Rank 1." in r.stdout
    assert "qnn:SM8650:" in r.stdout and "compile:" in r.stdout
    # litegate owns the graph: its rewrite (1-D gathers, slices without shrink masks) is taken whole.
    friendly = tmp_path / "gpt2-friendly.tflite"
    r = run_cli("convert", "--from", "hf-gpt2", str(ROOT / "examples" / "textgen" / "char-gpt2"), "--seq-len", "32",
                "--gpu-friendly", "-o", str(friendly))
    assert r.returncode == 0, r.stderr
    r = run_cli("check", str(friendly), "--delegate", "qnn:SM8650", "--format", "json")
    (rep,) = json.loads(r.stdout)
    assert rep["status"] == "ok" and rep["ops"] and all(o["delegated"] for o in rep["ops"])


def test_a_qnn_target_switches_the_delegate_friendly_graph_on_by_default(tmp_path):
    from litegate.config import load

    plain = load(write_config(tmp_path / "a", model=DEMO / "model"))
    npu = load(write_config(tmp_path / "b", model=DEMO / "model", extra='[check]\ndelegates = ["qnn:SM8650"]\n'))
    assert "gpu_friendly" not in plain.model.source.options
    assert npu.model.source.options.get("gpu_friendly") is True and npu.delegates == ("qnn:SM8650",)
    off = write_config(tmp_path / "c", model=DEMO / "model", extra='[check]\ndelegates = ["qnn"]\n')
    off.write_text(off.read_text().replace("seq_len = 32", "seq_len = 32\ngpu_friendly = false"))
    assert "gpu_friendly" not in load(off).model.source.options  # an explicit choice wins


@needs_compiler
@pytest.mark.slow
def test_release_report_shows_the_qnn_column_beside_the_legacy_hexagon_nn_rules(tmp_path):
    cfg = write_config(tmp_path, model=DEMO / "model", seq_len=64, variants=("fp32", "int8", "auto-npu"),
                       extra='[check]\ndelegates = ["gpu", "hexagon", "qnn:SM8650"]\nemulate_samples = 12\n')
    r = run_cli("run", str(cfg))
    assert r.returncode in (0, 1), r.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "delegated ops % (gpu / hexagon_nn (legacy) / qnn:SM8650)" in md
    # The ship-per-target table: the NPU gets the smallest variant that it takes whole and that meets its budgets.
    assert "| target | ship | why |" in md
    # int8 compiles whole but crashes QNN's HTP emulator (see test_demo_int8_crashes_the_htp_emulator...), so the NPU
    # gets the smallest variant that both compiles whole and runs there: auto-npu, fully integer (litert-quantizer's
    # int8/int16 graph, without the residual-smoothing spelling the emulator crashes on), before fp32.
    assert "| qnn:SM8650 | **auto-npu** |" in md and "passed over: int8: the HTP emulator crashed: SIGSEGV" in md
    assert "| fp32 | qnn:SM8650 (emulated HTP) |" in md and "numerics only, no latency" in md
    assert "| auto-npu | qnn:SM8650 (emulated HTP) |" in md
    assert "| hexagon_nn (legacy) | — | no variant that meets its budgets runs whole here" in md
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    q = next(c for c in int8["compat"] if c["delegate"] == "qnn:SM8650")
    assert q["status"] == "ok" and q["delegated_fraction"] == 1.0 and q["extra"]["compiled_bytes"] > 0
    npu = next(v for v in rep["variants"] if v["name"] == "auto-npu")
    q = next(c for c in npu["compat"] if c["delegate"] == "qnn:SM8650")
    assert q["status"] == "ok" and q["delegated_fraction"] == 1.0
    assert npu["quant"]["auto"]["islands"] == "int16" and npu["quant"]["auto"]["met"]
    assert npu["size"]["bytes"] < int8["size"]["bytes"] * 1.1
    html = (tmp_path / "out" / "report.html").read_text()
    assert "hexagon_nn (legacy)" in html and "qnn:SM8650" in html
    assert "Accuracy on other backends" in html and "qnn:SM8650 (emulated HTP)" in html


@pytest.fixture(scope="module")
def demo_eval_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The first 12 sentences of the demo's evaluation set, tokenized as the release run feeds them, and labels."""
    from litegate.tasks import TextEncoder

    rows = [line.split("\t") for line in (DEMO / "eval.tsv").read_text().splitlines()[1:13]]
    enc = TextEncoder(DEMO / "model" / "tokenizer.json", 64)
    feeds = enc.encode([r[0] for r in rows])
    path = tmp_path_factory.mktemp("htp") / "inputs.npz"
    np.savez(path, **feeds)
    return path, np.array([int(r[1]) for r in rows])


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fp32", "dynamic-int8"])
def test_emulated_htp_runs_the_compiled_demo_and_agrees_with_the_cpu(demo_tflite, demo_eval_npz, recipe):
    """Each sample runs through the HTP context binary on QNN's x86 HTP emulator (no CPU fallback): the logits are
    the CPU's to within fp16/HTP rounding, and every predicted class agrees."""
    from litegate.backends.runtime import Runner

    path, _ = demo_eval_npz
    run = htp.emulate(demo_tflite(recipe), "SM8650", path, timeout_s=600)
    assert run.status == "ok", run.reason
    assert run.compile["subgraphs"] == [{"index": 0, "offloaded": run.compile["subgraphs"][0]["total"],
                                         "total": run.compile["subgraphs"][0]["total"], "partitions": 1}]
    with np.load(path) as feeds:
        cpu = Runner(demo_tflite(recipe), backend="cpu").run_batch({k: feeds[k] for k in feeds.files})
    got = run.outputs["logits"]
    assert got.shape == cpu["logits"].shape == (12, 2)
    assert np.abs(got - cpu["logits"]).max() < 0.1
    assert (got.argmax(-1) == cpu["logits"].argmax(-1)).all()
    assert not np.allclose(got, cpu["logits"], atol=1e-6)  # computed by the HTP's arithmetic, not copied from the CPU


@needs_compiler
@pytest.mark.slow
def test_demo_int8_crashes_the_htp_emulator_and_the_crash_is_that_cells_classified_failure(demo_tflite,
                                                                                            demo_eval_npz):
    """Measured finding (QAIRT 2.51 in onnxruntime-qnn 2.7.0): the demo's full-int8 graph compiles whole for SM8650,
    and QNN's HTP emulator dies with SIGSEGV running it. The smallest failing window of the graph is four valid ops
    of the residual-smoothed layer norm (a 1-unit FULLY_CONNECTED, MEAN, ADD, a broadcast MUL); each three-op
    window of them runs. The crash stays in its child process and becomes this model's failure."""
    path, _ = demo_eval_npz
    run = htp.emulate(demo_tflite("int8"), "SM8650", path, timeout_s=600)
    assert run.compile["status"] == "compiled"
    assert run.status == "failed" and run.outputs is None
    assert run.reason.startswith("the HTP emulator crashed: SIGSEGV"), run.reason


def test_only_whole_htp_models_on_a_known_soc_are_emulated():
    whole = {"subgraphs": [{"index": 0, "offloaded": 9, "total": 9, "partitions": 1}], "refused": []}
    split = {"subgraphs": [{"index": 0, "offloaded": 8, "total": 9, "partitions": 2}],
             "refused": [{"subgraph": 0, "op_index": 3, "op": "StridedSlice", "qnn_op": "", "reasons": []}]}
    assert htp.emulation_refusal("SM8650", whole) is None
    assert "1 op(s) stay on the CPU (StridedSlice)" in (htp.emulation_refusal("SM8650", split) or "")
    assert "no HTP emulator settings for SA8295" in (htp.emulation_refusal("SA8295", whole) or "")
    two = {"subgraphs": [{"index": 0, "offloaded": 9, "total": 9, "partitions": 1},
                         {"index": 1, "offloaded": 4, "total": 4, "partitions": 1}], "refused": []}
    assert "compiled into 2 subgraph(s), 2 partitions" in (htp.emulation_refusal("SM8650", two) or "")
    assert "names no partitioned subgraph" in (htp.emulation_refusal("SM8650", {"subgraphs": []}) or "")


def test_qnn_targets_are_named_as_their_reports_name_them(tmp_path):
    """`qnn` and `qnn:sm8650` are the same target, `qnn:SM8650`: the column, the recommendation and the emulated-HTP
    row find their reports under that name, once."""
    from litegate.config import load

    cfg = load(write_config(tmp_path, model=DEMO / "model",
                            extra='[check]\ndelegates = ["gpu", "qnn", "qnn:sm8650", "qnn:SM8450"]\n'))
    assert cfg.delegates == ("gpu", "qnn:SM8650", "qnn:SM8450")

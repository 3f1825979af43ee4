"""Core ML ML Program targets (``mlprogram[:DEPLOYMENT]``): real coremltools conversions of small models made here."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from conftest import DEMO, make_checkpoint, run_cli, write_config

from litegate.compat import coreml
from litegate.compat.check import target_error
from litegate.quantize.recipes import load as load_recipe
from litegate.types import ModelSource, Status, VariantConfig

NOT_RUN_HERE = "not run: Core ML prediction needs macOS"


def _coremltools():
    return pytest.importorskip("coremltools", reason="coremltools not installed (pip install 'litegate[coreml]')")


def _variants(*names: str) -> list[VariantConfig]:
    return [VariantConfig(name=n, recipe=load_recipe(n)) for n in names]


def test_deployment_targets_are_the_ml_program_targets_of_coremltools():
    ct = _coremltools()
    ml_program = {name for name, t in ct.target.__members__.items() if t.value >= ct.target.iOS15.value}
    assert set(coreml.DEPLOYMENTS) == ml_program


def test_target_syntax_and_unknown_deployment_is_refused_with_the_known_ones():
    assert coreml.parse_target("mlprogram") == "iOS16" and coreml.canonical("mlprogram:ios17") == "mlprogram:iOS17"
    assert target_error("mlprogram:macOS15") is None
    problem = target_error("mlprogram:iOS99")
    assert problem is not None and "'iOS99'" in problem and "iOS16" in problem and "macOS14" in problem


def test_full_integer_and_pruned_variants_are_not_run_with_the_reason(tmp_path):
    source = ModelSource(kind="hf-bert", path=str(DEMO / "model"), task="text-classification", seq_len=16)
    pruned = VariantConfig(name="pruned-50+fp32", recipe=load_recipe("fp32"), prune=load_recipe("pruned-50"))
    out = coreml.convert_variants([*_variants("int8", "int16x8"), pruned], source, "mlprogram", tmp_path)
    assert {c.status for c in out.values()} == {Status.NOT_RUN}
    if coreml.coremltools_version() is not None:
        assert "integer activations" in out["int8"].reason and "integer activations" in out["int16x8"].reason
        assert "pruned" in out["pruned-50+fp32"].reason
    assert list(tmp_path.iterdir()) == []  # nothing converted, nothing written


def test_int8_weights_below_ios16_are_not_run_and_a_stale_package_is_removed(tmp_path):
    """coremltools raises an int8-weight program to iOS16's specification, so an iOS15 target cannot load it: that
    cell is not run rather than written under a name that promises iOS15. A package an earlier run left for a
    variant that has none now is removed."""
    source = ModelSource(kind="hf-bert", path=str(DEMO / "model"), task="text-classification", seq_len=16)
    stale = tmp_path / "int8.iOS15.mlpackage"
    stale.mkdir()
    (stale / "Manifest.json").write_text("{}")
    out = coreml.convert_variants(_variants("dynamic-int8", "int8"), source, "mlprogram:iOS15", tmp_path)
    assert out["dynamic-int8"].status is Status.NOT_RUN
    if coreml.coremltools_version() is not None:
        assert out["dynamic-int8"].reason.startswith("int8 weights need iOS16 or later")
    assert not stale.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_tiny_bert_with_exact_gelu_converts_to_ml_programs(tmp_path):
    ct = _coremltools()
    ckpt = make_checkpoint(tmp_path / "ckpt", hidden=64, intermediate=128)
    source = ModelSource(kind="hf-bert", path=str(ckpt), task="text-classification", seq_len=16)
    out = coreml.convert_variants(_variants("fp32", "fp16", "dynamic-int8", "int8"), source, "mlprogram", tmp_path)
    fp32, fp16, int8w = out["fp32"], out["fp16"], out["dynamic-int8"]
    for c in (fp32, fp16, int8w):
        assert c.status is Status.OK, c.reason
        assert c.target == "mlprogram:iOS16" and c.deployment_target == "iOS16"
        # exact GELU (tf.nn.gelu -> Erfc) arrives as erf, once per layer: the registered Erfc translation
        assert c.mil_ops["erf"] == 2 and c.mil_ops["matmul"] > 0 and c.mil_ops["softmax"] == 2
        pkg = Path(c.package)
        assert pkg.parent == tmp_path and pkg.name.endswith(".iOS16.mlpackage") and c.package_bytes > 0
        assert c.package_bytes == sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
        spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
        assert [i.name for i in spec.description.input] == ["attention_mask", "input_ids"]
        if platform.system() != "Darwin":
            assert set(c.prediction.values()) == {NOT_RUN_HERE} and len(c.prediction) == 5
    assert (fp32.precision, fp16.precision, int8w.precision) == ("fp32", "fp16", "fp16, int8 weights")
    assert int8w.package_bytes < fp16.package_bytes < fp32.package_bytes
    assert int8w.mil_ops.get("constexpr_affine_dequantize", 0) > 0 and "constexpr_affine_dequantize" not in fp16.mil_ops
    assert out["int8"].status is Status.NOT_RUN and "integer activations" in out["int8"].reason
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".litegate-coreml-")]  # the scratch folder is gone
    # converting again replaces the packages in place
    again = coreml.convert_variants(_variants("fp16"), source, "mlprogram:iOS16", tmp_path)
    assert again["fp16"].status is Status.OK and again["fp16"].package == fp16.package


def _atan2_saved_model(folder: Path) -> Path:
    """A classifier SavedModel whose graph has Atan2, a TF op coremltools 9.0 has no translation for."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.int32)

    class Atan2Classifier(tf.Module):
        @tf.function(input_signature=[spec, spec])
        def serve(self, input_ids, attention_mask):
            x = tf.reduce_mean(tf.cast(input_ids * attention_mask, tf.float32), axis=1, keepdims=True) / 1000.0
            a = tf.math.atan2(x, x + 1.0)
            return {"logits": tf.concat([a, -a], axis=1)}

    m = Atan2Classifier()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


@pytest.mark.slow
def test_op_coremltools_cannot_convert_fails_that_cell_with_the_op_name_and_the_run_goes_on(tmp_path):
    _coremltools()
    model = _atan2_saved_model(tmp_path / "atan2")
    ckpt = make_checkpoint(tmp_path / "ckpt")
    cfg = tmp_path / "release.toml"
    cfg.write_text(f'''name = "atan2"
variants = ["fp32", "dynamic-int8"]
[model]
source = "saved_model"
path = "{model}"
task = "text-classification"
tokenizer = "{ckpt / 'tokenizer.json'}"
seq_len = 16
[data]
eval = "{DEMO / 'eval.tsv'}"
max_eval_samples = 20
[output]
dir = "{tmp_path / 'out'}"
[bench]
threads = [1]
warmup_runs = 1
min_runs = 3
min_seconds = 0.0
max_runs = 5
peak_probe = false
profile_runs = 0
[check]
delegates = ["mlprogram"]
''')
    r = run_cli("run", str(cfg), timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    for v in rep["variants"]:
        assert v["status"] == "ok" and v["bench"][0]["status"] == "ok"  # the TFLite cells still ran
        (c,) = v["coreml"]
        assert c["status"] == "failed" and c["failing_op"] == "Atan2" and "TF op Atan2" in c["reason"]
    assert not list((tmp_path / "out").glob("*.mlpackage"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "failed: TF op Atan2" in md


@pytest.mark.slow
def test_release_run_shows_the_core_ml_table_and_writes_the_packages(tmp_path):
    _coremltools()
    ckpt = make_checkpoint(tmp_path / "ckpt")
    cfg = write_config(tmp_path / "run", model=ckpt, variants=("fp32", "fp16", "int8"), seq_len=16,
                       extra='[check]\ndelegates = ["coreml", "mlprogram"]\n')
    r = run_cli("run", str(cfg), timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    out = tmp_path / "run" / "out"
    assert sorted(p.name for p in out.glob("*.mlpackage")) == ["fp16.iOS16.mlpackage", "fp32.iOS16.mlpackage"]
    md = (out / "report.md").read_text()
    assert "Core ML ML Programs (coremltools" in md
    assert "| fp32 | iOS16 | converted | fp32 | " in md and "| fp16 | iOS16 | converted | fp16 | " in md
    assert "| int8 | iOS16 | not run: recipe 'int8' (full-integer) has integer activations" in md
    assert "Core ML delegate (TFLite)" in md  # the rule-based target, labelled as TFLite's delegate
    rows = {row["target"]: row for row in json.loads((out / "report.json").read_text())["run"]["gate"]
            ["recommended_per_target"]}
    row = rows["Core ML ML Program (iOS16, coremltools)"]
    assert "accuracy on Core ML not measured here" in row["why"]
    if platform.system() != "Darwin":
        assert NOT_RUN_HERE in md
    html = (out / "report.html").read_text()
    assert "Core ML (ML Program)" in html and "converted" in html


def test_bad_deployment_target_is_a_config_error(tmp_path):
    cfg = write_config(tmp_path, model=DEMO / "model", extra='[check]\ndelegates = ["mlprogram:iOS99"]\n')
    r = run_cli("run", str(cfg), timeout=120)
    assert r.returncode == 2
    assert "unknown Core ML deployment target 'iOS99'" in r.stderr and "iOS16" in r.stderr


def test_doctor_names_the_mlprogram_target_and_the_core_ml_delegate():
    from litegate.doctor import check

    rows = {r["name"]: r for r in check()}
    ml = rows["compat mlprogram"]
    if coreml.coremltools_version() is None:
        assert not ml["ok"] and ml["fix"] == coreml.INSTALL
    else:
        assert ml["ok"] and "coremltools 9.0" in ml["detail"]
        if platform.system() != "Darwin":
            assert "Core ML prediction needs macOS" in ml["detail"]
    assert "TFLite's Core ML delegate" in rows["backend coreml"]["fix"]

"""Untrusted SavedModels: unsafe ops are refused before anything runs, and the loading child is sandboxed.

The malicious models are made here, in code: a resource whose initializer writes a file (TensorFlow runs it
while loading) and a serving function that writes a file (it runs on every call, calibration included).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import DEMO, run_cli, write_config

from litegate import sandbox
from litegate.isolation import run_isolated

SEQ = 16


def _one_litegate_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("litegate:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- the sandbox alone (no TensorFlow) ----------------------------------------------------------------------

def test_sandboxed_child_cannot_write_outside_its_folders_or_reach_the_network(tmp_path):
    if not sandbox.landlock_abi():
        pytest.skip("Linux Landlock is not available here: the sandbox degrades to a notice")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        payload = {"outside": str(tmp_path / "pwned"), "inside": str(allowed / "ok"), "port": srv.getsockname()[1]}
        jailed = run_isolated("litegate.sandbox:selftest_job", payload, timeout_s=60, sandbox=[allowed])
        free = run_isolated("litegate.sandbox:selftest_job", {**payload, "outside": str(tmp_path / "free")},
                            timeout_s=60)
    assert jailed["outside"].startswith("denied") and not (tmp_path / "pwned").exists()
    assert jailed["inside"] == "written" and (allowed / "ok").is_file()
    assert jailed["network"].startswith("denied"), jailed
    assert jailed["applied"] and not jailed["notice"], jailed
    assert free["outside"] == "written" and free["network"] == "connected"  # the same job, not sandboxed


# --- models made in code ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """SavedModels: a real tf_keras encoder, one whose resource initializer writes ``outside/init_writes``, one
    whose serving function writes ``outside/serve_writes``, and one whose serving function calls the saver's SaveV2 and a nested ReadFile."""
    import tensorflow as tf
    import tf_keras

    root = tmp_path_factory.mktemp("trust")
    outside = root / "outside"  # what the malicious models try to write: one file each
    outside.mkdir()
    tf.keras.utils.set_random_seed(0)
    ids = tf_keras.Input((SEQ,), dtype="int32", name="input_ids")
    mask = tf_keras.Input((SEQ,), dtype="int32", name="attention_mask")
    x = tf_keras.layers.Embedding(4096, 16)(ids)
    x = tf_keras.layers.LayerNormalization()(x)
    x = tf_keras.layers.MultiHeadAttention(2, 8)(x, x, attention_mask=tf_keras.layers.Reshape((1, SEQ))(mask))
    x = tf_keras.layers.GlobalAveragePooling1D()(x)
    real = tf_keras.Model([ids, mask], tf_keras.layers.Dense(2)(x))
    real.save(str(root / "real"), save_format="tf")

    class Writer(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="litegate_trust_test")

        def _initialize(self):
            tf.io.write_file(str(outside / "init_writes"), "written by a resource initializer")
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    spec = [tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="attention_mask")]

    class InitWrites(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.res = Writer()

        @tf.function(input_signature=spec)
        def serve(self, input_ids, attention_mask):
            return {"logits": tf.cast(input_ids[:, :2] * attention_mask[:, :2], tf.float32)}

    class ServeWrites(tf.Module):
        @tf.function(input_signature=spec)
        def serve(self, input_ids, attention_mask):
            tf.io.write_file(str(outside / "serve_writes"), "written by the serving function")
            return {"logits": tf.cast(input_ids[:, :2] * attention_mask[:, :2], tf.float32)}

    class Nested(tf.Module):
        @tf.function(input_signature=spec)
        def serve(self, input_ids, attention_mask):
            tf.raw_ops.SaveV2(prefix=str(outside / "nested"), tensor_names=["x"], shape_and_slices=[""], tensors=[input_ids])
            y = tf.cond(tf.reduce_sum(input_ids) > 0, lambda: tf.strings.length(tf.io.read_file("/etc/hostname")),
                        lambda: tf.constant(0))
            return {"logits": tf.cast(input_ids[:, :2] + y, tf.float32)}

    for name, cls in (("init_writes", InitWrites), ("serve_writes", ServeWrites), ("nested", Nested)):
        m = cls()
        tf.saved_model.save(m, str(root / name), signatures={"serving_default": m.serve})
    assert not list(outside.iterdir())
    return {"root": root, "outside": outside, "real": root / "real", "init_writes": root / "init_writes",
            "serve_writes": root / "serve_writes", "nested": root / "nested"}


def test_scan_keeps_real_models_and_finds_saver_ops_only_outside_the_saver(models):
    from litegate.converter.trust import scan_saved_model

    assert scan_saved_model(models["real"]) == []  # tf_keras model.save(save_format="tf"): its saver is allowed
    found = scan_saved_model(models["nested"])
    ops = {f.op: f.where for f in found}
    # SaveV2 in a serving function is refused (only the saver's own functions may hold it); the ReadFile sits in
    # a tf.cond branch, a function only reached through the If node's then_branch attribute
    assert set(ops) == {"SaveV2", "ReadFile"}, found
    assert "serve" in ops["SaveV2"] and "cond_true" in ops["ReadFile"], found
    init = scan_saved_model(models["init_writes"])
    assert [f.op for f in init] == ["WriteFile"] and "initializer" in init[0].where


@pytest.mark.slow
def test_initializer_writing_a_file_is_refused_before_loading(models, tmp_path):
    out = tmp_path / "x.tflite"
    r = run_cli("convert", "--from", "saved_model", str(models["init_writes"]), "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 3, r.stderr
    line = _one_litegate_line(r.stderr)
    assert "WriteFile" in line and "__inference__initializer" in line and "--unsafe-allow-ops" in line, line
    assert not (models["outside"] / "init_writes").exists() and not out.exists()


@pytest.mark.slow
def test_serving_function_writing_a_file_is_refused_before_int8_calibration(models, tmp_path, tiny_checkpoint):
    out = tmp_path / "x.tflite"
    r = run_cli("quantize", "--from", "saved_model", str(models["serve_writes"]), "--recipe", "int8",
                "--calibration", str(DEMO / "calibration.txt"), "--tokenizer", str(tiny_checkpoint / "tokenizer.json"),
                "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 3, r.stderr
    line = _one_litegate_line(r.stderr)
    assert "WriteFile" in line and "serve" in line, line
    assert not (models["outside"] / "serve_writes").exists() and not out.exists()


@pytest.mark.slow
def test_opt_in_loads_the_model_but_the_sandbox_keeps_the_write_out(models, tmp_path):
    if not sandbox.landlock_abi():
        pytest.skip("Linux Landlock is not available here: the sandbox degrades to a notice")
    out = tmp_path / "x.tflite"
    r = run_cli("convert", "--from", "saved_model", str(models["init_writes"]), "--seq-len", str(SEQ),
                "--unsafe-allow-ops", "-o", str(out))
    # the op check passed (opt-in); TensorFlow ran the initializer, whose write the sandbox denied
    assert r.returncode == 3, r.stderr
    assert "Permission denied" in _one_litegate_line(r.stderr)
    assert not (models["outside"] / "init_writes").exists()


@pytest.mark.slow
def test_real_keras_saved_model_still_converts_with_int8_calibration(models, tmp_path, tiny_checkpoint):
    out = tmp_path / "real.tflite"
    r = run_cli("quantize", "--from", "saved_model", str(models["real"]), "--recipe", "int8",
                "--calibration", str(DEMO / "calibration.txt"), "--tokenizer", str(tiny_checkpoint / "tokenizer.json"),
                "--seq-len", str(SEQ), "-o", str(out))
    assert r.returncode == 0, r.stderr
    notes = json.loads(out.with_suffix(".json").read_text())["notes"]
    assert not any("unsafe" in n for n in notes), notes


def test_config_key_and_cli_flag_set_the_unsafe_ops_opt_in(tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from litegate.cli import cli
    from litegate.config import load

    cfg = write_config(tmp_path, model=tiny_checkpoint)
    cfg.write_text(cfg.read_text().replace("seq_len = 32", "seq_len = 32\nallow_unsafe_ops = true", 1))
    assert load(cfg).model.source.options["allow_unsafe_ops"] is True
    assert "allow_unsafe_ops" not in load(write_config(tmp_path / "b", model=tiny_checkpoint)).model.source.options
    assert "--unsafe-allow-ops" in CliRunner().invoke(cli, ["convert", "--help"]).output

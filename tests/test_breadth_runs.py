"""`litegate run` on the new architectures end to end (issue #19): a random-weight DistilBERT classifier and a
random-weight Llama-architecture decoder, each with `source = "hf"` (config.json picks the builder, head and task),
every recipe that applies, each variant's fidelity, and the GPU and qnn compatibility columns."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO, run_cli
from test_encoders import make_encoder
from test_llama import make_llama

pytestmark = pytest.mark.slow

COMMON = '''
[output]
dir = "out"
[bench]
threads = [1]
warmup_runs = 2
min_runs = 5
min_seconds = 0.0
max_runs = 10
peak_probe = false
profile_runs = 0
[check]
delegates = ["gpu", "qnn:SM8650", "xnnpack"]
[gate]
reference = "fp32"
require = "any"
'''


def _run(folder, config: str) -> dict:
    (folder / "release.toml").write_text(config + COMMON)
    r = run_cli("run", str(folder / "release.toml"), timeout=1500)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return json.loads((folder / "out" / "report.json").read_text())


def _compat_targets(report: dict) -> set[str]:
    return {c["delegate"] for v in report["variants"] for c in v.get("compat") or []}


def test_distilbert_release_run_from_config_json(tmp_path):
    make_encoder(tmp_path / "distilbert", "distilbert")
    report = _run(tmp_path, f'''name = "tiny-distilbert"
variants = ["fp32", "fp16", "dynamic-int8", "int8", "int16x8", "int4-blockwise", "pruned-50+dynamic-int8"]
[model]
source = "hf"
path = "distilbert"
seq_len = 32
[data]
eval = "{DEMO / 'eval.tsv'}"
train = "{DEMO / 'eval.tsv'}"
calibration = "{DEMO / 'calibration.txt'}"
calibration_samples = 40
max_eval_samples = 60
''')
    assert report["model"]["source"]["kind"] == "hf-bert"
    assert report["model"]["source"]["task"] == "text-classification"
    assert report["model"]["source"]["options"]["head"] == "classification"
    variants = {v["name"]: v for v in report["variants"]}
    assert set(variants) == {"fp32", "fp16", "dynamic-int8", "int8", "int16x8", "int4-blockwise",
                             "pruned-50+dynamic-int8"}
    for name, v in variants.items():
        assert v["status"] == "ok", (name, v.get("reason"))
        acc = v["accuracy"][0]
        assert acc["n_samples"] == 60 and acc["status"] == "ok", (name, acc)
        assert "agreement_with_reference" in acc["extra"], (name, acc)  # fidelity to fp32
    assert variants["int4-blockwise"]["size"]["bytes"] < variants["fp32"]["size"]["bytes"]
    assert {"gpu", "xnnpack"} <= _compat_targets(report) and any(t.startswith("qnn") for t in _compat_targets(report))


def test_llama_release_run_from_config_json(tmp_path):
    make_llama(tmp_path / "llama", max_pos=128)
    report = _run(tmp_path, f'''name = "tiny-llama"
variants = ["fp32", "fp16", "dynamic-int8", "int8-weight-only", "int4-blockwise"]
[model]
source = "hf"
path = "llama"
seq_len = 16
max_len = 64
[data]
eval = "{DEMO / 'calibration.txt'}"
max_eval_samples = 8
''')
    assert (report["model"]["source"]["kind"], report["model"]["source"]["task"]) == ("hf-llama", "text-generation")
    variants = {v["name"]: v for v in report["variants"]}
    for name, v in variants.items():
        assert v["status"] == "ok", (name, v.get("reason"))
        acc = v["accuracy"][0]
        assert acc["metric"] == "perplexity" and acc["status"] == "ok" and acc["value"] > 1, (name, acc)
        assert "top1_agreement" in acc["extra"], (name, acc)  # fidelity to fp32
    int4 = variants["int4-blockwise"]["accuracy"][0]
    assert 0.5 < int4["value"] / int4["reference"] < 2.0, int4
    assert variants["int4-blockwise"]["size"]["bytes"] < 0.7 * variants["fp32"]["size"]["bytes"]
    assert {"gpu", "xnnpack"} <= _compat_targets(report) and any(t.startswith("qnn") for t in _compat_targets(report))

from __future__ import annotations

import json

import pytest

from litegate.types import (
    AccuracyResult,
    Artifact,
    BenchResult,
    LatencyStats,
    Recipe,
    Report,
    SizeInfo,
    Status,
    VariantResult,
    Verdict,
)


def _report() -> Report:
    art = Artifact(path="/x/fp32.tflite", sha256="a" * 64, size_bytes=10, parent_sha256="b" * 64, produced_by="convert",
                   step_config={"recipe": "fp32"}, tool_versions={"tensorflow": "2.21.0"})
    lat = LatencyStats(p50=1.0, p90=1.5, p99=2.0, mean=1.1, std=0.1, min=0.9, max=2.5, n=10)
    bench = (BenchResult(artifact_sha256="a" * 64, variant="fp32", backend="xnnpack", threads=1, status="ok",
                         latency=lat, samples_ms=[1.0, 1.2]),
             BenchResult(artifact_sha256="a" * 64, variant="fp32", backend="hexagon", threads=1, status="not_run",
                         reason="no DSP"))
    acc = AccuracyResult(task="text-classification", metric="accuracy", value=80.0, backend="xnnpack", n_samples=10,
                         reference=80.0, delta=0.0)
    v = VariantResult(name="fp32", recipe=Recipe("fp32", "float", {}), status=Status.OK, artifact=art,
                      size=SizeInfo(10, 8), bench=bench, accuracy=(acc,))
    return Report(run={"name": "t"}, model={"seq_len": 8}, variants=(v,),
                  verdicts=(Verdict(check="size", variant="fp32", passed=True, message="ok", value=1, limit=2),), passed=True)


def test_report_round_trips_through_json():
    rep = _report()
    again = Report.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again == rep
    assert again.variants[0].bench[1].status is Status.NOT_RUN
    assert again.variant("fp32").bench_cell("xnnpack", 1).latency.p50 == 1.0


def test_report_rejects_other_schema_version():
    data = _report().to_dict()
    data["schema_version"] = "0.9"
    with pytest.raises(ValueError, match="schema_version"):
        Report.from_dict(data)


def test_types_validate_at_construction():
    with pytest.raises(ValueError, match="needs a reason"):
        BenchResult(artifact_sha256="a" * 64, variant="v", backend="gpu", threads=1, status="failed")
    with pytest.raises(ValueError, match="needs latency"):
        BenchResult(artifact_sha256="a" * 64, variant="v", backend="cpu", threads=1, status="ok")
    with pytest.raises(ValueError, match="out of order"):
        LatencyStats(p50=3, p90=2, p99=4, mean=3, std=0, min=1, max=5, n=3)
    with pytest.raises(ValueError, match="kind must be one of"):
        Recipe("x", "int4", {})
    with pytest.raises(ValueError):
        Artifact(path="p", sha256="short", size_bytes=1, parent_sha256=None, produced_by="x", step_config={},
                 tool_versions={})

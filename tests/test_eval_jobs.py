"""Evaluation children started while other variants still convert: they share the conversion children's slots,
never exceed ``jobs``, and give the same outputs as one child over the whole set."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tflite_craft import mlp_model

from litegate.artifacts import Artifact
from litegate.backends.runtime import Runner
from litegate.benchmarks.accuracy import OutputJobs, evaluate_variants
from litegate.types import Recipe, Status, Task, VariantResult


def _variant(tmp_path: Path, name: str = "fp32") -> VariantResult:
    model = tmp_path / f"{name}.tflite"
    model.write_bytes(mlp_model(seed=1))
    art = Artifact(path=str(model), sha256="0" * 64, size_bytes=model.stat().st_size, parent_sha256=None,
                   produced_by="test", step_config={}, tool_versions={})
    return VariantResult(name=name, recipe=Recipe(name, "float", {}), status=Status.OK, artifact=art)


def _data(tmp_path: Path, n: int = 7) -> SimpleNamespace:
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", features=x)
    return SimpleNamespace(task=Task.TEXT_CLASSIFICATION, n=n, inputs_npz=tmp_path / "eval.npz",
                           labels=np.zeros(n, np.int64), windows=None)


def test_an_evaluation_waits_for_a_slot_the_conversion_children_hold_then_matches_one_full_run(tmp_path):
    v, data = _variant(tmp_path), _data(tmp_path)
    said: list[str] = []
    slots = threading.Semaphore(2)
    slots.acquire()
    slots.acquire()  # two conversion children running
    with OutputJobs(data, backend="cpu", threads=1, timeout_s=60.0, mem_mb=None, work=tmp_path, say=said.append,
                    jobs=2, slots=slots) as jobs:
        jobs.submit(v)
        jobs.submit(v)  # once per name
        time.sleep(1.0)
        assert said == [] and not list(tmp_path.glob("*.outputs.*.npz")), "an evaluation started beside 2 children"
        slots.release()  # one conversion child done: its slot runs the shards one after the other
        outputs, failures = jobs.collect()
    assert failures == {} and said == ["eval: fp32 on 7 samples (2 shards)"]
    assert sorted(p.name for p in tmp_path.glob("*.outputs.*.npz")) == ["fp32.outputs.0.npz", "fp32.outputs.1.npz"]
    whole = Runner(tmp_path / "fp32.tflite", backend="cpu").run_batch({"features": np.load(data.inputs_npz)["features"]})
    np.testing.assert_array_equal(outputs["fp32"]["logits"], whole["logits"])
    # evaluate_variants on the children already started scores them without starting any again
    (scored,) = evaluate_variants([v], data, reference="fp32", backend="cpu", threads=1, on_gpu=False, timeout_s=60.0,
                                  mem_mb=None, work=tmp_path, say=said.append, jobs=2,
                                  started=_started(tmp_path, data, v, said))
    assert scored.accuracy[0].status is Status.OK and scored.accuracy[0].n_samples == 7
    assert said.count("eval: fp32 on 7 samples (2 shards)") == 2  # once above, once for the second OutputJobs


def _started(tmp_path: Path, data: SimpleNamespace, v: VariantResult, said: list[str]) -> OutputJobs:
    jobs = OutputJobs(data, backend="cpu", threads=1, timeout_s=60.0, mem_mb=None, work=tmp_path, say=said.append,
                      jobs=2)
    jobs.submit(v)
    jobs.wait()
    return jobs


def test_a_run_that_stops_starts_no_evaluation_still_waiting_for_a_slot(tmp_path):
    v, data = _variant(tmp_path), _data(tmp_path)
    said: list[str] = []
    slots = threading.Semaphore(1)
    slots.acquire()
    jobs = OutputJobs(data, backend="cpu", threads=1, timeout_s=60.0, mem_mb=None, work=tmp_path, say=said.append,
                      jobs=1, slots=slots)
    jobs.submit(v)
    closer = threading.Thread(target=jobs.close)
    closer.start()  # waits for the child that waits for the slot
    time.sleep(0.5)
    slots.release()
    closer.join(timeout=30)
    assert not closer.is_alive() and said == [] and not list(tmp_path.glob("*.outputs.*.npz"))

"""The ``aihub:DEVICE`` backend (Qualcomm AI Hub, ``qai-hub`` 0.56), tested offline.

Every test here is offline. The client runs for real down to its HTTP layer; the functions of
``qai_hub.public_rest_api`` that do HTTP (the seam the client's own test-suite patches, as
``qai_hub.client.api.*`` in ``qai_hub/test/test_client.py``) are replaced by :class:`FakeHub`, which
answers in the client's own protobuf messages (``qai_hub.public_api_pb2``). The profile's figures are
the ones the client's own test of ``_profile_pb_to_python_dict`` uses. Nothing here is a measurement on
a device: the numbers only check that litegate reads the client's messages right.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_adb_backends import tiny_add_model

from litegate.backends import aihub
from litegate.backends.registry import backend_syntax_error, why_not_runnable
from litegate.benchmarks.matrix import bench_variant, run_cell
from litegate.types import Artifact, Recipe, Status, VariantResult

qai_hub = pytest.importorskip("qai_hub", reason="qai-hub is not installed (pip install 'litegate[aihub]')")
api_pb = pytest.importorskip("qai_hub.public_api_pb2")
rest = pytest.importorskip("qai_hub.public_rest_api")

DEVICE = "Samsung Galaxy S24 (Family)"
BACKEND = f"aihub:{DEVICE}"
SHA = "cd" * 32
S = api_pb.JobState


def recorded_profile(*, per_run: bool = True) -> Any:
    """A ``ProfileDetail`` with the figures of the client's own test (execution times in µs, memory in bytes)."""
    p = api_pb.ProfileDetail(major_version=1, minor_version=8 if per_run else 1, execution_time=3652,
                             after_execution_peak_memory=166711296, cold_load_time=1374293,
                             after_cold_load_peak_memory=166711296, warm_load_time=277823,
                             after_warm_load_peak_memory=163520512, compile_time=0, after_compile_peak_memory=0)
    p.execution_memory.increase.lower, p.execution_memory.increase.upper = 0, 2658496
    p.execution_memory.peak.lower, p.execution_memory.peak.upper = 2654208, 39406752
    if per_run:
        p.all_cold_load_times.append(1374293)
        p.all_warm_load_times.append(277823)
        p.all_execution_times.extend([10003, 4205])
    p.layer_details.append(api_pb.LayerDetail(
        name="model/tf.math.divide/truediv", compute_unit=api_pb.COMPUTE_UNIT_CPU, layer_type_name="MUL", id=":0:1",
        delegate_name="XNNPACK", execution_time=23, segment_id=":0:75", delegate_reported_ops="Multiply (ND, F32)"))
    p.layer_details.append(api_pb.LayerDetail(
        name="model/tf.compat.v1.transpose/transpose", compute_unit=api_pb.COMPUTE_UNIT_NPU,
        layer_type_name="TRANSPOSE", id=":0:2", delegate_name="QNN", delegate_extra_info="HTP", execution_time=127,
        segment_id=":0:73", delegate_reported_ops="Transpose", execution_cycles=180315))
    return p


class FakeHub:
    """AI Hub's HTTP answers, in the client's protobuf messages; ``calls`` logs (function, first argument)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.script: list[dict[str, Any]] = []  # per submitted job, in order: states, failure, profile, outputs
        self.uploaded_inputs: list[dict[str, list[np.ndarray]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("get_device_list", "create_and_upload_model", "create_inference_job", "get_job", "get_job_results",
                     "create_and_upload_dataset", "get_dataset", "download_dataset"):
            monkeypatch.setattr(rest, name, getattr(self, name))

    def get_device_list(self, config, name="", os="", attributes=None, select=False):
        self.calls.append(("get_device_list", name))
        devices = api_pb.DeviceList(total_query_count=1)
        devices.devices.append(api_pb.Device(name=name or DEVICE, os="14", attributes=["framework:tflite", "os:android"]))
        return devices

    def create_and_upload_model(self, config, path, **kw):
        self.calls.append(("create_and_upload_model", path))
        return api_pb.CreateUpdateResponse(id="mq9xyz")

    def create_inference_job(self, config, job_pb, project_id=None):
        job_id = f"j{len(self.jobs) + 1:08d}"
        self.calls.append(("create_inference_job", job_pb))
        self.jobs[job_id] = {"pb": job_pb, **(self.script.pop(0) if self.script else {})}
        return api_pb.CreateUpdateResponse(id=job_id)

    def _job_pb(self, job_id: str) -> Any:
        job = self.jobs[job_id]
        states = job.setdefault("states", [S.JOB_STATE_DONE])
        state = states.pop(0) if len(states) > 1 else states[0]
        pb = api_pb.InferenceJob()
        pb.CopyFrom(job["pb"])
        pb.inference_job_id, pb.job_state = job_id, state
        if state == S.JOB_STATE_FAILED:
            pb.failure_reason = job.get("failure", "")
        return api_pb.Job(inference_job=pb)

    def get_job(self, config, job_id):
        self.calls.append(("get_job", job_id))
        return self._job_pb(job_id)

    def get_job_results(self, config, job_id):
        self.calls.append(("get_job_results", job_id))
        job = self.jobs[job_id]
        result = api_pb.InferenceJobResult(inference_job_id=job_id)
        if job.get("profile") is not None:
            result.detail.CopyFrom(job["profile"])
        if job.get("outputs") is not None:
            result.output_dataset_id = f"d{job_id}"
        return api_pb.JobResult(inference_job_result=result)

    def create_and_upload_dataset(self, config, path, name, **kw):
        import h5py
        from qai_hub.util.dataset_entries_converters import h5_to_dataset_entries

        with h5py.File(path, "r") as h5f:
            self.uploaded_inputs.append(h5_to_dataset_entries(h5f))
        self.calls.append(("create_and_upload_dataset", name))
        return api_pb.CreateUpdateResponse(id="dinputs1")

    def get_dataset(self, config, dataset_id):
        self.calls.append(("get_dataset", dataset_id))
        return api_pb.Dataset(dataset_id=dataset_id, name="outputs", permanent=True)

    def download_dataset(self, config, dataset_id, file_path, verbose=None):
        import h5py
        from qai_hub.util.dataset_entries_converters import dataset_entries_to_h5

        self.calls.append(("download_dataset", dataset_id))
        with h5py.File(file_path, "w") as h5f:
            dataset_entries_to_h5(self.jobs[dataset_id[1:]]["outputs"], h5f)
        return file_path


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[FakeHub]:
    """A token in the environment, no client config file, AI Hub's HTTP layer replaced by :class:`FakeHub`, and
    a 1 ms polling interval."""
    monkeypatch.setattr(aihub, "POLL_S", 0.001)
    monkeypatch.setenv(aihub.TOKEN_ENV, "offline-test-token")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "no-client.ini"))
    fake = FakeHub()
    fake.install(monkeypatch)
    yield fake


@pytest.fixture
def model(tmp_path) -> Path:
    """A real (tiny) .tflite flatbuffer, the artifact that is uploaded."""
    out = tmp_path / "release"
    out.mkdir()
    return tiny_add_model(out / "int8.tflite")


def cell(model: Path, backend: str = BACKEND, timeout_s: float = 5.0, threads: int = 1):
    return run_cell(path=model, sha256=SHA, variant="int8", backend=backend, threads=threads, inputs_npz="unused.npz",
                    protocol={}, timeout_s=timeout_s)


def store_of(model: Path) -> dict[str, Any]:
    return json.loads((model.parent / aihub.STORE_NAME).read_text())["jobs"]


def test_completed_profile_becomes_a_latency_cell_and_a_placement_table(hub, model):
    """Offline, against recorded client messages (not a device measurement): a finished profile job becomes an
    ok cell with the per-run latency, the cold-load time, the peak memory and the per-layer placement."""
    hub.script.append({"states": [S.JOB_STATE_CREATED, S.JOB_STATE_DONE], "profile": recorded_profile()})
    r = cell(model)
    assert r.status is Status.OK, r.reason
    assert r.samples_ms == (10.003, 4.205)
    lat = r.latency
    assert lat is not None and lat.n == 2 and lat.min == 4.205 and lat.max == 10.003
    assert lat.p50 == pytest.approx(7.104) and lat.mean == pytest.approx(7.104)
    assert r.init_ms == pytest.approx(1374.293) and r.peak_rss_mb == pytest.approx(166711296 / 2**20, abs=1e-3)
    p = r.protocol
    assert p["source"] == "aihub" and p["device"] == DEVICE and p["compute_unit"] == "npu"
    assert p["job_id"] == "j00000001" and p["resumed"] is False and p["job_state"] == "SUCCESS"
    assert p["latency_fields"]["p50"] == "AI Hub's per-run inference times (all_inference_times)"
    assert p["aihub_estimated_inference_ms"] == pytest.approx(3.652)
    assert p["load_ms"] == {"first": pytest.approx(1374.293), "warm": pytest.approx(277.823), "compile": 0.0}
    assert p["placement"] == {"NPU": 1, "GPU": 0, "CPU": 1}
    assert p["placement_table"] == [
        {"name": "model/tf.math.divide/truediv", "op": "MUL", "unit": "CPU", "time_us": 23},
        {"name": "model/tf.compat.v1.transpose/transpose", "op": "TRANSPOSE", "unit": "NPU", "time_us": 127}]
    assert r.reason == "1 of 2 layers did not run on the NPU: 1 on the CPU"
    # what was sent: the model uploaded once, a profiling inference job on the named device's NPU, no inputs
    job_pb = next(arg for name, arg in hub.calls if name == "create_inference_job")
    assert job_pb.is_profiling_on and job_pb.options == "--compute_unit npu" and job_pb.device.name == DEVICE
    assert not job_pb.HasField("dataset") and job_pb.model.model_id == "mq9xyz"
    assert ("create_and_upload_model", str(model)) in hub.calls
    saved = store_of(model)
    assert list(saved) == [f"{SHA}|{DEVICE}|npu|profile"] and saved[f"{SHA}|{DEVICE}|npu|profile"]["job_id"] == "j00000001"


def test_profile_without_per_run_times_uses_aihub_estimate_and_says_so():
    """Offline, against a recorded client message (not a device measurement): a profile without
    all_inference_times gives one estimate (n=1), labelled as such."""
    from qai_hub.client import _profile_pb_to_python_dict

    fields = aihub.profile_fields(_profile_pb_to_python_dict(recorded_profile(per_run=False)),
                                  aihub.AihubSpec(DEVICE, "gpu"))
    lat = fields["latency"]
    assert (lat.n, lat.p50, lat.max, lat.std) == (1, pytest.approx(3.652), pytest.approx(3.652), 0.0)
    assert fields["samples_ms"] == ()
    assert "estimated_inference_time" in fields["protocol"]["latency_fields"]["p50"]
    assert fields["protocol"]["latency_fields"]["samples"] == "not available"
    assert fields["note"] == "2 of 2 layers did not run on the GPU: 1 on the NPU, 1 on the CPU"


def test_failed_job_is_failed_with_the_jobs_own_message_and_a_retry_submits_afresh(hub, model):
    """Offline, against recorded client messages (not a device measurement): AI Hub's failure reason is the
    cell's reason, and the failed job is dropped from the store."""
    why = "Failed to load model: Tensor 'x' has type INT4, which the TFLite runtime on this device does not support"
    hub.script.append({"states": [S.JOB_STATE_PROVISIONING_DEVICE, S.JOB_STATE_FAILED], "failure": why})
    r = cell(model, f"{BACKEND}?compute_unit=cpu", timeout_s=5.0)
    assert r.status is Status.FAILED
    assert r.reason == f"AI Hub job j00000001 failed: {why}"
    assert r.protocol["job_id"] == "j00000001" and r.protocol["job_state"] == "FAILED"
    assert store_of(model) == {}
    hub.script.append({"profile": recorded_profile()})
    assert cell(model, f"{BACKEND}?compute_unit=cpu").status is Status.OK
    assert hub.names().count("create_inference_job") == 2


def test_a_job_that_never_finishes_times_out_keeps_its_id_and_a_rerun_resumes_it(hub, model):
    """Offline, against recorded client messages (not a device measurement): a job still running at the deadline
    is a timeout naming the job and its last state; its id stays saved, and a re-run polls that job (nothing is
    submitted or uploaded again) and reads its results."""
    hub.script.append({"states": [S.JOB_STATE_MEASURING_PERFORMANCE], "profile": recorded_profile()})
    start = time.monotonic()
    r = cell(model, timeout_s=0.05)
    assert time.monotonic() - start < 5
    assert r.status is Status.TIMEOUT
    assert r.reason.startswith("AI Hub job j00000001 still MEASURING_PERFORMANCE after 0.05 s")
    assert "a re-run resumes it" in r.reason and r.protocol["job_state"] == "MEASURING_PERFORMANCE"
    assert store_of(model)[f"{SHA}|{DEVICE}|npu|profile"]["job_id"] == "j00000001"
    submitted = hub.names().count("create_inference_job"), hub.names().count("create_and_upload_model")
    assert submitted == (1, 1)

    hub.jobs["j00000001"]["states"] = [S.JOB_STATE_DONE]  # the phone finished while litegate was away
    again = cell(model)
    assert again.status is Status.OK, again.reason
    assert (hub.names().count("create_inference_job"), hub.names().count("create_and_upload_model")) == submitted
    assert again.protocol["resumed"] is True and again.protocol["job_id"] == "j00000001"
    assert again.latency is not None and again.latency.n == 2
    assert ("get_job_results", "j00000001") in hub.calls


def test_cells_of_a_variant_are_submitted_together_then_polled_together(hub, model):
    """Offline, against recorded client messages (not a device measurement): every AI Hub cell of a variant is
    submitted before any is polled; the model is uploaded once; cells differing only in threads share a job."""
    hub.script.extend([{"profile": recorded_profile()}, {"profile": recorded_profile()}])
    art = Artifact(path=str(model), sha256=SHA, size_bytes=model.stat().st_size, parent_sha256=None,
                   produced_by="test", step_config={}, tool_versions={})
    v = VariantResult(name="int8", recipe=Recipe("int8", "float", {}), status=Status.OK, artifact=art)
    gpu = f"{BACKEND}?compute_unit=gpu"
    cells = list(bench_variant(v, backends=[BACKEND, gpu], threads=[1, 4], inputs_npz=Path("unused.npz"),
                               protocol={}, timeout_s=5.0))
    assert [(c.backend, c.threads, c.status) for c in cells] == [
        (BACKEND, 1, Status.OK), (BACKEND, 4, Status.OK), (gpu, 1, Status.OK), (gpu, 4, Status.OK)]
    assert [c.protocol["job_id"] for c in cells] == ["j00000001", "j00000001", "j00000002", "j00000002"]
    names = hub.names()
    assert names.count("create_and_upload_model") == 1 and names.count("create_inference_job") == 2
    last_submit = max(i for i, n in enumerate(names) if n == "create_inference_job")
    assert "get_job" not in names[:last_submit]
    assert sorted(store_of(model)) == [f"{SHA}|{DEVICE}|gpu|profile", f"{SHA}|{DEVICE}|npu|profile"]


def test_without_a_token_the_cell_is_not_run_and_registry_and_doctor_say_so(monkeypatch, tmp_path, model):
    """Offline (no client call is made at all; not a device measurement): without QAI_HUB_API_TOKEN or a client
    config file the cell is not run with the fix, and the registry and doctor agree; a config file's token counts."""
    from litegate import doctor

    monkeypatch.delenv(aihub.TOKEN_ENV, raising=False)
    ini = tmp_path / "client.ini"
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    touched: list[str] = []
    for name in ("get_device_list", "create_and_upload_model", "create_inference_job", "get_job"):
        monkeypatch.setattr(rest, name, lambda *a, _n=name, **k: touched.append(_n))
    r = cell(model)
    assert r.status is Status.NOT_RUN and r.reason == aihub.NO_TOKEN
    assert r.reason.startswith("no AI Hub token") and "QAI_HUB_API_TOKEN" in r.reason
    assert touched == [] and not (model.parent / aihub.STORE_NAME).exists()
    assert why_not_runnable(BACKEND) == aihub.NO_TOKEN
    row = next(r for r in doctor.check() if r["name"] == "backend aihub")
    assert row["ok"] is False and aihub.NO_TOKEN in row["detail"] and "qai-hub configure --api_token" in row["fix"]
    with pytest.raises(aihub.AihubJobError, match="no AI Hub token") as err:
        aihub.run_outputs(model, {"x": np.zeros((1, 4), np.float32)}, BACKEND)
    assert err.value.status is Status.NOT_RUN

    ini.write_text("[api]\napi_url = http://invalid_domain\nweb_url = http://invalid_domain\napi_token = from-file\n")
    assert aihub.token_source() == str(ini) and why_not_runnable(BACKEND) is None
    row = next(r for r in doctor.check() if r["name"] == "backend aihub")
    assert row["ok"] is True and str(ini) in row["detail"]


def test_without_the_client_the_cell_is_not_run_with_the_install_command(monkeypatch, model):
    """Offline (nothing is imported or called; not a device measurement): a missing client is a not-run reason."""
    monkeypatch.setenv(aihub.TOKEN_ENV, "offline-test-token")
    monkeypatch.setattr(aihub, "client_installed", lambda: False)
    r = cell(model)
    assert r.status is Status.NOT_RUN and r.reason == "qai-hub is not installed: pip install 'litegate[aihub]'"
    assert why_not_runnable(BACKEND) == aihub.INSTALL


def test_run_outputs_sends_the_evaluation_inputs_and_returns_the_phones_outputs(hub, model):
    """Offline, against recorded client messages (not a device measurement): the inputs go up as one batch-1
    entry per sample in a non-profiling inference job; the outputs come back stacked on the sample axis."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    hub.script.append({"states": [S.JOB_STATE_RUNNING_INFERENCE, S.JOB_STATE_DONE],
                       "outputs": {"y": [x[i:i + 1] * 2 for i in range(3)]}})
    out = aihub.run_outputs(model, {"x": x}, f"{BACKEND}?compute_unit=gpu", timeout_s=5.0)
    assert list(out) == ["y"] and out["y"].shape == (3, 4) and np.array_equal(out["y"], x * 2)
    sent = hub.uploaded_inputs[0]
    assert list(sent) == ["x"] and len(sent["x"]) == 3 and all(a.shape == (1, 4) for a in sent["x"])
    assert np.array_equal(np.concatenate(sent["x"]), x)
    job_pb = next(arg for name, arg in hub.calls if name == "create_inference_job")
    assert not job_pb.is_profiling_on and job_pb.options == "--compute_unit gpu"
    assert job_pb.dataset.dataset_id == "dinputs1"
    (key,) = store_of(model)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert key.startswith(f"{sha}|{DEVICE}|gpu|inference:") and store_of(model)[key]["job_id"] == "j00000001"

    hub.script.append({"states": [S.JOB_STATE_FAILED], "failure": "Inference failed: output tensor is empty"})
    with pytest.raises(aihub.AihubJobError, match="output tensor is empty") as err:
        aihub.run_outputs(model, {"x": x[:1]}, BACKEND, timeout_s=5.0)
    assert err.value.status is Status.FAILED


@pytest.mark.parametrize("backend, message", [
    ("aihub:", "no device name after 'aihub:'"),
    ("aihub:   ?compute_unit=npu", "no device name after 'aihub:'"),
    (f"{BACKEND}?compute_unit=tpu", "compute_unit='tpu' is not one of npu, gpu, cpu"),
    (f"{BACKEND}?delegate=gpu", "unknown option 'delegate' (only compute_unit=npu|gpu|cpu)"),
    (f"{BACKEND}?compute_unit=npu&compute_unit=gpu", "option 'compute_unit' given twice"),
    (f"{BACKEND}?compute_unit", "options must be key=value pairs"),
    ("aihub:Pixel\t8", "control characters"),
])
def test_backend_syntax_errors_are_one_line_messages(backend, message):
    """Offline syntax checks (no client involved; not a device measurement)."""
    with pytest.raises(ValueError) as err:
        aihub.parse_backend(backend)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert message in (backend_syntax_error(backend) or "")


def test_backend_forms_parse():
    """Offline syntax checks (no client involved; not a device measurement)."""
    assert aihub.parse_backend(BACKEND) == aihub.AihubSpec(DEVICE, "npu")
    assert aihub.parse_backend(f"{BACKEND}?compute_unit=cpu") == aihub.AihubSpec(DEVICE, "cpu")
    assert aihub.AihubSpec(DEVICE, "gpu").options == "--compute_unit gpu"
    assert backend_syntax_error(BACKEND) is None and aihub.is_aihub_backend(BACKEND)
    with pytest.raises(ValueError, match="is not an AI Hub backend"):
        aihub.parse_backend("adb:emulator-5554")


def test_accuracy_on_the_phone_is_its_own_row_scored_against_the_cpu_reference(hub, model, tmp_path):
    """Offline, against recorded client messages (not a device measurement): the accuracy stage sends every
    evaluation sample to the phone, scores the outputs that come back like the CPU's, and reports a row named after
    the phone with its agreement and largest output difference against the reference on the CPU."""
    from types import SimpleNamespace

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from litegate.backends.runtime import Runner
    from litegate.benchmarks.accuracy import evaluate_variants
    from litegate.types import Task

    # tensor names as TensorFlow's converter writes them, unlike the signature's keys (x, y): AI Hub names outputs by
    # tensor, so the phone's outputs are matched by position
    m = schema.ModelT.InitFromPackedBuf(model.read_bytes(), 0)
    m.subgraphs[0].tensors[0].name, m.subgraphs[0].tensors[1].name = b"serving_default_x:0", b"StatefulPartitionedCall:0"
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    model.write_bytes(b.Output())
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    cpu = Runner(model, backend="cpu").run_batch({"x": x})["y"]
    labels = cpu.argmax(-1)
    phone = cpu.copy()
    phone[0] = -phone[0]  # the phone disagrees on the first sample
    hub.script.append({"outputs": {"StatefulPartitionedCall_0": [phone[i:i + 1] for i in range(6)]}})
    art = Artifact(path=str(model), sha256=SHA, size_bytes=model.stat().st_size, parent_sha256=None,
                   produced_by="test", step_config={}, tool_versions={})
    v = VariantResult(name="fp32", recipe=Recipe("fp32", "float", {}), status=Status.OK, artifact=art)
    data = SimpleNamespace(task=Task.TEXT_CLASSIFICATION, n=6, inputs_npz=tmp_path / "eval.npz", labels=labels,
                           windows=None)
    (out,) = evaluate_variants([v], data, reference="fp32", backend="cpu", threads=1, on_gpu=False, timeout_s=5.0,
                               mem_mb=None, work=tmp_path, say=lambda _m: None, phones=[BACKEND])
    cpu_row, phone_row = out.accuracy
    assert cpu_row.backend == "cpu" and cpu_row.value == 100.0
    assert phone_row.backend == BACKEND and phone_row.status is Status.OK and phone_row.n_samples == 6
    assert phone_row.value == pytest.approx(100 * 5 / 6) and phone_row.delta == pytest.approx(100 * 5 / 6 - 100)
    assert phone_row.extra["agreement_with_reference"] == pytest.approx(100 * 5 / 6)
    assert phone_row.extra["max_abs_logit_diff"] == pytest.approx(float(np.abs(2 * cpu[0]).max()))
    sent = hub.uploaded_inputs[0]
    assert np.array_equal(np.concatenate(sent["x"]), x)

    # another phone, whose job finishes without outputs: its own job, and a failed row rather than an exception
    (again,) = evaluate_variants([v], data, reference="fp32", backend="cpu", threads=1, on_gpu=False, timeout_s=5.0,
                                 mem_mb=None, work=tmp_path, say=lambda _m: None, phones=["aihub:Pixel 8"])
    row = again.accuracy[1]
    assert row.backend == "aihub:Pixel 8" and row.status is Status.FAILED
    assert row.reason == "AI Hub job j00000002 finished without an output dataset"


def test_a_job_id_that_cannot_be_saved_is_still_polled_and_the_cell_says_it_cannot_be_resumed(hub, model,
                                                                                                 monkeypatch):
    """Offline, against recorded client messages (not a device measurement): the job store cannot be written (disk
    full): the submitted job is still measured in this run, and its note says a re-run cannot resume it."""
    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aihub.JobStore, "_save", full)
    hub.script.append({"profile": recorded_profile()})
    r = cell(model)
    assert r.status is Status.OK and r.latency is not None
    assert "submitted as j00000001, but its id could not be saved to" in r.reason
    assert "No space left on device" in r.reason


def test_a_saved_job_that_ai_hub_no_longer_has_is_forgotten_and_submitted_afresh_next_time(hub, model, monkeypatch):
    """Offline, against recorded client messages (not a device measurement): resuming a saved job that AI Hub answers
    404 for fails that cell once, drops the id, and the next run submits a new job."""
    hub.script.append({"profile": recorded_profile()})
    assert cell(model).status is Status.OK
    real_get_job = hub.get_job

    def gone(config, job_id):
        raise rest.APIException(status_code=404)

    monkeypatch.setattr(rest, "get_job", gone)
    r = cell(model)
    assert r.status is Status.FAILED and "forgotten: the next run submits afresh" in r.reason
    assert store_of(model) == {}
    monkeypatch.setattr(rest, "get_job", real_get_job)
    hub.script.append({"profile": recorded_profile()})
    again = cell(model)
    assert again.status is Status.OK and again.protocol["job_id"] == "j00000002" and not again.protocol["resumed"]

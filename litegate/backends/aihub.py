"""The ``aihub:DEVICE`` backend: run a variant on a real phone through Qualcomm AI Hub (``qai-hub`` 0.56).

Backend syntax (in ``bench.backends`` or ``litegate bench --backend``)::

    aihub:Samsung Galaxy S24 (Family)                    the device's NPU (the default compute unit)
    aihub:Samsung Galaxy S24 (Family)?compute_unit=gpu   npu | gpu | cpu (AI Hub's ``--compute_unit``)

The device name is AI Hub's own (``qai-hub list-devices``). The API token comes from
``QAI_HUB_API_TOKEN``, else from the client's own config file (``qai-hub configure --api_token ...``
writes ``~/.qai_hub/client.ini``; ``QAIHUB_CLIENT_INI`` names another). Without the client or a token
the cell is ``not run`` with that reason; neither check touches the network.

A benchmark cell is an inference job with profiling on (``submit_inference_job(..., profile=True)``;
``submit_profile_job`` is deprecated in 0.56) and AI Hub's random inputs. Every cell of a batch is
submitted first, then all are polled together until a deadline. Job ids are saved in a job store
(:class:`JobStore`, ``aihub_jobs.json`` beside the variant) keyed by (artifact sha256, device, compute
unit, kind), so a re-run resumes polling a saved job instead of submitting it again: a cell that timed
out (``timeout``, its job id and last state in the reason) is picked up where it was left. A failed
job is a ``failed`` cell with AI Hub's own failure reason, and is dropped from the store so a retry
submits afresh.

From a completed profile the :class:`~litegate.types.BenchResult` takes: the per-run inference times
AI Hub measured on the phone (``all_inference_times``) as samples, or, from a profile without them,
AI Hub's single estimate (``protocol["latency_fields"]`` says which); the first (cold) load time as
``init_ms``; the peak memory after inference as ``peak_rss_mb`` (the phone's figure, not this host's);
and the placement: which compute unit (NPU/GPU/CPU) ran each layer, with counts per unit.
``protocol["source"]`` is ``"aihub"``. These are measurements on the phone; litegate's warm-up and
run counts do not apply (AI Hub's profiler picks its iterations), nor does the thread count.

:func:`run_outputs` runs an inference job on the phone with the real evaluation inputs and returns
the outputs, so accuracy can be scored on the device.

The client runs in this process (its calls are network I/O, not a model run that could crash it): the
deadline bounds the polling, and each HTTP call is bounded by the client's own retries and timeouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from litegate.artifacts import atomic_write_text
from litegate.backends.spec import AIHUB_PREFIX, is_aihub_backend, parse_options
from litegate.errors import BenchmarkError
from litegate.timing import summarize
from litegate.types import BenchResult, LatencyStats, Status

if TYPE_CHECKING:
    from qai_hub.client import Client, InferenceJob

COMPUTE_UNITS = ("npu", "gpu", "cpu")
TOKEN_ENV = "QAI_HUB_API_TOKEN"
NO_TOKEN = "no AI Hub token (set QAI_HUB_API_TOKEN or run 'qai-hub configure --api_token ...')"
INSTALL = "qai-hub is not installed: pip install 'litegate[aihub]'"
STORE_NAME = "aihub_jobs.json"
SOURCE = "aihub"
POLL_S = 10.0  # the client's own polling interval (Job._polling_interval)
PROFILE = "profile"


@dataclasses.dataclass(frozen=True)
class AihubSpec:
    """A parsed ``aihub:DEVICE[?compute_unit=...]`` backend."""

    device: str
    compute_unit: str = "npu"

    @property
    def options(self) -> str:
        """The job's option string (AI Hub's inference options)."""
        return f"--compute_unit {self.compute_unit}"


def parse_backend(backend: str) -> AihubSpec:
    """Parse ``aihub:DEVICE[?compute_unit=npu|gpu|cpu]``.

    Raises:
        ValueError: not of that form; the message says what is wrong.
    """
    if not is_aihub_backend(backend):
        raise ValueError(f"{backend!r} is not an AI Hub backend (aihub:DEVICE, e.g. 'aihub:Samsung Galaxy S24 (Family)')")
    head, _, query = backend[len(AIHUB_PREFIX):].partition("?")
    device = head.strip()
    if not device:
        raise ValueError(f"{backend!r}: no device name after 'aihub:' (AI Hub's name, e.g. 'Samsung Galaxy S24 (Family)')")
    if not device.isprintable():
        raise ValueError(f"{backend!r}: the device name holds control characters")
    opts = parse_options(backend, query)
    compute_unit = opts.pop("compute_unit", "npu")
    if compute_unit not in COMPUTE_UNITS:
        raise ValueError(f"{backend!r}: compute_unit={compute_unit!r} is not one of {', '.join(COMPUTE_UNITS)}")
    if opts:
        raise ValueError(f"{backend!r}: unknown option {next(iter(opts))!r} (only compute_unit=npu|gpu|cpu)")
    return AihubSpec(device=device, compute_unit=compute_unit)


def client_installed() -> bool:
    """True when the ``qai_hub`` client imports."""
    try:
        import qai_hub  # noqa: F401  (optional heavy dependency, litegate[aihub]: a probe of whether it loads)
    except ImportError:
        return False
    return True


def token_source(env: Mapping[str, str] | None = None) -> str | None:
    """Where the AI Hub token comes from (``QAI_HUB_API_TOKEN`` or the client's config file), None if nowhere.

    Reads the environment and the file only; no network call.
    """
    environ = os.environ if env is None else env
    if environ.get(TOKEN_ENV, "").strip():
        return TOKEN_ENV
    try:
        from qai_hub import api_utils  # optional heavy dependency (litegate[aihub]): its config-file reader
    except ImportError:
        return None
    path = api_utils.get_config_path()
    try:
        config = api_utils.load_api_config_from_file(path)
    except Exception:  # missing file, missing fields (the client's APIException), unreadable ini
        return None
    return path if config.api_token.strip() else None


def availability() -> str | None:
    """None when AI Hub jobs can be submitted from here (client installed, token found), else why not."""
    if not client_installed():
        return INSTALL
    return None if token_source() else NO_TOKEN


def why_not_runnable(backend: str) -> str | None:
    """None if ``backend`` (an ``aihub:`` form) can run, else the ``not run`` reason. No network call."""
    try:
        parse_backend(backend)
    except ValueError as exc:
        return str(exc)
    return availability()


def make_client() -> Client:
    """A quiet client with the token from ``QAI_HUB_API_TOKEN``, else from the client's config file."""
    from qai_hub import api_utils  # optional heavy dependency (litegate[aihub])
    from qai_hub.client import Client, ClientConfig

    token = os.environ.get(TOKEN_ENV, "").strip()
    config = ClientConfig(api_token=token) if token else api_utils.load_default_api_config()
    config.verbose = False
    return Client(config=config)


class JobStore:
    """Submitted AI Hub job ids, saved as JSON (atomically) so a re-run resumes them instead of submitting again."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise BenchmarkError(f"{self.path}: unreadable AI Hub job store ({exc}); move it away to submit afresh") from None
        self._jobs: dict[str, dict[str, Any]] = dict(data.get("jobs", {})) if isinstance(data, dict) else {}
        self.unsaved: dict[str, str] = {}  # key -> why its job id is not on disk (a re-run cannot resume it)

    @staticmethod
    def key(sha256: str, spec: AihubSpec, kind: str) -> str:
        """The store key of one job: artifact, device, compute unit, kind (``profile`` or ``inference:DIGEST``)."""
        return "|".join((sha256, spec.device, spec.compute_unit, kind))

    def get(self, key: str) -> dict[str, Any] | None:
        return self._jobs.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self._jobs[key] = entry
        self._save()

    def drop(self, key: str) -> None:
        """Forget a job (failed, or gone on AI Hub); an unwritable store keeps it on disk, and a re-run finds out."""
        if self._jobs.pop(key, None) is not None:
            with contextlib.suppress(OSError):
                self._save()

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps({"jobs": self._jobs}, indent=1, sort_keys=True) + "\n")


@dataclasses.dataclass(frozen=True)
class _Request:
    """One job to run: a model file on a device, profiling (no inputs) or inference on ``inputs``."""

    key: str
    path: str
    sha256: str
    spec: AihubSpec
    kind: str
    name: str
    inputs: Mapping[str, list[np.ndarray]] | None = None


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: Status
    reason: str = ""
    job: InferenceJob | None = None
    job_id: str | None = None
    state: str = ""
    resumed: bool = False


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (the client frames some messages in a box of ``|``, ``┌─┐`` and ``└─┘``)."""
    lines = [ln.strip(" |┌┐└┘─") for ln in str(exc).splitlines()]
    return " ".join(ln for ln in lines if ln) or type(exc).__name__


def _client_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the client raises for a refused or failed request (OSError: requests' network errors)."""
    from qai_hub.client import Error  # optional heavy dependency (litegate[aihub])
    from qai_hub.public_rest_api import APIException

    return Error, APIException, OSError, ValueError


def _not_found(exc: BaseException) -> bool:
    """True for AI Hub's answer that a job does not exist (deleted or expired). The client re-raises the REST
    layer's 404 as a ``UserError`` ``from None``; the original stays its ``__context__``."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "status_code", None) == 404:
            return True
        seen = seen.__context__
    return False


def _run_jobs(requests: Sequence[_Request], *, client: Client, store: JobStore, timeout_s: float,
              poll_s: float) -> dict[str, _Outcome]:
    """Resume saved jobs and submit the rest, then poll all of them together until they finish or the deadline."""
    from qai_hub.client import Device, InferenceJob  # optional heavy dependency (litegate[aihub])

    errors = _client_errors()
    deadline = time.monotonic() + timeout_s
    outcomes: dict[str, _Outcome] = {}
    jobs: dict[str, tuple[InferenceJob, bool]] = {}
    models: dict[str, Any] = {}
    for req in requests:
        if req.key in jobs or req.key in outcomes:
            continue
        saved = store.get(req.key)
        try:
            if saved is not None:
                job = client.get_job(saved["job_id"])
                if not isinstance(job, InferenceJob):
                    raise ValueError(f"saved AI Hub job {saved['job_id']} is a {job.job_type} job, not an inference job")
                jobs[req.key] = (job, True)
                continue
            if req.sha256 not in models:
                models[req.sha256] = client.upload_model(req.path, name=Path(req.path).name)
            # retry=False: the client's own rate-limit retry sleeps up to 10 min per request and prints to stdout,
            # past litegate's deadline; a refused request is this cell's failure instead
            job = client.submit_inference_job(models[req.sha256], device=Device(req.spec.device),
                                              inputs=dict(req.inputs) if req.inputs is not None else None,
                                              name=req.name, options=req.spec.options, profile=req.kind == PROFILE,
                                              retry=False)
        except errors as exc:
            if saved is None:
                outcomes[req.key] = _Outcome(Status.FAILED, f"submitting to AI Hub failed: {_one_line(exc)}")
            else:
                if _not_found(exc):  # the job is gone on AI Hub's side: forget it, submit afresh next time
                    store.drop(req.key)
                outcomes[req.key] = _Outcome(Status.FAILED, f"resuming AI Hub job {saved['job_id']} failed: "
                                             f"{_one_line(exc)}" + (" (forgotten: the next run submits afresh)"
                                                                    if _not_found(exc) else
                                                                    f" (remove its entry from {store.path} to submit "
                                                                    "afresh)"),
                                             job_id=saved["job_id"], resumed=True)
            continue
        try:
            store.put(req.key, {"job_id": job.job_id, "sha256": req.sha256, "device": req.spec.device,
                                "compute_unit": req.spec.compute_unit, "kind": req.kind, "name": req.name,
                                "submitted": datetime.now(UTC).isoformat(timespec="seconds")})
        except OSError as exc:  # the job runs anyway: poll it now, and say that a re-run cannot resume it
            store.unsaved[req.key] = f"submitted as {job.job_id}, but its id could not be saved to {store.path}: {exc}"
        jobs[req.key] = (job, False)
    pending = dict(jobs)
    states: dict[str, str] = {}
    while pending:
        for key, (job, resumed) in list(pending.items()):
            try:
                status = job.get_status()
            except errors as exc:
                outcomes[key] = _Outcome(Status.FAILED, f"polling AI Hub job {job.job_id} failed: {_one_line(exc)} "
                                         f"(its id is saved in {store.path}: a re-run resumes it)",
                                         job_id=job.job_id, resumed=resumed)
                del pending[key]
                continue
            states[key] = status.code
            if status.success:
                outcomes[key] = _Outcome(Status.OK, job=job, job_id=job.job_id, state=status.code, resumed=resumed)
            elif status.failure:
                store.drop(key)
                outcomes[key] = _Outcome(Status.FAILED, f"AI Hub job {job.job_id} failed: "
                                         f"{status.message or 'no reason given'}", job_id=job.job_id,
                                         state=status.code, resumed=resumed)
            else:
                continue
            del pending[key]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(poll_s, left))
    for key, (job, resumed) in pending.items():
        outcomes[key] = _Outcome(Status.TIMEOUT, f"AI Hub job {job.job_id} still {states.get(key, 'UNKNOWN')} after "
                                 f"{timeout_s:g} s; its id is saved in {store.path}: a re-run resumes it",
                                 job_id=job.job_id, state=states.get(key, ""), resumed=resumed)
    for key, why in store.unsaved.items():
        if key in outcomes:
            o = outcomes[key]
            outcomes[key] = dataclasses.replace(o, reason=f"{o.reason}; {why}" if o.reason else why)
    return outcomes


@dataclasses.dataclass(frozen=True)
class Cell:
    """One benchmark cell for :func:`bench_cells`."""

    path: str
    sha256: str
    variant: str
    backend: str
    threads: int


def placement(profile: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The per-layer placement table of an AI Hub profile and the layer count per compute unit.

    Each row: ``name``, ``op`` (the layer type), ``unit`` (NPU, GPU or CPU) and, when AI Hub timed
    the layer, ``time_us``.
    """
    table: list[dict[str, Any]] = []
    counts = {"NPU": 0, "GPU": 0, "CPU": 0}
    for layer in profile.get("execution_detail", []):
        row = {"name": layer["name"], "op": layer["type"], "unit": layer["compute_unit"]}
        if "execution_time" in layer:
            row["time_us"] = layer["execution_time"]
        table.append(row)
        counts[row["unit"]] = counts.get(row["unit"], 0) + 1
    return table, counts


def _mb(value: Any) -> float | None:
    return None if value is None else round(float(value) / 2**20, 3)


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) / 1e3


def profile_fields(profile: Mapping[str, Any], spec: AihubSpec) -> dict[str, Any]:
    """The BenchResult fields of a completed AI Hub profile (the client's ``download_profile()`` dict).

    Raises:
        BenchmarkError: the profile holds no inference time.
    """
    summary = profile.get("execution_summary") or {}
    runs_us = [float(t) for t in summary.get("all_inference_times") or []]
    estimate_us = summary.get("estimated_inference_time")
    if runs_us:
        samples_ms: tuple[float, ...] = tuple(round(t / 1e3, 5) for t in runs_us)
        latency = summarize(samples_ms)
        fields = dict.fromkeys(("p50", "p90", "p99", "mean", "std", "min", "max", "n"),
                               "AI Hub's per-run inference times (all_inference_times)")
        fields["samples"] = "all_inference_times"
    elif estimate_us:
        samples_ms = ()
        est = float(estimate_us) / 1e3
        latency = LatencyStats(p50=est, p90=est, p99=est, mean=est, std=0.0, min=est, max=est, n=1)
        fields = dict.fromkeys(("p50", "p90", "p99", "mean", "min", "max"),
                               "AI Hub's estimated_inference_time (one figure; no per-run times in this profile)")
        fields.update(std="not available", n="one estimate", samples="not available")
    else:
        raise BenchmarkError("the AI Hub profile holds no inference time")
    table, counts = placement(profile)
    wanted = spec.compute_unit.upper()
    elsewhere = {u: n for u, n in counts.items() if u != wanted and n}
    note = ""
    if elsewhere and table:
        where = ", ".join(f"{n} on the {u}" for u, n in elsewhere.items())
        note = f"{sum(elsewhere.values())} of {len(table)} layers did not run on the {wanted}: {where}"
    peak = summary.get("estimated_inference_peak_memory")
    return {
        "init_ms": _ms(summary.get("first_load_time")), "latency": latency, "samples_ms": samples_ms,
        "peak_rss_mb": _mb(peak), "note": note,
        "protocol": {
            "latency_fields": fields, "aihub_estimated_inference_ms": _ms(estimate_us),
            "load_ms": {"first": _ms(summary.get("first_load_time")), "warm": _ms(summary.get("warm_load_time")),
                        "compile": _ms(summary.get("compile_time"))},
            "init_ms_source": "first_load_time (AI Hub's cold load on the phone)",
            "peak_memory_source": ("estimated_inference_peak_memory (AI Hub: the phone's peak after inference)"
                                   if peak is not None else "not reported"),
            "inference_memory_peak_range_mb": [_mb(v) for v in summary.get("inference_memory_peak_range") or ()],
            "placement": counts, "placement_table": table,
        },
    }


def bench_cells(cells: Sequence[Cell], *, store_path: str | os.PathLike[str], timeout_s: float,
                poll_s: float | None = None, client: Client | None = None) -> list[BenchResult]:
    """Measure ``cells`` on AI Hub: submit (or resume) every profile job, poll them together, read the profiles.

    Cells that share artifact, device and compute unit share one job (the thread count does not apply);
    ``poll_s`` defaults to :data:`POLL_S`. Never raises for a job's outcome: each cell is ok, not run,
    failed or timeout with a reason.
    """
    def result(cell: Cell, status: Status, reason: str, **kw: Any) -> BenchResult:
        return BenchResult(artifact_sha256=cell.sha256, variant=cell.variant, backend=cell.backend,
                           threads=cell.threads, status=status, reason=reason, **kw)

    specs: dict[str, AihubSpec] = {}
    out: dict[int, BenchResult] = {}
    for i, cell in enumerate(cells):
        try:
            specs[cell.backend] = parse_backend(cell.backend)
        except ValueError as exc:
            out[i] = result(cell, Status.NOT_RUN, str(exc))
    todo = [i for i in range(len(cells)) if i not in out]
    reason = availability() if todo else None
    if reason:
        for i in todo:
            out[i] = result(cells[i], Status.NOT_RUN, reason, protocol={"source": SOURCE})
        todo = []
    if todo:
        try:
            store = JobStore(store_path)
        except BenchmarkError as exc:
            return [out.get(i) or result(cells[i], Status.FAILED, exc.message, protocol={"source": SOURCE})
                    for i in range(len(cells))]
        requests = {i: _Request(key=JobStore.key(cells[i].sha256, specs[cells[i].backend], PROFILE),
                                path=str(cells[i].path), sha256=cells[i].sha256, spec=specs[cells[i].backend],
                                kind=PROFILE, name=f"litegate {cells[i].variant}") for i in todo}
        outcomes = _run_jobs(list(requests.values()), client=client or make_client(), store=store,
                             timeout_s=timeout_s, poll_s=POLL_S if poll_s is None else poll_s)
        profiles: dict[str, dict[str, Any] | str] = {}
        for i in todo:
            req, oc = requests[i], outcomes[requests[i].key]
            base = {"source": SOURCE, "device": req.spec.device, "compute_unit": req.spec.compute_unit,
                    "job_id": oc.job_id, "job_state": oc.state, "resumed": oc.resumed, "job_store": str(store.path)}
            if oc.status is not Status.OK:
                out[i] = result(cells[i], oc.status, oc.reason, protocol=base)
                continue
            if req.key not in profiles:
                profiles[req.key] = _read_profile(oc, req.spec)
            got = profiles[req.key]
            if isinstance(got, str):
                store.drop(req.key)  # a finished job whose profile cannot be read: submit afresh next time
                out[i] = result(cells[i], Status.FAILED, f"{got} (forgotten: the next run submits afresh)",
                                protocol=base)
                continue
            note = "; ".join(x for x in (got["note"], oc.reason) if x)
            out[i] = result(cells[i], Status.OK, note, init_ms=got["init_ms"], latency=got["latency"],
                            peak_rss_mb=got["peak_rss_mb"], samples_ms=got["samples_ms"],
                            protocol={**base, "measured_on": "a real phone, through Qualcomm AI Hub",
                                      "runs": "AI Hub's profiler iterations (litegate's warm-up, run counts and "
                                              "threads do not apply)", **got["protocol"]})
    return [out[i] for i in range(len(cells))]


def _read_profile(outcome: _Outcome, spec: AihubSpec) -> dict[str, Any] | str:
    """The BenchResult fields of a finished job's profile, or why they could not be read."""
    assert outcome.job is not None
    try:
        profile = outcome.job.download_profile()
    except _client_errors() as exc:
        return f"reading the profile of AI Hub job {outcome.job_id} failed: {_one_line(exc)}"
    if not isinstance(profile, dict) or not profile:
        return f"AI Hub job {outcome.job_id} finished without a profile"
    try:
        return profile_fields(profile, spec)
    except BenchmarkError as exc:
        return f"AI Hub job {outcome.job_id}: {exc.message}"


class AihubJobError(BenchmarkError):
    """An AI Hub inference run gave no outputs; ``status`` says how (not run, failed, timeout)."""

    def __init__(self, message: str, *, status: Status) -> None:
        super().__init__(message)
        self.status = status


def _inputs_digest(inputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, arr in inputs.items():
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def run_outputs(path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], backend: str, *,
                store_path: str | os.PathLike[str] | None = None, timeout_s: float = 1800.0,
                poll_s: float | None = None, client: Client | None = None) -> dict[str, np.ndarray]:
    """Run the model at ``path`` on the phone with ``inputs`` and return its outputs.

    ``inputs`` maps each model input (in the model's input order) to a batch whose first axis is the
    sample axis; each sample is sent as its own batch-1 entry and the outputs come back stacked the
    same way, keyed as AI Hub's output dataset names them. The job id is saved in the job store
    (default: ``aihub_jobs.json`` beside the model) under a digest of the inputs, so a re-run with the
    same inputs resumes it. ``poll_s`` defaults to :data:`POLL_S`.

    Raises:
        AihubJobError: not runnable here (status not_run), the job failed (failed), or it did not finish
            within ``timeout_s`` (timeout); the message says which, with the job id.
    """
    spec = parse_backend(backend)
    reason = availability()
    if reason:
        raise AihubJobError(reason, status=Status.NOT_RUN)
    sizes = {int(np.shape(a)[0]) for a in inputs.values()} if inputs else set()
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"inputs need one common, non-zero sample axis; got {sorted(sizes)}")
    n = sizes.pop()
    entries = {name: [np.ascontiguousarray(arr[i:i + 1]) for i in range(n)] for name, arr in inputs.items()}
    path = Path(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    store = JobStore(store_path or path.parent / STORE_NAME)
    kind = f"inference:{_inputs_digest(inputs)}"
    req = _Request(key=JobStore.key(sha, spec, kind), path=str(path), sha256=sha, spec=spec, kind=kind,
                   name=f"litegate {path.stem} outputs", inputs=entries)
    outcome = _run_jobs([req], client=client or make_client(), store=store, timeout_s=timeout_s,
                        poll_s=POLL_S if poll_s is None else poll_s)[req.key]
    if outcome.status is not Status.OK:
        raise AihubJobError(outcome.reason, status=outcome.status)
    assert outcome.job is not None
    try:
        data = outcome.job.download_output_data()
    except _client_errors() as exc:
        store.drop(req.key)  # e.g. an expired output dataset: the job cannot give its outputs again
        raise AihubJobError(f"downloading the outputs of AI Hub job {outcome.job_id} failed: {_one_line(exc)} "
                            "(forgotten: the next run submits afresh)", status=Status.FAILED) from None
    if not data:
        store.drop(req.key)
        raise AihubJobError(f"AI Hub job {outcome.job_id} finished without an output dataset", status=Status.FAILED)
    return {name: np.concatenate([np.asarray(a) for a in arrays], axis=0) for name, arrays in data.items()}

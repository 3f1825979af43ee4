"""The data that flows through the pipeline: frozen, self-validating dataclasses.

Every type round-trips through ``to_dict()`` / ``from_dict()`` so that the JSON report is
the single source of truth and can be re-read (``litegate report``, ``litegate compare``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class Task(enum.StrEnum):
    """What a model does, which decides how text becomes inputs and how outputs are scored."""

    TEXT_CLASSIFICATION = "text-classification"
    SENTENCE_EMBEDDING = "sentence-embedding"
    TEXT_GENERATION = "text-generation"


DEFAULT_SEQ_LEN = 128


class Head(enum.StrEnum):
    """What litegate's BERT returns: class logits, pooled embeddings, the [CLS] vector, or TF-Hub encoder outputs."""

    CLASSIFICATION = "classification"
    MEAN = "mean"
    CLS = "cls"
    ENCODER = "encoder"
    MEAN_CLASSIFICATION = "mean-classification"


class SourceKind(enum.StrEnum):
    """Where an input model comes from."""

    HF = "hf"  # a Hugging Face checkpoint whose config.json picks the builder (litegate.converter.detect)
    HF_BERT = "hf-bert"
    HF_GPT2 = "hf-gpt2"
    HF_LLAMA = "hf-llama"
    SAVED_MODEL = "saved_model"
    KERAS = "keras"
    TFLITE = "tflite"

    @classmethod
    def checkpoints(cls) -> tuple[SourceKind, ...]:
        """The kinds whose graph litegate builds itself from a Hugging Face checkpoint (``hf`` resolves to one)."""
        return (cls.HF_BERT, cls.HF_GPT2, cls.HF_LLAMA)

    @classmethod
    def decoders(cls) -> tuple[SourceKind, ...]:
        """The checkpoint kinds that are text generators (prefill and decode signatures, a KV cache)."""
        return (cls.HF_GPT2, cls.HF_LLAMA)


class Status(enum.StrEnum):
    """Outcome of one measurement cell."""

    OK = "ok"
    NOT_RUN = "not_run"
    FAILED = "failed"
    TIMEOUT = "timeout"


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Record:
    """Mixin: ``to_dict`` for any frozen dataclass; ``from_dict`` for flat ones."""

    def to_dict(self) -> dict[str, Any]:
        result = _plain(self)
        assert isinstance(result, dict)
        return result

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class ModelSource(_Record):
    """Where the input model comes from and what it does."""

    kind: SourceKind
    path: str
    task: Task
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seq_len: int = DEFAULT_SEQ_LEN  # the static sequence length (prefill length of a generator) it is built with

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SourceKind(self.kind))
        object.__setattr__(self, "task", Task(self.task))
        _check(bool(self.path), "model source path must not be empty")
        _check(isinstance(self.seq_len, int) and not isinstance(self.seq_len, bool) and self.seq_len >= 1,
               f"model source seq_len must be an integer >= 1, got {self.seq_len!r}")


@dataclasses.dataclass(frozen=True)
class Artifact(_Record):
    """A file produced by a step, identified by content hash, with its lineage."""

    path: str
    sha256: str
    size_bytes: int
    parent_sha256: str | None
    produced_by: str
    step_config: Mapping[str, Any]
    tool_versions: Mapping[str, str]

    def __post_init__(self) -> None:
        _check(len(self.sha256) == 64, f"artifact sha256 must be 64 hex digits, got {self.sha256!r}")
        _check(self.size_bytes >= 0, "artifact size must be >= 0")


class RecipeKind(enum.StrEnum):
    """What a recipe does: a conversion (float, float16, dynamic-range, full-integer, int16x8, auto) or pruning."""

    FLOAT = "float"
    DYNAMIC_RANGE = "dynamic-range"
    FLOAT16 = "float16"
    FULL_INTEGER = "full-integer"
    INT16X8 = "int16x8"
    AUTO = "auto"
    PRUNE = "prune"


CALIBRATED_KINDS = frozenset({RecipeKind.FULL_INTEGER, RecipeKind.INT16X8, RecipeKind.AUTO})


@dataclasses.dataclass(frozen=True)
class Recipe(_Record):
    """A quantization or pruning recipe: a name, a kind, parameters, and what it documents."""

    name: str
    kind: RecipeKind
    params: Mapping[str, Any]
    description: str = ""

    KINDS = tuple(k.value for k in RecipeKind)

    def __post_init__(self) -> None:
        _check(bool(self.name), "recipe name must not be empty")
        object.__setattr__(self, "kind", self.kind_of(self.name, self.kind))

    @classmethod
    def kind_of(cls, name: str, value: object) -> RecipeKind:
        """``value`` as a :class:`RecipeKind`; ValueError naming the recipe when it is none."""
        _check(value in cls.KINDS, f"recipe {name!r}: kind must be one of {cls.KINDS}, got {value!r}")
        return RecipeKind(str(value))

    @property
    def needs_calibration(self) -> bool:
        """The converter calibrates this recipe's activations: it cannot be built without calibration data."""
        return self.kind in CALIBRATED_KINDS

    @property
    def reads_calibration(self) -> bool:
        """Calibration data changes this recipe's model: it needs it, or uses it where given (GPTQ weight rounding,
        which falls back to rounding to nearest without it)."""
        return self.needs_calibration or self.params.get("weight_rounding") == "gptq"

    @property
    def prunes(self) -> bool:
        return self.kind is RecipeKind.PRUNE


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    """A variant: an optional pruning recipe, then a quantization recipe (``pruned-50+int8``)."""

    name: str
    recipe: Recipe
    prune: Recipe | None = None


@dataclasses.dataclass(frozen=True)
class LatencyStats(_Record):
    """Order statistics of a latency sample set, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int

    def __post_init__(self) -> None:
        _check(self.n > 0, "latency stats need at least one sample")
        _check(self.min <= self.p50 <= self.p90 <= self.p99 <= self.max, "latency percentiles out of order")


@dataclasses.dataclass(frozen=True)
class PairedCell(_Record):
    """The baseline's model re-timed beside a variant's in one child (:mod:`litegate.benchmarks.paired`): the
    block medians (ms) of both, round by round; ``reason`` says why the pair could not be timed."""

    variant: str
    backend: str
    threads: int
    base_path: str
    base_blocks: tuple[float, ...] = ()
    new_blocks: tuple[float, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        _check(len(self.base_blocks) == len(self.new_blocks), "paired cell needs as many baseline as new blocks")
        _check(bool(self.reason) or len(self.base_blocks) > 0, "paired cell needs blocks or a reason")


@dataclasses.dataclass(frozen=True)
class BenchResult(_Record):
    """One latency/memory cell: a variant on a backend with a thread count.

    An emulated CPU (``arm64-emu``) has no latency: its ok cell carries ``instructions`` (guest instructions per
    inference, counted by the emulator) instead, and ``latency`` stays None.
    """

    artifact_sha256: str
    variant: str
    backend: str
    threads: int
    status: Status
    reason: str = ""
    init_ms: float | None = None
    first_ms: float | None = None
    latency: LatencyStats | None = None
    peak_rss_mb: float | None = None
    samples_ms: tuple[float, ...] = ()
    protocol: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    instructions: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        if isinstance(self.latency, Mapping):
            object.__setattr__(self, "latency", LatencyStats.from_dict(self.latency))
        object.__setattr__(self, "samples_ms", tuple(self.samples_ms))
        _check(self.threads >= 1, "threads must be >= 1")
        if self.status is Status.OK:
            _check(self.latency is not None or self.instructions is not None,
                   "an ok bench result needs latency (or, emulated, instructions per inference)")
            _check(self.latency is None or self.instructions is None,
                   "a bench result has latency or emulated instructions, not both")
        else:
            _check(bool(self.reason), f"a {self.status.value} bench result needs a reason")
        _check(self.instructions is None or self.instructions > 0, "instructions per inference must be > 0")


@dataclasses.dataclass(frozen=True)
class AccuracyResult(_Record):
    """The task metric of one variant on one backend, and its delta to the fp32 reference."""

    task: Task
    metric: str
    value: float | None
    backend: str
    n_samples: int
    status: Status = Status.OK
    reason: str = ""
    reference: float | None = None
    delta: float | None = None
    extra: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "status", Status(self.status))
        if self.status is Status.OK:
            _check(self.value is not None and self.n_samples > 0, "an ok accuracy result needs a value and samples")
        else:
            _check(bool(self.reason), "a non-ok accuracy result needs a reason")


@dataclasses.dataclass(frozen=True)
class SizeInfo(_Record):
    """Size of a .tflite file."""

    bytes: int
    gzip_bytes: int

    @property
    def mb(self) -> float:
        return self.bytes / 1e6


@dataclasses.dataclass(frozen=True)
class VariantResult(_Record):
    """Everything measured for one variant."""

    name: str
    recipe: Recipe
    status: Status
    reason: str = ""
    artifact: Artifact | None = None
    size: SizeInfo | None = None
    bench: tuple[BenchResult, ...] = ()
    accuracy: tuple[AccuracyResult, ...] = ()
    cached: bool = False
    graph: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compat: tuple[CompatReport, ...] = ()
    quant: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    coreml: tuple[CoreMLResult, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantResult:
        return cls(
            name=data["name"],
            recipe=Recipe.from_dict(data["recipe"]),
            status=Status(data["status"]),
            reason=data.get("reason", ""),
            artifact=Artifact.from_dict(data["artifact"]) if data.get("artifact") else None,
            size=SizeInfo.from_dict(data["size"]) if data.get("size") else None,
            bench=tuple(BenchResult.from_dict(b) for b in data.get("bench", ())),
            accuracy=tuple(AccuracyResult.from_dict(a) for a in data.get("accuracy", ())),
            cached=bool(data.get("cached", False)),
            graph=dict(data.get("graph", {})),
            compat=tuple(CompatReport.from_dict(c) for c in data.get("compat", ())),
            quant=dict(data.get("quant", {})),
            coreml=tuple(CoreMLResult.from_dict(c) for c in data.get("coreml", ())),
        )

    def compat_for(self, delegate: str) -> CompatReport | None:
        for c in self.compat:
            if c.delegate == delegate:
                return c
        return None

    def coreml_for(self, target: str) -> CoreMLResult | None:
        for c in self.coreml:
            if c.target == target:
                return c
        return None

    def bench_cell(self, backend: str, threads: int) -> BenchResult | None:
        for b in self.bench:
            if b.backend == backend and b.threads == threads:
                return b
        return None

    def primary_accuracy(self) -> AccuracyResult | None:
        return self.accuracy[0] if self.accuracy else None


@dataclasses.dataclass(frozen=True)
class Verdict(_Record):
    """One gate check: what was checked, the measured value, the limit, and the outcome."""

    check: str
    variant: str
    passed: bool
    message: str
    value: float | None = None
    limit: float | None = None
    backend: str | None = None
    threads: int | None = None


SCHEMA_VERSION = "1.0"


@dataclasses.dataclass(frozen=True)
class Report(_Record):
    """The run's single source of truth; Markdown and other formats are renderings of it."""

    run: Mapping[str, Any]
    model: Mapping[str, Any]
    variants: tuple[VariantResult, ...]
    verdicts: tuple[Verdict, ...]
    passed: bool
    schema_version: str = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        version = data.get("schema_version")
        _check(version == SCHEMA_VERSION, f"report schema_version {version!r} is not {SCHEMA_VERSION!r}")
        return cls(
            run=data["run"],
            model=data["model"],
            variants=tuple(VariantResult.from_dict(v) for v in data["variants"]),
            verdicts=tuple(Verdict.from_dict(v) for v in data["verdicts"]),
            passed=bool(data["passed"]),
        )

    def variant(self, name: str) -> VariantResult | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None


@dataclasses.dataclass(frozen=True)
class OpCompat(_Record):
    """One op's verdict for one delegate: supported or not and why, and whether it ends up delegated.

    ``supported`` is the per-op verdict of the delegate's rules; ``delegated`` says whether the op
    actually runs on the delegate once partitioning is applied (a supported op in a partition below
    ``min_nodes_per_partition``, or beyond ``max_delegated_partitions``, falls back to the CPU, and
    ``reason`` then says so). ``source`` names the delegate source file or doc the reason comes from.
    """

    index: int
    op: str
    version: int
    delegate: str
    supported: bool
    reason: str = ""
    delegated: bool = False
    subgraph: int = 0
    macs: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        _check(self.index >= 0, "op index must be >= 0")
        _check(bool(self.op), "op name must not be empty")
        _check(self.supported or bool(self.reason), f"unsupported op {self.op}#{self.index} needs a reason")
        _check(self.supported or not self.delegated, f"op {self.op}#{self.index} is delegated but not supported")


@dataclasses.dataclass(frozen=True)
class CompatPartition(_Record):
    """A contiguous run of supported ops (execution order) and whether the delegate takes it."""

    subgraph: int
    ops: tuple[int, ...]
    delegated: bool
    reason: str = ""
    macs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        _check(len(self.ops) > 0, "a partition needs at least one op")

    @property
    def size(self) -> int:
        return len(self.ops)


@dataclasses.dataclass(frozen=True)
class CompatReport(_Record):
    """Static compatibility of one .tflite model with one delegate, from the flatbuffer alone.

    ``delegated_fraction`` counts ops, ``delegated_mac_fraction`` weighs them by multiply-
    accumulates (None when the model has no MAC-carrying op); ``fallback_ops`` maps each op name
    that stays on the CPU to how many times it does; ``model_reason`` is set when the delegate
    refuses the whole graph (e.g. dynamic shapes).
    """

    delegate: str
    ops: tuple[OpCompat, ...]
    partitions: tuple[CompatPartition, ...]
    delegated_fraction: float
    delegated_mac_fraction: float | None
    fallback_ops: Mapping[str, int]
    total_macs: int = 0
    delegated_macs: int = 0
    min_nodes_per_partition: int = 1
    max_delegated_partitions: int | None = None
    model_reason: str = ""
    model: str = ""
    notes: tuple[str, ...] = ()
    status: Status = Status.OK  # not_run / failed / timeout: no verdict (``reason`` says why); never a zero
    reason: str = ""
    title: str = ""  # what the target is, in words (e.g. the legacy hexagon_nn delegate, or QNN on SM8650)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # target-specific facts (compile time, size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "ops", tuple(OpCompat.from_dict(o) if isinstance(o, Mapping) else o
                                              for o in self.ops))
        object.__setattr__(self, "partitions", tuple(CompatPartition.from_dict(p) if isinstance(p, Mapping) else p
                                                     for p in self.partitions))
        object.__setattr__(self, "notes", tuple(self.notes))
        _check(bool(self.delegate), "compat report needs a delegate name")
        _check(0.0 <= self.delegated_fraction <= 1.0, "delegated_fraction must be within [0, 1]")
        if self.delegated_mac_fraction is not None:
            _check(0.0 <= self.delegated_mac_fraction <= 1.0, "delegated_mac_fraction must be within [0, 1]")
        _check(self.min_nodes_per_partition >= 1, "min_nodes_per_partition must be >= 1")

    @property
    def label(self) -> str:
        """How a report names the target (the legacy hexagon rules read ``hexagon_nn (legacy)``)."""
        return str(self.extra.get("display_name") or self.delegate)

    @property
    def verdict_text(self) -> str:
        """``not run: ...`` / ``failed: ...`` for a target without a verdict, else empty."""
        return "" if self.status is Status.OK else f"{self.status.value.replace('_', ' ')}: {self.reason}"

    @property
    def total_ops(self) -> int:
        return len(self.ops)

    @property
    def delegated_ops(self) -> int:
        return sum(1 for o in self.ops if o.delegated)

    @property
    def fully_delegated(self) -> bool:
        return bool(self.ops) and all(o.delegated for o in self.ops)


@dataclasses.dataclass(frozen=True)
class CoreMLResult(_Record):
    """One variant as a Core ML ML Program (``mlprogram:DEPLOYMENT``), converted by coremltools from the TF graph.

    ``mil_ops`` counts the converted program's MIL ops by type; ``failing_op`` names the TF op coremltools could not
    convert; ``prediction`` maps each prediction cell (accuracy, latency per compute units, op placement) to its
    ``not run: ...`` text where it did not run.
    """

    target: str
    status: Status
    reason: str = ""
    deployment_target: str = ""
    precision: str = ""
    mil_ops: Mapping[str, int] = dataclasses.field(default_factory=dict)
    package: str = ""
    package_bytes: int | None = None
    seconds: float | None = None
    failing_op: str = ""
    prediction: Mapping[str, str] = dataclasses.field(default_factory=dict)
    coremltools: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        _check(bool(self.target), "a Core ML result needs a target")
        if self.status is Status.OK:
            _check(bool(self.package) and (self.package_bytes or 0) > 0, "an ok Core ML result needs its .mlpackage")
        else:
            _check(bool(self.reason), f"a {self.status.value} Core ML result needs a reason")

    @property
    def verdict_text(self) -> str:
        """``converted`` / ``not run: ...`` / ``failed: ...``."""
        return "converted" if self.status is Status.OK else f"{self.status.value.replace('_', ' ')}: {self.reason}"

"""``release.toml``: the release config, loaded into validated frozen dataclasses.

Paths inside the file are relative to the file's folder. Every mistake (unknown key, wrong
type, missing file, bad value) is a :class:`ConfigError` that names the file and the key.
Numbers are read through :meth:`_Table.number`: never NaN or infinite (TOML has ``nan`` and ``inf``, and a NaN
budget compares False with everything, so it would pass every measurement), and within the key's range.

Example::

    name = "demo"
    [model]
    source = "hf"                 # hf (or hf-bert | hf-gpt2 | hf-llama) | saved_model | keras | tflite
    path = "model"
    task = "text-classification"
    head = "classification"
    seq_len = 64
    [data]
    eval = "eval.tsv"
    calibration = "calibration.txt"
    calibration_samples = 150
    [output]
    dir = "../../reports/demo"
    [[variants]]                  # or: variants = ["fp32", "int8"]
    name = "int8"
    recipe = "int8"               # a built-in recipe name or a path to a recipe .json
    [bench]
    backends = ["xnnpack"]
    threads = [1, 2]
    [budgets]                     # defaults for every variant
    max_accuracy_drop = 2.0
    [budgets.int8]                # overrides for one variant
    max_accuracy_drop = 3.0
    [gate]
    require = "all"               # all: every variant meets its budgets; any: at least one does
    [history]                     # the run history (docs/history.md)
    enabled = true                # ingest each run; its report gets the last runs' trend
    url = ""                      # "": history.sqlite beside output.dir; postgresql://… or a file path
    last = 10
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from litegate import timing
from litegate.backends.spec import backend_relative_to
from litegate.baseline import CompareConfig
from litegate.compat.ruleset import DELEGATES
from litegate.converter.detect import resolve
from litegate.errors import ConfigError
from litegate.quantize import recipes
from litegate.types import DEFAULT_SEQ_LEN, ModelSource, Recipe, SourceKind, Task, VariantConfig

BUDGET_KEYS = ("max_size_mb", "max_gzip_mb", "max_latency_p50_ms", "max_latency_p90_ms", "max_accuracy_drop",
               "min_accuracy", "max_peak_rss_mb", "min_cosine", "max_perplexity_ratio", "min_agreement",
               "max_instructions_m", "max_cold_start_ms")
# budgets per compatibility target: {target = percent}, e.g. min_delegated_ops_pct = { gpu = 100, "qnn:SM8650" = 100 }
COVERAGE_KEYS = ("min_delegated_ops_pct", "min_delegated_macs_pct")
_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}


class _Table:
    """A TOML table that hands out typed keys and complains about the ones nobody took."""

    def __init__(self, data: Mapping[str, Any], where: str, file: Path) -> None:
        self.data, self.where, self.file = dict(data), where, file
        self.taken: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, typ: type, default: Any = dataclasses.MISSING) -> Any:
        self.taken.add(key)
        if key not in self.data:
            if default is dataclasses.MISSING:
                raise ConfigError(f"{self.file}: missing required key '{self._name(key)}'")
            return default
        value = self.data[key]
        ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"{self.file}: '{self._name(key)}' must be {_TYPES.get(typ, typ.__name__)}, "
                              f"got {type(value).__name__} {value!r}")
        return value

    def number(self, key: str, typ: type = float, default: Any = dataclasses.MISSING, *, low: float = 0.0,
               high: float = math.inf, above: bool = False) -> Any:
        """A finite number in ``[low, high]`` (``(low, high]`` with ``above``); the default is not checked."""
        if key not in self.data:
            return self.get(key, typ, default)
        value = self.get(key, typ)
        if not math.isfinite(value):
            raise ConfigError(f"{self.file}: '{self._name(key)}' must be a finite number, got {value}")
        if value < low or (above and value == low) or value > high:
            bounds = f"{'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
            raise ConfigError(f"{self.file}: '{self._name(key)}' must be {bounds}, got {value:g}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict, {}), self._name(key), self.file)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.taken)
        if extra:
            raise ConfigError(f"{self.file}: unknown key '{self._name(extra[0])}'")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    source: ModelSource  # with its seq_len


@dataclasses.dataclass(frozen=True)
class DataConfig:
    eval: Path | None
    calibration: Path | None
    calibration_samples: int = 200
    max_eval_samples: int | None = None
    train: Path | None = None  # labelled text for pruning recovery (else distillation on calibration text)
    train_samples: int = 2000


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = ("xnnpack",)
    threads: tuple[int, ...] = (1, 2)
    warmup_runs: int = timing.DEFAULT.warmup_runs
    min_runs: int = timing.DEFAULT.min_runs
    min_seconds: float = timing.DEFAULT.min_seconds
    max_runs: int = timing.DEFAULT.max_runs
    timeout_s: float = 300.0
    eval_backend: str = "xnnpack"
    eval_threads: int = 2
    peak_probe: bool = True
    profile_runs: int = 20  # per-op profile of the slowest variant (LiteRT's profiler); 0: none

    def protocol(self) -> dict[str, Any]:
        return timing.Protocol(warmup_runs=self.warmup_runs, min_runs=self.min_runs, min_seconds=self.min_seconds,
                               max_runs=self.max_runs).to_dict()


@dataclasses.dataclass(frozen=True)
class Budget:
    max_size_mb: float | None = None
    max_gzip_mb: float | None = None
    max_latency_p50_ms: float | None = None
    max_latency_p90_ms: float | None = None
    max_accuracy_drop: float | None = None
    min_accuracy: float | None = None
    max_peak_rss_mb: float | None = None
    min_cosine: float | None = None  # sentence-embedding: mean cosine to the reference variant
    max_perplexity_ratio: float | None = None  # text-generation: perplexity / reference perplexity
    min_agreement: float | None = None  # % of predictions (class, next token, nearest neighbour) equal to the reference
    # (a KV-cache generator: the lower of its prefill and decode agreement)
    max_instructions_m: float | None = None  # millions of instructions per inference on an emulated CPU (arm64-emu)
    max_cold_start_ms: float | None = None  # model load + first inference, per measured cell
    min_delegated_ops_pct: Mapping[str, float] | None = None  # compatibility target -> % of ops it must take
    min_delegated_macs_pct: Mapping[str, float] | None = None  # compatibility target -> % of MACs it must take

    def merged(self, override: Mapping[str, Any]) -> Budget:
        return dataclasses.replace(self, **override)


@dataclasses.dataclass(frozen=True)
class HistoryConfig:
    """``[history]``: the run history database (:mod:`litegate.history`)."""

    enabled: bool = False  # ingest each run's report, and put the last runs' trend into it
    url: str = ""  # postgresql://… or a SQLite path (relative to the config file); "": history.sqlite beside output.dir
    last: int = 10  # runs in the trend


@dataclasses.dataclass(frozen=True)
class ReleaseConfig:
    """A whole release config."""

    path: Path
    name: str
    model: ModelConfig
    data: DataConfig
    variants: tuple[VariantConfig, ...]
    bench: BenchConfig
    budget: Budget
    variant_budgets: Mapping[str, Budget]
    output_dir: Path
    cache_dir: Path
    reference: str = "fp32"
    require: str = "all"
    ship: tuple[str, ...] = ()  # the variants that ship: the gate judges these (empty: require over the candidates)
    # ship per target (``ship = { cpu = "dynamic-int8", gpu = "fp16" }``): target -> the variants shipped there; a
    # target's coverage budgets then judge only the variants shipped to it ({} when ``ship`` is a list)
    ship_targets: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    delegates: tuple[str, ...] = DELEGATES
    emulate_samples: int = 200
    debug: bool = False
    baseline: Path | None = None
    compare: CompareConfig = dataclasses.field(default_factory=CompareConfig)
    convert_timeout_s: float = 900.0
    mem_mb: int | None = None
    history: HistoryConfig = dataclasses.field(default_factory=HistoryConfig)

    def budget_for(self, variant: str) -> Budget:
        return self.variant_budgets.get(variant, self.budget)

    def with_overrides(self, *, output: Path | None = None, data: Path | None = None,
                       baseline: Path | None = None) -> ReleaseConfig:
        cfg = self
        if baseline is not None:
            if not baseline.is_file():
                raise ConfigError(f"--baseline {baseline}: file not found")
            cfg = dataclasses.replace(cfg, baseline=baseline.resolve())
        if output is not None:
            out = output.resolve()
            # the default cache follows the output; an explicit output.cache_dir stays
            cache = out / ".cache" if self.cache_dir == self.output_dir / ".cache" else self.cache_dir
            cfg = dataclasses.replace(cfg, output_dir=out, cache_dir=cache)
        if data is not None:
            if not data.is_file():
                raise ConfigError(f"--data {data}: file not found")
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval=data.resolve()))
        return cfg


def _path(base: Path, value: str, key: str, file: Path, *, must_exist: bool = True) -> Path:
    p = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if must_exist and not p.exists():
        raise ConfigError(f"{file}: '{key}' = {value!r}: {p} does not exist")
    return p


def _budget(t: _Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in BUDGET_KEYS:
        if key in t.data:
            out[key] = t.number(key)
    for key in COVERAGE_KEYS:
        if key in t.data:
            targets = t.table(key)
            out[key] = {target: targets.number(target, high=100.0) for target in list(targets.data)}
    return out


def load(path: str | Path) -> ReleaseConfig:
    """Load and validate a release config.

    Raises:
        ConfigError: the file is missing or invalid; the message names the key.
    """
    file = Path(path)
    raw = _read_toml(file)
    base = file.resolve().parent
    top = _Table(raw, "", file)
    name = top.get("name", str, file.parent.name or "release")
    model = _model(top.table("model"), base, gpu_target=_measures_gpu(raw))
    data = _data(top.table("data"), base)
    output_dir, cache_dir = _output(top.table("output"), base, name)
    variants = _variants(top, base, file)
    _check_tflite_variants(model, variants, file)
    names = [v.name for v in variants]
    bench = _bench(top.table("bench"), base)
    budget, variant_budgets = _budgets(top.table("budgets"), names)
    gate = _gate(top.table("gate"), names)
    delegates, emulate_samples = _check(top.table("check"))
    budget, variant_budgets = _coverage_targets(budget, variant_budgets, delegates, file)
    ship_targets = _ship_targets(gate.ship_targets, delegates, file)
    debug = _quantize(top.table("quantize"))
    convert_timeout, mem_mb = _limits(top.table("limits"))
    history = _history(top.table("history"), base)
    top.done()
    return ReleaseConfig(
        path=file.resolve(), name=name, model=model, data=data, variants=variants, bench=bench, budget=budget,
        variant_budgets=variant_budgets, output_dir=output_dir, cache_dir=cache_dir, reference=gate.reference,
        require=gate.require, ship=gate.ship, ship_targets=ship_targets, convert_timeout_s=convert_timeout, mem_mb=mem_mb, delegates=delegates,
        emulate_samples=emulate_samples, debug=debug, history=history,
        # resolved last: unknown keys anywhere are reported before a missing baseline file
        baseline=_path(base, gate.baseline, "gate.baseline", file) if gate.baseline else None, compare=gate.compare,
    )


def _read_toml(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None


def _measures_gpu(raw: Mapping[str, Any]) -> bool:
    """Whether the release targets the GPU delegate (``bench.backends`` has "gpu") or a Qualcomm NPU (a ``qnn`` target
    in ``check.delegates``): read ahead of ``[bench]`` and ``[check]`` for ``model.gpu_friendly``'s default."""
    bench_raw, check_raw = raw.get("bench"), raw.get("check")
    gpu = isinstance(bench_raw, dict) and "gpu" in (bench_raw.get("backends") or ())
    targets = check_raw.get("delegates") if isinstance(check_raw, dict) else None
    npu = isinstance(targets, list) and any(isinstance(t, str) and (t == "qnn" or t.startswith("qnn:")) for t in targets)
    return gpu or npu


def _model(m: _Table, base: Path, *, gpu_target: bool) -> ModelConfig:
    """``[model]``."""
    file = m.file
    kind = m.get("source", str)
    try:
        source_kind = SourceKind(kind)
    except ValueError:
        raise ConfigError(f"{file}: 'model.source' = {kind!r} is not one of "
                          f"{', '.join(k.value for k in SourceKind)}") from None
    task_name = m.get("task", str, Task.TEXT_CLASSIFICATION.value)
    try:
        task = Task(task_name)
    except ValueError:
        raise ConfigError(f"{file}: 'model.task' = {task_name!r} is not one of {', '.join(t.value for t in Task)}") from None
    model_path = _path(base, m.get("path", str), "model.path", file)
    head = m.get("head", str, "classification" if task is Task.TEXT_CLASSIFICATION else "mean")
    seq_len = m.get("seq_len", int, DEFAULT_SEQ_LEN)
    if not 1 <= seq_len <= 4096:
        raise ConfigError(f"{file}: 'model.seq_len' must be between 1 and 4096, got {seq_len}")
    # the model's own files decide what the config leaves out: a Hugging Face checkpoint's config.json the builder
    # of `source = "hf"`, the head and the task; a keras-hub model its sequence length (litegate.converter.detect)
    source = resolve(ModelSource(kind=source_kind, path=str(model_path), task=task, options={"head": head},
                                 seq_len=seq_len), head_given="head" in m.data, task_given="task" in m.data,
                     seq_len_given="seq_len" in m.data)
    options = _model_options(m, base, str(source.options["head"]), source.kind, gpu_target)
    m.done()
    return ModelConfig(dataclasses.replace(source, options=options))


def _model_options(m: _Table, base: Path, head: str, source_kind: SourceKind, gpu_target: bool) -> dict[str, Any]:
    """The optional ``[model]`` keys, as ``ModelSource.options``."""
    file = m.file
    options: dict[str, Any] = {"head": head}
    tokenizer = m.get("tokenizer", str, "")
    if tokenizer:
        options["tokenizer"] = str(_path(base, tokenizer, "model.tokenizer", file))
    extra_weights = m.get("extra_weights", str, "")
    if extra_weights:
        options["extra_weights"] = str(_path(base, extra_weights, "model.extra_weights", file))
    labels = m.get("labels", list, [])
    if labels:
        options["labels"] = [str(x) for x in labels]
    signature = m.get("signature", str, "")
    if signature:
        options["signature"] = signature
    max_len = m.get("max_len", int, 0)  # a decoder's KV-cache positions (default: litegate.converter.preflight)
    if max_len:
        if source_kind not in SourceKind.decoders():
            raise ConfigError(f"{file}: 'model.max_len' is the KV-cache length of a decoder checkpoint "
                              f"(hf-gpt2, hf-llama), not of a {source_kind.value!r} source")
        if not 1 <= max_len <= 4096:
            raise ConfigError(f"{file}: 'model.max_len' must be between 1 and 4096, got {max_len}")
        options["max_len"] = max_len
    if m.get("dynamic_shapes", bool, False):
        options["dynamic_shapes"] = True
    if m.get("allow_lambda", bool, False):
        options["allow_lambda"] = True
    if m.get("allow_unsafe_ops", bool, False):
        options["allow_unsafe_ops"] = True
    if m.get("check_determinism", bool, False):
        options["check_determinism"] = True
    # GPU-friendly graph (1-D embedding gathers, no shrink-mask slices): on by default when the release
    # measures the GPU delegate (bench.backends has "gpu") or checks a Qualcomm NPU (a qnn target: the HTP
    # refuses GPT-2's rank-0 StridedSlice and takes the rewritten graph whole); check.delegates' rule-based
    # gpu (in its default) does not switch it on. Only Hugging Face checkpoint sources have the rewrite.
    rewritable = source_kind in SourceKind.checkpoints()
    if m.get("gpu_friendly", bool, gpu_target and rewritable):
        if not rewritable:
            raise ConfigError(f"{file}: 'model.gpu_friendly' applies to Hugging Face checkpoint sources, "
                              f"not {source_kind.value!r}")
        options["gpu_friendly"] = True
    return options


def _data(d: _Table, base: Path) -> DataConfig:
    """``[data]``."""
    file = d.file
    eval_path = d.get("eval", str, "")
    calib_path = d.get("calibration", str, "")
    n_cal = d.get("calibration_samples", int, 200)
    max_eval = d.get("max_eval_samples", int, 0)
    train_path = d.get("train", str, "")
    n_train = d.get("train_samples", int, 2000)
    if n_cal < 1:
        raise ConfigError(f"{file}: 'data.calibration_samples' must be >= 1, got {n_cal}")
    d.done()
    return DataConfig(
        eval=_path(base, eval_path, "data.eval", file) if eval_path else None,
        calibration=_path(base, calib_path, "data.calibration", file) if calib_path else None,
        calibration_samples=n_cal,
        max_eval_samples=max_eval or None,
        train=_path(base, train_path, "data.train", file) if train_path else None,
        train_samples=n_train,
    )


def _output(o: _Table, base: Path, name: str) -> tuple[Path, Path]:
    """``[output]``: the output folder and the cache folder."""
    output_dir = _path(base, o.get("dir", str, f"reports/{name}"), "output.dir", o.file, must_exist=False)
    cache = o.get("cache_dir", str, "")
    cache_dir = _path(base, cache, "output.cache_dir", o.file, must_exist=False) if cache else output_dir / ".cache"
    o.done()
    return output_dir, cache_dir


def _check_tflite_variants(model: ModelConfig, variants: tuple[VariantConfig, ...], file: Path) -> None:
    """A .tflite source can only be measured as it is (float recipes)."""
    if model.source.kind is not SourceKind.TFLITE:
        return
    for v in variants:
        if v.recipe.kind != "float":
            raise ConfigError(f"{file}: variant {v.name!r}: a tflite source cannot be re-quantized "
                              f"(recipe kind {v.recipe.kind.value!r}); start from the TensorFlow model")


def _bench(b: _Table, base: Path) -> BenchConfig:
    """``[bench]``; the timing protocol defaults to :data:`litegate.timing.DEFAULT`."""
    from litegate.backends.registry import backend_syntax_error  # imports LiteRT: not at CLI start

    file = b.file
    backends = tuple(b.get("backends", list, ["xnnpack"]))
    threads = tuple(b.get("threads", list, [1, 2]))
    for be in backends:
        problem = backend_syntax_error(be)
        if problem:
            raise ConfigError(f"{file}: 'bench.backends': {problem}")
    backends = tuple(backend_relative_to(be, base) for be in backends)  # external:rel/lib.so -> this file's folder
    if not threads:
        raise ConfigError(f"{file}: 'bench.threads' must list at least one thread count, e.g. [1, 2]")
    for t in threads:
        if not isinstance(t, int) or isinstance(t, bool) or t < 1:
            raise ConfigError(f"{file}: 'bench.threads' entries must be integers >= 1, got {t!r}")
    protocol = timing.DEFAULT
    bench = BenchConfig(
        backends=backends, threads=threads,
        warmup_runs=b.number("warmup_runs", int, protocol.warmup_runs),
        min_runs=b.get("min_runs", int, protocol.min_runs),
        min_seconds=b.number("min_seconds", float, protocol.min_seconds),
        max_runs=b.get("max_runs", int, protocol.max_runs),
        timeout_s=b.number("timeout_s", float, 300.0, above=True),
        eval_backend=b.get("eval_backend", str, "xnnpack"),
        eval_threads=b.number("eval_threads", int, max(threads), low=1),
        peak_probe=b.get("peak_probe", bool, True),
        profile_runs=b.get("profile_runs", int, 20),
    )
    if bench.profile_runs < 0:
        raise ConfigError(f"{file}: 'bench.profile_runs' must be >= 0 (0: no per-op profile), got {bench.profile_runs}")
    if bench.min_runs < 1 or bench.max_runs < bench.min_runs:
        raise ConfigError(f"{file}: 'bench.min_runs' must be >= 1 and <= 'bench.max_runs'")
    b.done()
    return bench


def _budgets(bt: _Table, names: list[str]) -> tuple[Budget, dict[str, Budget]]:
    """``[budgets]`` (defaults for every variant) and its ``[budgets.VARIANT]`` overrides."""
    default = Budget(**_budget(bt))
    per_variant = {}
    for key in list(bt.data):
        if key in BUDGET_KEYS or key in COVERAGE_KEYS:
            continue
        if key not in names:
            if isinstance(bt.data[key], dict):
                raise ConfigError(f"{bt.file}: 'budgets.{key}' names no variant (variants: {', '.join(names)})")
            raise ConfigError(f"{bt.file}: unknown key 'budgets.{key}'")
        vt = bt.table(key)
        per_variant[key] = default.merged(_budget(vt))
        vt.done()
    bt.done()
    return default, per_variant


def _coverage_targets(budget: Budget, per_variant: dict[str, Budget], delegates: tuple[str, ...],
                      file: Path) -> tuple[Budget, dict[str, Budget]]:
    """Coverage budgets name targets of ``[check] delegates`` (as the reports name them: ``qnn`` is
    ``qnn:SM8650``); a target that is not checked could never be judged, so it is refused here."""
    def fixed(b: Budget) -> Budget:
        changes: dict[str, Any] = {}
        for key in COVERAGE_KEYS:
            pcts = getattr(b, key)
            if not pcts:
                continue
            changes[key] = {_checked_target(t, delegates, f"budgets.{key}", file): pct for t, pct in pcts.items()}
        return dataclasses.replace(b, **changes) if changes else b

    return fixed(budget), {k: fixed(b) for k, b in per_variant.items()}


class _Gate(NamedTuple):
    reference: str
    require: str
    ship: tuple[str, ...]
    ship_targets: Mapping[str, tuple[str, ...]]  # target as written -> variants ({} when ship is a list)
    baseline: str  # as written; resolved by load() once every key has been checked
    compare: CompareConfig


def _gate(g: _Table, names: list[str]) -> _Gate:
    """``[gate]``."""
    file = g.file
    reference = g.get("reference", str, "fp32")
    require = g.get("require", str, "all")
    if require not in ("all", "any"):
        raise ConfigError(f"{file}: 'gate.require' must be 'all' or 'any', got {require!r}")
    baseline = g.get("baseline", str, "")
    compare_cfg = CompareConfig(
        threshold=g.number("regression_threshold", float, 0.05), confidence=g.number("confidence", float, 0.95),
        max_size_increase=g.number("max_size_increase", float, 0.02),
        max_accuracy_regression=g.number("max_accuracy_regression", float, 1.0),
        instructions_tolerance=g.number("instructions_tolerance", float, 0.0005),
        between_run_noise=g.number("between_run_noise", float, 0.10, high=0.99),
        paired_rounds=g.number("paired_rounds", int, 15, high=1000))
    if not 0.0 <= compare_cfg.instructions_tolerance < 1.0:
        raise ConfigError(f"{file}: 'gate.instructions_tolerance' must be in [0, 1) (a fraction: 0.0005 is 0.05%), "
                          f"got {compare_cfg.instructions_tolerance}")
    if not 0.5 <= compare_cfg.confidence < 1.0:
        raise ConfigError(f"{file}: 'gate.confidence' must be in [0.5, 1), got {compare_cfg.confidence}")
    if reference not in names:
        raise ConfigError(f"{file}: 'gate.reference' = {reference!r} is not a variant (variants: {', '.join(names)})")
    raw_ship = g.data.get("ship", [])
    per_target: dict[str, tuple[str, ...]] = {}
    if isinstance(raw_ship, dict):  # ship per target: { cpu = "dynamic-int8", gpu = ["fp16"] }
        g.taken.add("ship")
        for target, vs in raw_ship.items():
            vs = [vs] if isinstance(vs, str) else vs
            if not isinstance(vs, list) or not vs or not all(isinstance(x, str) for x in vs):
                raise ConfigError(f"{file}: 'gate.ship.{target}' must be a variant name or a list of them, got {vs!r}")
            per_target[target] = tuple(vs)
        ship = tuple(dict.fromkeys(x for vs in per_target.values() for x in vs))
    else:
        ship = tuple(g.get("ship", list, []))
    for v in ship:
        if v not in names:
            raise ConfigError(f"{file}: 'gate.ship' names {v!r}, which is not a variant (variants: {', '.join(names)})")
    g.done()
    return _Gate(reference, require, ship, per_target, baseline, compare_cfg)


def _ship_targets(per_target: Mapping[str, tuple[str, ...]], delegates: tuple[str, ...],
                  file: Path) -> dict[str, tuple[str, ...]]:
    """``ship``'s targets: ``cpu``, or a target of ``[check] delegates`` (named as the reports name it)."""
    return {_checked_target(t, delegates, "gate.ship", file, cpu=True): vs for t, vs in per_target.items()}


def _checked_target(target: str, delegates: tuple[str, ...], key: str, file: Path, *, cpu: bool = False) -> str:
    """A target named under ``key``, as the reports name it (``qnn`` is ``qnn:SM8650``); one that ``[check]
    delegates`` does not check could never be judged, so it is refused (``cpu`` passes where ``cpu`` is allowed)."""
    from litegate.compat.check import canonical_target  # imports LiteRT's flatbuffer schema: not at CLI start

    if cpu and target == "cpu":
        return target
    try:
        name = canonical_target(target)
    except ValueError as exc:
        raise ConfigError(f"{file}: '{key}': {exc}") from None
    if name not in delegates:
        raise ConfigError(f"{file}: '{key}' names {target!r}, which check.delegates does not check"
                          f"{' (nor is it cpu)' if cpu else ''} (checked: {', '.join(delegates)})")
    return name


def _check(ct: _Table) -> tuple[tuple[str, ...], int]:
    """``[check]``: the delegates of the static compatibility check, and how many evaluation samples each variant
    runs on the emulated HTP of each ``qnn:SOC`` target and on each ``arm64-emu`` backend of ``bench.backends``
    (``emulate_samples``; 0: none)."""
    from litegate.compat.check import (  # imports LiteRT's flatbuffer schema: not at CLI start
        canonical_target,
        target_error,
    )

    delegates = tuple(ct.get("delegates", list, list(DELEGATES)))
    for d in delegates:
        problem = target_error(d)
        if problem:
            raise ConfigError(f"{ct.file}: 'check.delegates': {problem}")
    delegates = tuple(dict.fromkeys(canonical_target(d) for d in delegates))  # as the reports name them
    samples = ct.get("emulate_samples", int, 200)
    if samples < 0:
        raise ConfigError(f"{ct.file}: 'check.emulate_samples' must be >= 0 (0: no emulated-HTP or arm64-emu accuracy), "
                          f"got {samples}")
    ct.done()
    return delegates, samples


def _quantize(qt: _Table) -> bool:
    """``[quantize]``: whether to run TensorFlow's quantization debugger."""
    debug = qt.get("debug", bool, False)
    qt.done()
    return debug


def _limits(lim: _Table) -> tuple[float, int | None]:
    """``[limits]``: the conversion timeout in seconds and the memory limit in MB (None: none)."""
    convert_timeout = lim.number("convert_timeout_s", float, 900.0, above=True)
    mem_mb = lim.number("memory_mb", int, 0)
    lim.done()
    return convert_timeout, mem_mb or None


def _history(ht: _Table, base: Path) -> HistoryConfig:
    """``[history]``: ``enabled``, ``url`` (a relative SQLite path is made absolute here) and ``last``."""
    enabled = ht.get("enabled", bool, False)
    url = ht.get("url", str, "")
    last = ht.number("last", int, 10, low=1, high=1000)
    ht.done()
    if url and "://" not in url:
        url = str(_path(base, url.removeprefix("sqlite:"), "history.url", ht.file, must_exist=False))
    return HistoryConfig(enabled=enabled, url=url, last=last)


def _variants(top: _Table, base: Path, file: Path) -> tuple[VariantConfig, ...]:
    raw = top.get("variants", list, ["fp32"])
    out: list[VariantConfig] = []
    for i, item in enumerate(raw):
        where = f"variants[{i}]"
        if isinstance(item, str):
            out.append(_variant(item, item, None, base, file, where))
        elif isinstance(item, dict):
            t = _Table(item, where, file)
            name = t.get("name", str)
            recipe = t.get("recipe", str, name)
            prune = t.get("prune", str, "")
            t.done()
            out.append(_variant(name, recipe, prune or None, base, file, where))
        else:
            raise ConfigError(f"{file}: '{where}' must be a recipe name or a table with name and recipe")
    if not out:
        raise ConfigError(f"{file}: 'variants' is empty")
    seen: set[str] = set()
    for v in out:
        if v.name in seen:
            raise ConfigError(f"{file}: variant name {v.name!r} appears twice")
        if not v.name.replace("-", "").replace("_", "").replace("+", "").isalnum():
            raise ConfigError(f"{file}: variant name {v.name!r} may contain only letters, digits, '-', '_', '+'")
        seen.add(v.name)
    return tuple(out)


def _variant(name: str, recipe: str, prune: str | None, base: Path, file: Path, where: str) -> VariantConfig:
    """``recipe`` may be ``PRUNE+QUANT`` (or a bare pruning recipe, then fp32)."""
    if prune is None and "+" in recipe:
        prune, _, recipe = recipe.partition("+")
    first = _recipe(prune or recipe, base, file, where)
    if prune is None and first.kind != "prune":
        return VariantConfig(name, first)
    if first.kind != "prune":
        raise ConfigError(f"{file}: '{where}': {first.name!r} is not a pruning recipe (in {name!r})")
    quant = _recipe(recipe if prune else "fp32", base, file, where)
    if quant.kind == "prune":
        raise ConfigError(f"{file}: '{where}': {quant.name!r} is a pruning recipe; after '+' comes a quantization recipe")
    return VariantConfig(name, quant, first)


def _recipe(name: str, base: Path, file: Path, where: str) -> Recipe:
    try:
        return recipes.load(name, base)
    except ConfigError as exc:
        raise ConfigError(f"{file}: '{where}': {exc.message}") from None

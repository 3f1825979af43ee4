"""What a release run measures with: the resolved source, evaluation and benchmark inputs, calibration and
recovery data, each read from the release config's ``[data]`` and tokenized once, in the parent process."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from litegate.artifacts import save_npz, sha256_tree, stable_hash
from litegate.config import ReleaseConfig
from litegate.converter.preflight import check_source, source_tokenizer
from litegate.errors import DataError, ModelLoadError
from litegate.tasks import (
    LabelledText,
    TextEncoder,
    generator_windows,
    lm_windows,
    load_tokenizer,
    read_labelled_tsv,
    read_texts,
    token_ids,
)
from litegate.types import SourceKind, Task

BENCH_INPUTS = 32  # distinct real sentences cycled through during latency measurement
AUTO_SELECTION_SAMPLES = 300  # held-out labelled rows the `auto` recipe chooses its float islands on


@dataclasses.dataclass
class Source:
    """The resolved input model: what it is, its hash, and how its text is tokenized."""

    kind: SourceKind
    path: Path
    sha256: str
    tokenizer: Path
    info: dict[str, Any]


def resolve_source(cfg: ReleaseConfig) -> Source:
    src = cfg.model.source
    info = check_source(src)
    tokenizer = source_tokenizer(src)
    if tokenizer is None:
        raise ModelLoadError(f"{src.path}: a {src.kind.value} source needs model.tokenizer (a tokenizer.json or vocab.txt)")
    digest = sha256_tree(src.path)
    if src.options.get("extra_weights"):  # a trained head is part of the model's identity
        digest = stable_hash([digest, sha256_tree(str(src.options["extra_weights"]))])
    return Source(src.kind, Path(src.path), digest, tokenizer, info)


@dataclasses.dataclass
class EvalData:
    """What a run measures with: evaluation inputs (and labels) and benchmark inputs."""

    task: Task
    n: int = 0
    inputs_npz: Path | None = None  # classification/embedding: encoded inputs; generation: token windows
    labels: np.ndarray | None = None
    windows: np.ndarray | None = None
    bench_npz: Path | None = None
    bench_tokens: list[int] = dataclasses.field(default_factory=list)
    bench_desc: str = ""
    labelled: LabelledText | None = None
    sha256: str | None = None


def _label_names(source: Source) -> dict[int, str] | None:
    """The model's classes (index -> name) where its files name them (``model.labels`` or the checkpoint's
    ``id2label``), else None (then any integer label is read as is)."""
    labels = source.info.get("labels") or {}
    try:
        return {int(k): str(v) for k, v in labels.items()} or None
    except (TypeError, ValueError, AttributeError):
        return None


def eval_data(cfg: ReleaseConfig, source: Source, encoder: TextEncoder | None, work: Path) -> EvalData:
    task = cfg.model.source.task
    data = EvalData(task=task)
    if task is Task.TEXT_GENERATION:
        if cfg.data.eval is None:
            raise DataError("a text-generation run needs data.eval (a text file; its last 10% is the held-out part)")
        text = "\n".join(read_texts(cfg.data.eval))
        ids = token_ids(load_tokenizer(source.tokenizer), text, source=cfg.data.eval)
        try:
            data.windows = lm_windows(ids, cfg.model.source.seq_len, cfg.data.max_eval_samples or 32)
        except ValueError as exc:
            raise DataError(f"{cfg.data.eval}: {exc}") from None
        data.inputs_npz = work / "windows.npz"
        save_npz(data.inputs_npz, {"tokens": data.windows})
        data.n = len(data.windows)
        data.bench_tokens = ids[-BENCH_INPUTS:]
        data.bench_desc = "one generated token per inference (decode/step signature) from held-out text, cycled"
        data.sha256 = sha256_tree(cfg.data.eval)
        return data
    assert encoder is not None
    texts: list[str] = []
    if cfg.data.eval is not None:
        if task is Task.TEXT_CLASSIFICATION:
            data.labelled = read_labelled_tsv(cfg.data.eval, limit=cfg.data.max_eval_samples,
                                              label_names=_label_names(source))
            data.labels = np.array(data.labelled.labels)
            texts = list(data.labelled.sentences)
        else:
            texts = read_texts(cfg.data.eval, limit=cfg.data.max_eval_samples)
        data.inputs_npz = work / "eval_inputs.npz"
        save_npz(data.inputs_npz, encoder.encode(texts, source=cfg.data.eval))
        data.n = len(texts)
        data.sha256 = sha256_tree(cfg.data.eval)
    bench_texts = texts or (read_texts(cfg.data.calibration, limit=BENCH_INPUTS) if cfg.data.calibration else [])
    if not bench_texts:
        raise DataError("no text to build benchmark inputs from: set data.eval or data.calibration")
    data.bench_npz = work / "bench_inputs.npz"
    save_npz(data.bench_npz, encoder.encode(bench_texts[:BENCH_INPUTS], source=cfg.data.eval or cfg.data.calibration))
    data.bench_desc = f"{min(len(bench_texts), BENCH_INPUTS)} real sentences, cycled"
    return data


GENERATOR_CALIBRATION_STEPS = 8  # decode/step calls recorded per window, after the prefill


def calibration(cfg: ReleaseConfig, source: Source, encoder: TextEncoder | None,
                 work: Path) -> tuple[Path | None, str | None]:
    """``calibration.npz`` from data.calibration when a variant needs it, and its cache key.

    Classifiers and encoders: the tokenized texts. Text generators: token windows ``tokens``
    [N, seq_len + steps]; the conversion child runs the float signatures over them (prefill, then
    decode/step) so every signature is calibrated on the inputs it gets in an app (see
    ``litegate.quantize.calibration.generator_samples``).
    """
    if not any(v.recipe.reads_calibration for v in cfg.variants):
        return None, None
    if cfg.data.calibration is None:
        names = [v.name for v in cfg.variants if v.recipe.needs_calibration]
        if not names:  # only variants that use calibration where given (GPTQ rounding): they round to nearest
            return None, None
        raise DataError(f"variants {', '.join(names)} need calibration text: set data.calibration")
    texts = read_texts(cfg.data.calibration, limit=cfg.data.calibration_samples)
    key = sha256_tree(cfg.data.calibration) + f":{len(texts)}"
    path = work / "calibration.npz"
    if encoder is not None:
        save_npz(path, encoder.encode(texts, source=cfg.data.calibration))
        return path, key

    # windows of seq_len + steps tokens: generator_windows cuts L + 1 tokens into inputs and next-token labels
    windows = generator_windows(source.tokenizer, texts, cfg.model.source.seq_len + GENERATOR_CALIBRATION_STEPS - 1,
                                cfg.data.calibration_samples, source=cfg.data.calibration)
    save_npz(path, {"tokens": np.concatenate([windows["tokens"], windows["labels"][:, -1:]], axis=1)})
    return path, key + f":gen{GENERATOR_CALIBRATION_STEPS}"


def prune_data(cfg: ReleaseConfig, source: Source, work: Path) -> dict[str, Any]:
    """Recovery data for pruned variants and quantization-aware distillation (a recipe's ``qat``): labelled
    ``data.train`` if given, else calibration text (distillation); ``data.train_samples`` rows."""
    if cfg.model.source.task is Task.TEXT_GENERATION:
        return {}
    encoder = TextEncoder(source.tokenizer, cfg.model.source.seq_len)
    npz = work / "prune_inputs.npz"
    if cfg.data.train is not None:
        train = read_labelled_tsv(cfg.data.train, limit=cfg.data.train_samples)
        save_npz(npz, encoder.encode(train.sentences, source=cfg.data.train))
        return {"npz": str(npz), "labels": list(train.labels), "sha256": sha256_tree(cfg.data.train) + f":{len(train.labels)}"}
    if cfg.data.calibration is None:
        raise DataError("pruned variants need recovery data: set data.train (labelled) or data.calibration (distillation)")
    texts = read_texts(cfg.data.calibration, limit=cfg.data.train_samples)
    save_npz(npz, encoder.encode(texts, source=cfg.data.calibration))
    return {"npz": str(npz), "labels": None, "sha256": sha256_tree(cfg.data.calibration) + f":{len(texts)}"}


def selection_data(cfg: ReleaseConfig, source: Source, data: EvalData, work: Path) -> dict[str, Any]:
    """What the ``auto`` recipe chooses its float islands on.

    A classifier with labelled ``data.train`` chooses on up to :data:`AUTO_SELECTION_SAMPLES` rows from the end of
    that file, after the rows pruning recovery and calibration read: data the variant is not then scored on.
    Otherwise (no training file, too few rows, or an embedding model, scored by cosine to float) it chooses on the
    evaluation set, and ``held_out`` says so in the report. The caller has checked that there is one.
    """
    fallback = {"npz": str(data.inputs_npz), "labels": None if data.labels is None else data.labels.tolist(),
                "name": f"{cfg.data.eval} (the evaluation set)", "sha256": data.sha256, "held_out": False}
    if cfg.data.train is None or data.task is not Task.TEXT_CLASSIFICATION:
        return fallback
    train = read_labelled_tsv(cfg.data.train, label_names=_label_names(source))
    used = max(cfg.data.train_samples, cfg.data.calibration_samples if cfg.data.calibration == cfg.data.train else 0)
    start = max(used, len(train.labels) - AUTO_SELECTION_SAMPLES)
    if len(train.labels) - start < AUTO_SELECTION_SAMPLES // 2:
        return fallback
    npz = work / "auto_selection.npz"
    encoder = TextEncoder(source.tokenizer, cfg.model.source.seq_len)
    save_npz(npz, encoder.encode(train.sentences[start:], source=cfg.data.train))
    return {"npz": str(npz), "labels": list(train.labels[start:]), "held_out": True,
            "name": f"{cfg.data.train} rows {start + 1}-{len(train.labels)} (held out from the evaluation set, "
                    "recovery and calibration)",
            "sha256": f"{sha256_tree(cfg.data.train)}:{start}:{len(train.labels)}"}

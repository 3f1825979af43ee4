"""What a Hugging Face checkpoint folder holds, read from its ``config.json`` (no TensorFlow, no weights read).

``model_type`` picks the builder (:data:`BUILDERS`: one row per architecture family, the only place a family is
registered) and ``architectures`` the default head and task:

* ``*ForSequenceClassification`` -> a classifier (``classification`` head, the checkpoint's ``id2label``);
* ``*Model`` / ``*ForMaskedLM`` / ``*ForPreTraining`` of an encoder -> sentence embeddings (mean pooling);
* ``*ForCausalLM`` / ``*LMHeadModel`` (or the bare ``*Model``) of a decoder -> a text generator;
* no ``architectures``: a classifier when ``id2label`` names real labels (not transformers' ``LABEL_0`` defaults),
  else embeddings.

Any other architecture (token classification, question answering, ...) or model type is one line naming what is
supported. An explicit source kind, head or task given by the user still wins (:func:`resolve`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from litegate.converter.hf import SUPPORTED_BERT_TYPES, read_config_json
from litegate.converter.hf_llama import SUPPORTED_LLAMA_TYPES
from litegate.converter.keras_hub import read_keras_hub
from litegate.errors import ModelLoadError
from litegate.types import Head, ModelSource, SourceKind, Task

# model_type -> the source kind whose builder reads it
BUILDERS: dict[str, SourceKind] = {
    **{t: SourceKind.HF_BERT for t in SUPPORTED_BERT_TYPES},
    "gpt2": SourceKind.HF_GPT2,
    **{t: SourceKind.HF_LLAMA for t in SUPPORTED_LLAMA_TYPES},
}
ENCODER_HEADS = {"ForSequenceClassification": Head.CLASSIFICATION, "Model": Head.MEAN, "ForMaskedLM": Head.MEAN,
                 "ForPreTraining": Head.MEAN}
DECODER_HEADS = ("ForCausalLM", "LMHeadModel", "Model")


@dataclasses.dataclass(frozen=True)
class Detected:
    """The builder, task and head a checkpoint's config.json asks for, and why."""

    kind: SourceKind
    task: Task
    head: Head | None
    model_type: str
    why: str


def _architecture(cfg: dict[str, Any], path: Path) -> str:
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ModelLoadError(f"{path}: architectures must be a list of class names, got {archs!r}"[:200])
    return archs[0] if archs else ""


def _suffix(arch: str, suffixes: Any) -> str | None:
    return next((s for s in sorted(suffixes, key=len, reverse=True) if arch.endswith(s)), None)


def detect_checkpoint(root: Path) -> Detected:
    """The :class:`Detected` of the checkpoint folder ``root``.

    Raises:
        ModelLoadError: no config.json, or a model type or architecture litegate has no builder for.
    """
    path = root / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{root}: not a Hugging Face checkpoint folder (no config.json); "
                             "give --from saved_model or keras for other models")
    cfg = read_config_json(path)
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type not in BUILDERS:
        raise ModelLoadError(f"{path}: model_type {model_type or '(none)'!r} is not supported "
                             f"(supported: {', '.join(BUILDERS)})")
    kind, arch = BUILDERS[model_type], _architecture(cfg, path)
    if kind is not SourceKind.HF_BERT:
        if arch and not _suffix(arch, DECODER_HEADS):
            raise ModelLoadError(f"{path}: architecture {arch!r} is not supported for {model_type} (supported: "
                                 f"{', '.join('*' + s for s in DECODER_HEADS)})")
        return Detected(kind, Task.TEXT_GENERATION, None, model_type,
                        f"config.json: model_type {model_type}{', ' + arch if arch else ''} (text generator)")
    if arch:
        suffix = _suffix(arch, ENCODER_HEADS)
        if suffix is None:
            raise ModelLoadError(f"{path}: architecture {arch!r} is not supported (supported: "
                                 f"{', '.join('*' + s for s in ENCODER_HEADS)})")
        head = ENCODER_HEADS[suffix]
        why = f"config.json: model_type {model_type}, {arch}"
    else:
        labels = cfg.get("id2label") or {}
        named = isinstance(labels, dict) and len(labels) >= 2 and not any(
            str(v).startswith("LABEL_") for v in labels.values())
        head = Head.CLASSIFICATION if named else Head.MEAN
        why = (f"config.json: model_type {model_type}, labels {', '.join(map(str, labels.values()))}" if named else
               f"config.json: model_type {model_type} without a classification head (embeddings, mean pooling)")
    task = Task.TEXT_CLASSIFICATION if head is Head.CLASSIFICATION else Task.SENTENCE_EMBEDDING
    return Detected(kind, task, head, model_type, why)


def resolve(source: ModelSource, *, head_given: bool, task_given: bool, seq_len_given: bool = True) -> ModelSource:
    """``source`` with what its files say filled in: the builder of an ``hf`` source, and the head and task of any
    Hugging Face checkpoint that the user did not set (``head_given`` / ``task_given``; a task given that differs
    from the checkpoint's keeps the caller's default head for that task); a keras-hub model's sequence length
    (its preprocessor's) when ``seq_len_given`` is false.

    Other sources come back unchanged.
    """
    if source.kind is SourceKind.KERAS and not seq_len_given:
        hub = read_keras_hub(Path(source.path)) if Path(source.path).is_file() else None
        if hub is not None and hub.sequence_length:
            return dataclasses.replace(source, seq_len=min(hub.sequence_length, hub.max_sequence_length or 4096))
    if source.kind not in (SourceKind.HF, *SourceKind.checkpoints()):
        return source
    try:
        found = detect_checkpoint(Path(source.path))
    except ModelLoadError:
        if source.kind is SourceKind.HF:  # nothing else says which builder reads it
            raise
        return source  # an explicit kind: its own builder says what is wrong, when the model is loaded
    kind = found.kind if source.kind is SourceKind.HF else source.kind
    if kind is not found.kind:  # an explicit kind that does not read this checkpoint: its own builder says why
        return source
    task = source.task if task_given else found.task
    options = dict(source.options)
    if found.head is not None and not head_given and task is found.task:
        options["head"] = found.head.value
    return dataclasses.replace(source, kind=kind, task=task, options=options)

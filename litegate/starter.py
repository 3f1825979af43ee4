"""``litegate init MODEL``: a commented starter ``release.toml`` for a model, its kind and task read from its files.

Only the files are read (``config.json``, ``saved_model.pb``, the file suffix), never the model run: a Hugging Face
checkpoint is read as :func:`litegate.converter.detect.detect_checkpoint` reads it (an encoder whose
``architectures`` name a sequence classifier, or whose ``id2label`` has labels, is a text classifier, another an
embedding model with mean pooling, a decoder a text generator); a SavedModel, Keras file or ``.tflite`` keeps its own
outputs. The written file is loaded back with :func:`litegate.config.load` before
it is kept, so what ``init`` writes always parses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litegate.artifacts import atomic_write_text, check_output_path
from litegate.config import load
from litegate.converter.detect import detect_checkpoint
from litegate.converter.hf import read_config_json
from litegate.errors import ModelLoadError, OutputError
from litegate.types import SourceKind, Task


def detect(model: Path) -> dict[str, Any]:
    """Source kind, task, head and what was read to decide, for the model at ``model``.

    Raises:
        ModelLoadError: nothing litegate can convert is there.
    """
    if model.is_dir() and (model / "config.json").is_file():
        found = detect_checkpoint(model)
        cfg = read_config_json(model / "config.json")
        positions = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 128
        seq = min(128, positions) if isinstance(positions, int) and positions > 0 else 128
        if found.task is Task.TEXT_GENERATION:
            seq = min(seq, 64)
        return {"kind": found.kind, "task": found.task, "head": found.head, "seq_len": seq, "why": found.why}
    if model.is_dir() and (model / "saved_model.pb").is_file():
        return {"kind": SourceKind.SAVED_MODEL, "task": Task.TEXT_CLASSIFICATION, "head": None,
                "why": "saved_model.pb (task assumed: set model.task if it is not a classifier)"}
    if model.is_file() and model.suffix in (".keras", ".h5"):
        return {"kind": SourceKind.KERAS, "task": Task.TEXT_CLASSIFICATION, "head": None,
                "why": f"a {model.suffix} file (task assumed: set model.task if it is not a classifier)"}
    if model.is_file() and model.suffix == ".tflite":
        return {"kind": SourceKind.TFLITE, "task": Task.TEXT_CLASSIFICATION, "head": None,
                "why": "a .tflite file (task assumed: set model.task if it is not a classifier)"}
    raise ModelLoadError(f"{model}: not a Hugging Face checkpoint folder (config.json), a SavedModel folder "
                         "(saved_model.pb), a .keras/.h5 file or a .tflite file")


def starter_text(model: Path, config_dir: Path) -> str:
    """The commented starter config for ``model``, with paths relative to ``config_dir``."""
    found = detect(model)
    kind, task, head = found["kind"], found["task"], found["head"]
    rel = Path(_relative(model.resolve(), config_dir.resolve()))
    generator = task is Task.TEXT_GENERATION
    if kind is SourceKind.TFLITE:
        variants = [("fp32", "fp32")]
    elif generator:
        variants = [("fp32", "fp32"), ("dynamic-int8", "dynamic-int8")]
    else:
        variants = [("fp32", "fp32"), ("fp16", "fp16"), ("dynamic-int8", "dynamic-int8")]
    lines = [
        f"# litegate release config for {model.name}, written by `litegate init` ({found['why']}).",
        "# Run it with: litegate run release.toml   (exit code: 0 = the gate passed, 1 = it failed)",
        f'name = "{_name(model)}"',
        "",
        "[model]",
        f'source = "{kind.value}"',
        f'path = "{rel.as_posix()}"',
        f'task = "{task.value}"',
    ]
    if head is not None:
        lines.append(f'head = "{head.value}"')
    lines += [
        f"seq_len = {found.get('seq_len', 128)}"
        + "                 # the static sequence length the phone runs (GPU/NPU delegates need one)",
        "",
        "[data]",
        "# eval = \"eval.tsv\"           # " + ("held-out text (perplexity)" if generator else
                                             "sentence<TAB>label (index or label name)" if task is Task.TEXT_CLASSIFICATION
                                             else "one sentence per line (fidelity to fp32)"),
        "# calibration = \"calibration.txt\"   # unlabelled text: needed by the int8 / int16x8 recipes below",
        "",
        "[output]",
        'dir = "reports/release"',
        "",
    ]
    for name, recipe in variants:
        lines += ["[[variants]]", f'name = "{name}"', f'recipe = "{recipe}"', ""]
    lines += [
        "# Full integer (what an NPU wants) needs [data] calibration:",
        "# [[variants]]",
        '# name = "int8"',
        '# recipe = "int8"',
        "",
        "[bench]",
        'backends = ["xnnpack"]        # also: gpu, arm64-emu, adb[:SERIAL], aihub:DEVICE (litegate doctor lists them)',
        "threads = [1, 4]",
        "",
        "[check]",
        'delegates = ["gpu", "xnnpack"]   # add "qnn:SM8650" (pip install \'litegate[qualcomm]\'), "mlprogram"',
        "",
        "[budgets]",
        "max_size_mb = 100.0",
        "max_latency_p50_ms = 50.0",
    ]
    if task is Task.TEXT_CLASSIFICATION:
        lines.append("max_accuracy_drop = 1.0       # percentage points below fp32 (needs [data] eval)")
    lines += [
        "",
        "[gate]",
        'reference = "fp32"',
        f'ship = ["{variants[-1][0]}"]' + "        # the variant(s) that ship: the gate judges these",
    ]
    return "\n".join(lines) + "\n"


def write_starter(model: Path, out: Path, *, force: bool = False) -> Path:
    """Write the starter config for ``model`` to ``out`` (refusing to overwrite unless ``force``); it is loaded
    back before it is kept.

    Raises:
        ModelLoadError: no model litegate can convert at ``model``.
        OutputError: ``out`` exists (without ``force``) or cannot be written.
        ConfigError: the written config does not load (a litegate bug: the file is not kept).
    """
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists (use --force to replace it)")
    check_output_path(out)  # a directory or a device (/dev/null) is refused, even with force
    text = starter_text(model, out.parent)
    scratch = out.with_name(f".{out.name}.check.toml")
    try:
        atomic_write_text(scratch, text)
        load(scratch)  # raises ConfigError: then nothing is kept
        atomic_write_text(out, text)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write it: {exc.strerror or exc}") from None
    finally:
        scratch.unlink(missing_ok=True)
    return out


def _name(model: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in model.stem).strip("-") or "release"


def _relative(target: Path, base: Path) -> str:
    return os.path.relpath(target, base)

"""Model sources: every kind of TensorFlow model a mobile team holds, as one static-shape serving function.

Each loader returns a :class:`Loaded`: a ``tf.function`` whose input signature is fixed
(batch 1, the source's ``seq_len`` for unknown sequence dims; dynamic only on request), the object that owns
its variables (for the converter), and notes for the report. TensorFlow is imported here, so this
module only runs inside the isolated conversion child.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litegate.converter.detect import resolve
from litegate.converter.hf import read_checkpoint
from litegate.converter.preflight import decoder_positions
from litegate.converter.trust import check_saved_model
from litegate.errors import ModelLoadError
from litegate.types import ModelSource, SourceKind, Task

GPU_FRIENDLY_NOTE = ("gpu_friendly: 1-D embedding gathers and slices without shrink masks, so LiteRT's GPU delegate "
                     "can take every op (same outputs as the plain graph)")


@dataclasses.dataclass
class Loaded:
    """A source model ready for the TFLite converter.

    ``serve`` is the single serving function of classifiers and encoders; text generators set
    ``signatures`` instead (``step``/``prefill`` or ``prefill``/``decode``), converted through a
    SavedModel so each keeps its name in the .tflite.
    """

    serve: Any  # tf.function with a fixed input signature, returning a dict of outputs (or None)
    owner: Any  # the trackable object holding the variables
    notes: list[str] = dataclasses.field(default_factory=list)
    prunable: bool = False  # a tf_keras model tfmot can wrap
    keras_model: Any = None
    dynamic: bool = False
    signatures: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> concrete function
    # the model whose float statistics set this one's int8 spelling (residual smoothing's scales): a copy with its
    # weights rounded by GPTQ keeps its source's, so the folded weights stay on the grid they were rounded to
    spelling_source: Any = None
    _tmp: Any = None  # keeps a temporary export alive


def load(source: ModelSource) -> Loaded:
    """Load ``source`` and give it a static input signature.

    Raises:
        ModelLoadError: missing path, unreadable model, refused Lambda layer, refused unsafe op (file system,
            network, Python: see :mod:`litegate.converter.trust`), unknown signature.
    """
    path, seq_len = Path(source.path), source.seq_len
    allow_ops = bool(source.options.get("allow_unsafe_ops", False))
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    dynamic = bool(source.options.get("dynamic_shapes", False))
    if source.kind is SourceKind.HF:  # callers that did not resolve it (the CLI and the config loader do)
        source = resolve(source, head_given=True, task_given=True)
    if source.kind is SourceKind.HF_BERT:
        return _hf_bert(source, seq_len, dynamic)
    if source.kind in SourceKind.decoders():
        return _hf_decoder(source, seq_len)
    if source.kind is SourceKind.KERAS and source.task is Task.TEXT_GENERATION:
        return _keras_generator(path, seq_len)
    if source.kind is SourceKind.SAVED_MODEL:
        return _saved_model(path, str(source.options.get("signature", "serving_default")), seq_len, dynamic, allow_ops)
    if source.kind is SourceKind.KERAS:
        return _keras(path, seq_len, dynamic, bool(source.options.get("allow_lambda", False)), allow_ops)
    raise ModelLoadError(f"source kind {source.kind.value!r} is not a TensorFlow model")


def _fixed(spec: Any, seq_len: int, dynamic: bool) -> Any:
    import tensorflow as tf  # TensorFlow: build child only

    dims = list(spec.shape.as_list()) if spec.shape.rank is not None else [None, None]
    if dynamic:
        dims = [1 if (i == 0 and d is None) else d for i, d in enumerate(dims)]
    else:
        dims = [(1 if i == 0 else seq_len) if d is None else d for i, d in enumerate(dims)]
    return tf.TensorSpec(dims, spec.dtype, name=spec.name)


def serving_function(fn: Any, specs: dict[str, Any]) -> Any:
    """A tf.function over keyword inputs whose concrete signature carries the input names."""
    import tensorflow as tf  # TensorFlow: build child only

    @tf.autograph.experimental.do_not_convert
    def call(**kwargs: Any) -> Any:
        out = fn(**kwargs)
        if not isinstance(out, dict):
            out = {"output_0": out} if not isinstance(out, list | tuple) else {f"output_{i}": o for i, o in enumerate(out)}
        return out

    f = tf.function(call)
    cf = f.get_concrete_function(**{k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in specs.items()})
    return _Concrete(cf, lambda: serving_function(fn, specs))


class _Concrete:
    """Adapter: a concrete function that can also be called with keyword numpy inputs."""

    def __init__(self, cf: Any, retrace: Callable[[], _Concrete] | None = None) -> None:
        self.cf = cf
        self._retrace = retrace

    def retraced(self) -> _Concrete:
        """The same Python function traced again (e.g. under :func:`~litegate.converter.bert.residual_smoothing`)."""
        if self._retrace is None:
            raise ModelLoadError("this serving function cannot be traced again")
        return self._retrace()

    def get_concrete_function(self) -> Any:
        return self.cf

    def __call__(self, **kwargs: Any) -> Any:
        return self.cf(**kwargs)


def _hf_bert(source: ModelSource, seq_len: int, dynamic: bool) -> Loaded:
    import tensorflow as tf  # TensorFlow: build child only

    from litegate.converter.encoders import (  # imports TensorFlow: build child only
        build_encoder,
        load_weights,
    )

    ckpt = read_checkpoint(source.path, source.options.get("extra_weights"))
    head = str(source.options.get("head", "classification"))
    gpu_friendly = bool(source.options.get("gpu_friendly", False))
    model = build_encoder(ckpt.config, seq_len=None if dynamic else seq_len, head=head, batch_size=1,
                          gpu_friendly=gpu_friendly)
    load_weights(model, ckpt, head)
    shape = [1, None] if dynamic else [1, seq_len]
    specs = {"input_ids": tf.TensorSpec(shape, tf.int32), "attention_mask": tf.TensorSpec(shape, tf.int32)}
    serve = serving_function(lambda **kw: model(kw), specs)
    notes = [GPU_FRIENDLY_NOTE] if gpu_friendly else []
    return Loaded(serve=serve, owner=model, prunable=True, keras_model=model, dynamic=dynamic, notes=notes)


def _hf_decoder(source: ModelSource, seq_len: int) -> Loaded:
    """A GPT-2 or Llama-family checkpoint with ``prefill`` and ``decode`` signatures and a fixed-size KV cache."""
    if source.kind is SourceKind.HF_GPT2:
        from litegate.converter.gpt2 import load_gpt2 as load_model  # imports TensorFlow: build child only
        from litegate.converter.gpt2 import signatures
    else:
        from litegate.converter.llama import load_llama as load_model  # type: ignore[assignment]
        from litegate.converter.llama import signatures  # type: ignore[assignment,no-redef]

    model = load_model(source.path)
    max_len = int(source.options.get("max_len", decoder_positions(source)))
    gpu_friendly = bool(source.options.get("gpu_friendly", False))
    sigs = signatures(model, seq_len, max_len, gpu_friendly=gpu_friendly)
    notes = [f"{source.kind.value} decoder with prefill (length {seq_len}) and decode signatures, KV cache of "
             f"{max_len} positions"]
    return Loaded(serve=None, owner=model, prunable=False, keras_model=model, signatures=sigs,
                  notes=notes + ([GPU_FRIENDLY_NOTE] if gpu_friendly else []))


def _keras_generator(path: Path, seq_len: int) -> Loaded:
    from litegate.converter.textgen import (  # imports TensorFlow: build child only
        load_keras_generator,
        rnn_signatures,
    )

    info = keras_file_info(path)
    if "Lambda" in _class_names(info["config"]):
        raise ModelLoadError(f"{path}: the model contains a Lambda layer; refused under safe mode")
    model = load_keras_generator(path)
    return Loaded(serve=None, owner=model, prunable=True, keras_model=model, signatures=rnn_signatures(model, seq_len),
                  notes=[f"recurrent generator with step and prefill (length {seq_len}) signatures, explicit state"])


def _saved_model(path: Path, signature: str, seq_len: int, dynamic: bool, allow_unsafe_ops: bool) -> Loaded:
    import tensorflow as tf  # TensorFlow: build child only

    if not path.is_dir() or not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ModelLoadError(f"{path}: not a TensorFlow SavedModel folder (no saved_model.pb)")
    warnings = check_saved_model(path, allow_unsafe_ops)  # before anything of the model runs
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many types here
        raise ModelLoadError(f"{path}: cannot load SavedModel: {_tf_error(exc)}") from None
    sigs = getattr(loaded, "signatures", {})
    if signature not in sigs:
        raise ModelLoadError(f"{path}: no signature {signature!r} (has: {', '.join(sigs) or 'none'})")
    sig = sigs[signature]
    specs = {k: _fixed(v, seq_len, dynamic) for k, v in sig.structured_input_signature[1].items()}
    return Loaded(serve=serving_function(lambda **kw: sig(**kw), specs), owner=loaded, dynamic=dynamic,
                  notes=[f"SavedModel signature {signature!r}", *warnings])


def _tf_error(exc: Exception) -> str:
    """One line for a TensorFlow error: a graph execution error names its class and the op's own message
    (``PermissionDeniedError: ...; in node WriteFile``), not just its first line ("Graph execution error:")."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    node = next((ln.split("Detected at node", 1)[1].split()[0] for ln in lines if "Detected at node" in ln), "")
    detail = next((ln.strip() for ln in reversed(lines[1:]) if not ln.startswith((" ", "\t")) and "Detected at node"
                   not in ln and not ln.startswith("File ")), "") if node else ""
    text = f"{type(exc).__name__}: {detail[:300]}" if detail else lines[0]
    return f"{text} (node {node})" if node else text


def keras_file_info(path: Path) -> dict[str, Any]:
    """Read a Keras file's architecture config without deserialising any layer.

    Returns ``{"format": "keras-zip" | "h5", "keras_version": str, "config": dict}``.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"{path}: a .keras archive without config.json")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
        return {"format": "keras-zip", "keras_version": str(meta.get("keras_version", "")), "config": config}
    try:
        import h5py  # only for .h5 files
    except ImportError:  # pragma: no cover - h5py ships with TensorFlow
        raise ModelLoadError(f"{path}: reading .h5 files needs h5py") from None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", b"")
    except OSError as exc:
        raise ModelLoadError(f"{path}: not a Keras .keras or .h5 file: {exc}") from None
    if raw is None:
        raise ModelLoadError(f"{path}: .h5 file has no model_config (weights-only files cannot be converted)")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    v = version.decode() if isinstance(version, bytes) else str(version)
    return {"format": "h5", "keras_version": v, "config": json.loads(text)}


def _class_names(config: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(config, dict):
        if "class_name" in config:
            found.add(str(config["class_name"]))
        for v in config.values():
            found |= _class_names(v)
    elif isinstance(config, list):
        for v in config:
            found |= _class_names(v)
    return found


def _keras(path: Path, seq_len: int, dynamic: bool, allow_lambda: bool, allow_unsafe_ops: bool) -> Loaded:
    import tensorflow as tf  # TensorFlow: build child only

    info = keras_file_info(path)
    if "Lambda" in _class_names(info["config"]) and not allow_lambda:
        raise ModelLoadError(f"{path}: the model contains a Lambda layer (arbitrary Python code); refused under "
                             "safe mode. Re-export it without Lambda, or pass --unsafe-allow-lambda if you trust the file")
    keras3 = info["format"] == "keras-zip" and info["keras_version"].startswith("3")
    if keras3:
        import keras  # Keras 3: only for Keras 3 .keras files

        try:
            model = keras.saving.load_model(str(path), safe_mode=not allow_lambda, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises anything on a bad file
            raise ModelLoadError(f"{path}: cannot load Keras 3 model: {str(exc).splitlines()[0]}") from None
        tmp = tempfile.TemporaryDirectory(prefix="litegate-keras3-")
        export = Path(tmp.name) / "saved_model"
        try:
            model.export(str(export), format="tf_saved_model", verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{path}: cannot export Keras 3 model: {str(exc).splitlines()[0]}") from None
        loaded = _saved_model(export, "serving_default", seq_len, dynamic, allow_unsafe_ops)
        loaded.notes.append("Keras 3 model, converted through a SavedModel export; pruning is not available for "
                            "Keras 3 models (tensorflow-model-optimization needs tf_keras)")
        loaded._tmp = tmp
        return loaded
    import tf_keras  # TensorFlow: build child only

    try:
        model = tf_keras.models.load_model(str(path), compile=False, safe_mode=not allow_lambda)
    except TypeError:  # .h5 loading takes no safe_mode; the Lambda check above already ran
        model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load tf_keras model: {str(exc).splitlines()[0]}") from None
    specs = {}
    for t in model.inputs:
        name = t.name.split(":")[0]
        specs[name] = _fixed(tf.TensorSpec(t.shape, t.dtype, name=name), seq_len, dynamic)
    names = [t.name.split(":")[0] for t in model.inputs]

    def call(**kw: Any) -> Any:
        args = [kw[n] for n in names]
        return model(args if len(args) > 1 else args[0])

    return Loaded(serve=serving_function(call, specs), owner=model, prunable=True, keras_model=model, dynamic=dynamic,
                  notes=[f"tf_keras model ({info['format']})"])

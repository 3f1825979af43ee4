"""litegate: take a TensorFlow BERT or text-generation model to a phone, with honest numbers.

Public API::

    from litegate import load_config, run_release
    report = run_release(load_config("release.toml"))

The names are loaded on first use, so importing one litegate module (a child process importing
its job, say) does not import the whole pipeline.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# The one place litegate selects Keras: tensorflow-model-optimization and litegate's graphs need tf_keras
# (Keras 2). Every litegate module runs this first, before TensorFlow is imported or tf.keras is touched.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from litegate.version import __version__  # noqa: E402  (after the Keras switch, by design)

_API = {"LitegateError": ("litegate.errors", "LitegateError"), "ReleaseConfig": ("litegate.config", "ReleaseConfig"),
        "load_config": ("litegate.config", "load"), "run_release": ("litegate.pipeline", "run_release")}

__all__ = ["LitegateError", "ReleaseConfig", "__version__", "load_config", "run_release"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'litegate' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)

"""litegate: take a TensorFlow BERT or text-generation model to a phone, with honest numbers.

Public API::

    from litegate import load_config, run_release
    report = run_release(load_config("release.toml"))
"""

from __future__ import annotations

import os

# tensorflow-model-optimization needs tf_keras: select it before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"

from litegate.config import ReleaseConfig  # noqa: E402
from litegate.config import load as load_config  # noqa: E402
from litegate.errors import LitegateError  # noqa: E402
from litegate.pipeline import run_release  # noqa: E402

__all__ = ["LitegateError", "ReleaseConfig", "__version__", "load_config", "run_release"]

"""litegate's error hierarchy and the exit code each error maps to.

Every failure a user can cause or meet is a :class:`LitegateError` subclass with a fixed
exit code, so a CI script can tell "the gate said no" (1) from "your config is wrong" (2)
from "the model could not be converted" (5).
"""

from __future__ import annotations


class LitegateError(Exception):
    """Base class of every error litegate reports to a user."""

    exit_code = 10

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LitegateError):
    """The release config or a command-line value is invalid."""

    exit_code = 2


class ModelLoadError(LitegateError):
    """The input model could not be found or read."""

    exit_code = 3


class DataError(LitegateError):
    """Evaluation or calibration data is missing, empty or malformed."""

    exit_code = 4


class ConversionError(LitegateError):
    """TensorFlow -> TFLite conversion failed."""

    exit_code = 5


class QuantizationError(LitegateError):
    """A quantization or pruning recipe could not be applied."""

    exit_code = 6


class DelegateError(LitegateError):
    """A delegate or backend could not be created or used."""

    exit_code = 7


class BenchmarkError(LitegateError):
    """A measurement could not be taken."""

    exit_code = 8


class IsolationError(LitegateError):
    """An isolated child process crashed, hung, ran out of memory or returned no result.

    ``kind`` is one of ``crashed``, ``timeout``, ``oom``, ``failed``, ``no_result``;
    ``stderr`` keeps the end of the child's output for the report.
    """

    exit_code = 9

    def __init__(self, message: str, *, kind: str = "failed", stderr: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.stderr = stderr


class OutputBusyError(LitegateError):
    """Another litegate process holds the output directory."""

    exit_code = 11


class OutputError(LitegateError):
    """An output could not be written (disk full, read-only file system, permissions)."""

    exit_code = 12


class HistoryError(LitegateError):
    """The run history database could not be opened, read or written, or holds no run a command asked for."""

    exit_code = 13

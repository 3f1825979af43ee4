"""File size of a model: raw bytes and gzip bytes (what an app download actually costs)."""

from __future__ import annotations

import gzip
from pathlib import Path

from litegate.types import SizeInfo


def measure_size(path: str | Path) -> SizeInfo:
    data = Path(path).read_bytes()
    return SizeInfo(bytes=len(data), gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)))

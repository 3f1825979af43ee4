"""Developer tooling run from the repository root (``python -m tools.perf``); not part of the litegate wheel."""

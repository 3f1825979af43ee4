"""Coverage-guided fuzzing of litegate's .tflite verifier with atheris (``make fuzz``; not in the package).

Every input goes through :func:`litegate.tflite.verify.verify_bytes`; an accepted one also through the static
compatibility check and the graph summary (what ``litegate check`` and the pipeline run on a verified model). A
:class:`~litegate.errors.ModelLoadError` is a refusal; any other exception is a crash: atheris saves the input as
``crash-*`` under ``--artifacts`` and stops. A custom mutator keeps most mutations inside the flatbuffer (integer
fields, vector lengths, vtable slots) as well as libFuzzer's byte-level ones.

    python -m tools.fuzz_verify --seconds 1800 --corpus tests/fuzz/corpus --artifacts reports/fuzz

The seed corpus (``tests/fuzz/corpus``) holds small real models: ``python -m tools.fuzz_verify --write-seeds``
rewrites it from the models the tests build. libFuzzer ends with its statistics (``stat::average_exec_per_sec``);
``make fuzz`` then prints one line with the crash inputs saved (libFuzzer leaves the process without running
Python's exit handlers, so the count is taken after it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_seeds(corpus: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import tflite_craft as craft

    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in (("add", craft.add_model()), ("mlp", craft.mlp_model()), ("step", craft.step_model())):
        (corpus / f"{name}.tflite").write_bytes(data)
    print(f"wrote {len(list(corpus.glob('*.tflite')))} seed models to {corpus}")


_RULES: dict[str, object] = {}


def _one_input(data: bytes) -> None:
    from litegate.compat.check import evaluate
    from litegate.compat.ruleset import DELEGATES, load_rules
    from litegate.errors import ModelLoadError
    from litegate.tflite.summary import graph_summary
    from litegate.tflite.verify import verify_bytes

    try:
        model = verify_bytes(data, source="fuzz.tflite")
    except ModelLoadError as exc:
        if "\n" in exc.message:
            raise AssertionError(f"a multi-line refusal: {exc.message!r}") from None
        return
    for d in DELEGATES:
        if d not in _RULES:
            _RULES[d] = load_rules(d)
        evaluate(model, _RULES[d], model_name="fuzz")
    graph_summary(model)


def _mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    rnd = seed % 4
    b = bytearray(data)
    if rnd == 0 or len(b) < 16:
        return atheris.Mutate(data, max_size)
    pos = (seed >> 3) % (len(b) - 4) & ~3  # aligned: flatbuffer fields, lengths and offsets are 4-byte aligned
    value = (0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(b), struct.unpack_from("<I", b, pos)[0] + 1,
             (seed >> 12) & 0xFFFF)[(seed >> 8) % 8]
    if rnd == 1:
        struct.pack_into("<I", b, pos, value & 0xFFFFFFFF)
    elif rnd == 2:
        struct.pack_into("<H", b, pos, value & 0xFFFF)
    else:
        return atheris.Mutate(bytes(b), max_size)
    return bytes(b[:max_size])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "1800")))
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "fuzz" / "corpus")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "reports" / "fuzz")
    ap.add_argument("--max-len", type=int, default=1 << 16)
    ap.add_argument("--write-seeds", action="store_true", help="rewrite the seed corpus and exit")
    args = ap.parse_args(argv)
    if args.write_seeds:
        _write_seeds(args.corpus)
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    args.artifacts.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="litegate-fuzz-"))  # seeds + what the fuzzer finds; the repo stays as is
    for f in args.corpus.glob("*"):
        shutil.copy(f, work / f.name)
    with atheris.instrument_imports():
        import litegate.compat.check  # noqa: F401
        import litegate.tflite.summary  # noqa: F401
        import litegate.tflite.verify  # noqa: F401
    def target(data: bytes) -> None:
        _one_input(data)

    atheris.Setup([sys.argv[0], str(work), f"-max_total_time={args.seconds}", f"-max_len={args.max_len}",
                   f"-artifact_prefix={args.artifacts}/", "-timeout=20", "-rss_limit_mb=4096",
                   "-print_final_stats=1"], target, custom_mutator=_mutator)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Core ML through coremltools: the TF serving function litegate builds, converted to ML Programs (``.mlpackage``).

:func:`convert_job` is the child-process entry (through :func:`litegate.isolation.run_isolated`): it loads the
model source once, then writes one ML Program per requested variant: ``fp32`` (float32 compute precision),
``fp16`` (float16, coremltools' default) or ``fp16-int8w`` (the fp16 program with int8 linear-quantized
weights). A variant coremltools cannot convert is reported with the first TF op it has no translation for;
the others still convert.

Payload: ``source`` (ModelSource dict), ``deployment`` (a ``coremltools.target`` name, e.g. ``iOS16``),
``variants`` ([{name, precision, out}]: ``out`` is the ``.mlpackage`` path to write).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from litegate.converter.sources import load
from litegate.errors import ConversionError
from litegate.types import ModelSource

PRECISIONS = ("fp32", "fp16", "fp16-int8w")

_MISSING_OP = re.compile(r"Conversion for TF op '([^']+)' not implemented")
_NODE_NAME = re.compile(r'name: "([^"]+)"')


def failing_op(message: str) -> tuple[str, str]:
    """(TF op type, node name) that coremltools' TF frontend has no translation for, from its error; ("", "") if none."""
    m = _MISSING_OP.search(message)
    if not m:
        return "", ""
    node = _NODE_NAME.search(message, m.end())
    return m.group(1), node.group(1) if node else ""


def package_bytes(path: str | Path) -> int:
    """The size of an ``.mlpackage`` folder: the sum of its files."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def mil_ops(spec: Any) -> dict[str, int]:
    """MIL op type -> count in the ``main`` function of an ML Program spec (nested blocks included)."""
    fn = spec.mlProgram.functions["main"]
    counts: Counter[str] = Counter()

    def walk(ops: Iterable[Any]) -> None:
        for op in ops:
            counts[op.type] += 1
            for block in op.blocks:
                walk(block.operations)

    walk(fn.block_specializations[fn.opset].operations)
    return dict(counts.most_common())


def register_erfc() -> None:
    """Teach coremltools' TF frontend ``Erfc`` (exact GELU, ``tf.nn.gelu(approximate=False)``): 1 - erf(x).

    coremltools 9.0 translates ``Erf`` but not ``Erfc``; registering twice raises, so this runs once per process.
    """
    from coremltools.converters.mil.frontend.tensorflow.tf_op_registry import (  # coremltools: Core ML child only
        _TF_OPS_REGISTRY,
        register_tf_op,
    )
    from coremltools.converters.mil.mil import Builder as mb  # coremltools: Core ML child only

    if "Erfc" in _TF_OPS_REGISTRY:
        return

    def Erfc(context: Any, node: Any) -> None:  # noqa: N802  (the registry keys on the TF op's name)
        x = context[node.inputs[0]]
        context.add(node.name, mb.sub(x=1.0, y=mb.erf(x=x), name=node.name))

    register_tf_op(Erfc)


def _convert(concrete: Any, precision: str, deployment: str) -> Any:
    """One ML Program of ``concrete`` at ``precision`` (fp32 / fp16) for the ``deployment`` target."""
    import coremltools as ct  # imports TensorFlow: Core ML child only

    return ct.convert([concrete], source="tensorflow", convert_to="mlprogram",
                      minimum_deployment_target=getattr(ct.target, deployment),
                      compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)


def _int8_weights(model: Any) -> Any:
    """``model`` with int8 symmetric linear-quantized weights (coremltools.optimize.coreml)."""
    from coremltools.optimize import coreml as opt  # coremltools: Core ML child only

    config = opt.OptimizationConfig(global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
    return opt.linear_quantize_weights(model, config=config)


def convert_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: load the source once, write one ``.mlpackage`` per variant.

    Returns:
        ``variants`` ({name: {ok, mil_ops, bytes, seconds} or {ok: False, error, op, node}}) and the
        ``coremltools`` version.
    """
    import coremltools as ct  # imports TensorFlow: Core ML child only

    deployment = str(payload["deployment"])
    if not hasattr(ct.target, deployment):
        raise ConversionError(f"coremltools {ct.__version__} has no deployment target {deployment!r}")
    register_erfc()
    loaded = load(ModelSource.from_dict(payload["source"]))
    if loaded.serve is None:
        raise ConversionError("a multi-signature text generator is not converted to Core ML")
    concrete = loaded.serve.get_concrete_function()
    programs: dict[str, tuple[Any, float]] = {}  # fp32 / fp16 program and its conversion seconds, made once
    results: dict[str, Any] = {}
    for v in payload["variants"]:
        precision = str(v["precision"])
        if precision not in PRECISIONS:
            raise ConversionError(f"unknown Core ML precision {precision!r} (known: {', '.join(PRECISIONS)})")
        base = "fp32" if precision == "fp32" else "fp16"
        try:
            if base not in programs:
                started = time.monotonic()
                programs[base] = (_convert(concrete, base, deployment), time.monotonic() - started)
            model, seconds = programs[base]
            if precision == "fp16-int8w":
                started = time.monotonic()
                model = _int8_weights(model)
                seconds += time.monotonic() - started
            model.save(str(v["out"]))
        except Exception as exc:  # noqa: BLE001 - coremltools raises anything; the variant fails, not the child
            text = str(exc)
            op, node = failing_op(text)
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
            results[v["name"]] = {"ok": False, "error": f"{type(exc).__name__}: {first}", "op": op, "node": node}
            continue
        results[v["name"]] = {"ok": True, "mil_ops": mil_ops(model.get_spec()), "bytes": package_bytes(v["out"]),
                              "seconds": round(seconds, 3)}
    return {"variants": results, "coremltools": ct.__version__}

"""Weight rounding chosen on calibration data: GPTQ (Frantar et al., 2022) for every FULLY_CONNECTED's int8 weights.

TFLite's converter rounds a FULLY_CONNECTED's float weights to the nearest point of a symmetric int8 grid, one scale
per output channel (``max |w| / 127``). Rounding to nearest minimises each weight's own error, not the op's output
error. GPTQ rounds one input column at a time and moves the columns not yet rounded to absorb the error, which
minimises ``||X (W - Q)||²`` over the calibration inputs ``X`` the op really reads (``H = XᵀX``). Weights that already
lie on the grid pass through the converter unchanged, so the converted model keeps the rounding chosen here.

The grid is the converter's, not Keras's. Before it rounds, the converter folds constant multiplies into the weights:
a layer norm's gamma, attention's ``1/sqrt(d)``, residual smoothing's ``1/s``. So the work is done on the float .tflite
of the recipe's own spelling. Its FULLY_CONNECTED weights and the inputs those ops read (LiteRT, every tensor kept)
give ``W`` and ``H``. Each rounded weight goes back to its tf_keras ``Dense`` kernel through the elementwise ratio of
the two, a row and column rescaling, which is checked to be one (:func:`match_kernels`).

Exact zeros (a pruned kernel's) stay zero, and each output channel keeps its largest weight at ``±127`` steps, so the
converter derives the same scale.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from litegate.tasks import feed_for, role_of

QMAX = 127  # symmetric narrow-range int8, as TFLite holds FULLY_CONNECTED weights
DAMP = 0.01  # H's diagonal is raised by this fraction of its mean (GPTQ's dampening)
GRAM_BATCH = 2048  # rows gathered per FULLY_CONNECTED input before they are added to its Gram matrix
BLOCK = 128  # GPTQ's lazy batch: columns rounded together before the rest of the matrix is updated
RANK1_TOLERANCE = 1e-4  # largest deviation of log|ratio| from a row-times-column rescaling still called one


@dataclasses.dataclass
class FcOp:
    """One FULLY_CONNECTED of a float .tflite: its weight (``[out, in]``) and the tensor it reads."""

    input_tensor: int
    name: str
    weight: np.ndarray


def fully_connected_ops(interpreter: Any) -> list[FcOp]:
    """Every FULLY_CONNECTED whose weight is a 2-D float constant."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():
        if op["op_name"] != "FULLY_CONNECTED" or len(op["inputs"]) < 2:
            continue
        w_index = int(op["inputs"][1])
        d = details.get(w_index)
        if d is None or d["dtype"] != np.float32 or len(d["shape"]) != 2:
            continue
        try:
            weight = np.array(interpreter.get_tensor(w_index), np.float64)
        except ValueError:  # not a constant
            continue
        out.append(FcOp(input_tensor=int(op["inputs"][0]), name=str(d["name"]), weight=weight))
    return out


def input_grams(float_model: bytes, samples: Mapping[str, np.ndarray]) -> tuple[list[FcOp], list[np.ndarray], int]:
    """The FULLY_CONNECTED ops of ``float_model`` and, per op, ``XᵀX`` of the rows it reads over ``samples``.

    Where the model has an attention-mask input, only real tokens' rows count (a padded position's activations reach
    no output). Ops that read the same tensor (a block's query, key and value) share one matrix, kept in float32 (sums
    of float32 products of up to :data:`GRAM_BATCH` rows): BERT-base's come to about 0.5 GB. Returns the ops, their
    Gram matrices and the number of token rows summed (of the op that read the most).
    """
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: build child only

    interp = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True, num_threads=2)
    interp.allocate_tensors()
    ops = fully_connected_ops(interp)
    inputs = interp.get_input_details()
    feed = feed_for([d["name"] for d in inputs], dict(samples))
    mask_name = next((d["name"] for d in inputs if role_of(d["name"]) == "attention_mask"), None)
    width = {op.input_tensor: op.weight.shape[1] for op in ops}  # the columns an op reads its input as
    read = sorted(width)
    grams = {t: np.zeros((width[t], width[t]), np.float32) for t in read}
    pending: dict[int, list[np.ndarray]] = {t: [] for t in read}  # rows not yet in their Gram matrix
    counted = dict.fromkeys(read, 0)

    def flush(t: int) -> None:
        x = np.concatenate(pending[t])
        grams[t] += x.T @ x
        counted[t] += len(x)
        pending[t].clear()

    for i in range(len(next(iter(feed.values())))):
        for d in inputs:
            interp.set_tensor(d["index"], np.asarray(feed[d["name"]][i : i + 1]).astype(d["dtype"]).reshape(d["shape"]))
        interp.invoke()
        keep = None
        if mask_name is not None:
            keep = np.asarray(feed[mask_name][i]).reshape(-1) != 0
        for t in read:
            x = np.asarray(interp.get_tensor(t), np.float32).reshape(-1, width[t])
            pending[t].append(x[keep] if keep is not None and len(x) == len(keep) else x)
            if sum(len(p) for p in pending[t]) >= GRAM_BATCH:
                flush(t)
    for t in read:
        if pending[t]:
            flush(t)
    return ops, [grams[op.input_tensor] for op in ops], max(counted.values(), default=0)


def on_grid(float_model: bytes, kernels: Mapping[str, np.ndarray], tolerance: float = 1e-3) -> tuple[int, list[str]]:
    """How many FULLY_CONNECTED weights of ``float_model`` folded from ``kernels`` (the rounded ones) lie on their int8
    grid, and the names of those that do not (some weight more than ``tolerance`` steps off): the converter would round
    those again."""
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: build child only

    ops = fully_connected_ops(Interpreter(model_content=float_model))
    on, off = 0, []
    for i in match_kernels(ops, kernels, tolerance=1e-3):
        steps = ops[i].weight / _scales(ops[i].weight)[:, None]
        if np.abs(steps - np.round(steps)).max() > tolerance:
            off.append(ops[i].name)
        else:
            on += 1
    return on, off


def round_to_grid(weight: np.ndarray) -> np.ndarray:
    """``weight`` (``[out, in]``) rounded to nearest on its per-output-channel int8 grid: what the converter does."""
    scale = _scales(weight)
    return np.clip(np.round(weight / scale[:, None]), -QMAX, QMAX) * scale[:, None]


def _scales(weight: np.ndarray) -> np.ndarray:
    scale = np.abs(weight).max(axis=1) / QMAX
    return np.where(scale > 0, scale, 1.0)


def gptq(weight: np.ndarray, gram: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """``weight`` (``[out, in]``) on its per-output-channel int8 grid, rounded column by column with the error
    carried into the columns not yet rounded (weighted by ``gram``'s inverse). Zeros stay zero; every channel keeps its
    largest weight at ``±QMAX`` steps of the same scale."""
    w = np.array(weight, np.float64)
    scale = _scales(w)
    zero = w == 0
    h = np.array(gram, np.float64)  # a copy: a Gram matrix may be shared between ops
    dead = np.diag(h) <= 0  # an input column never non-zero on the calibration rows: its weights cost nothing
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(len(h))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper triangular
    q = np.zeros_like(w)
    for b0 in range(0, w.shape[1], BLOCK):  # within a block column by column; the rest once per block
        b1 = min(b0 + BLOCK, w.shape[1])
        block, errors = w[:, b0:b1].copy(), np.zeros((len(w), b1 - b0))
        for j in range(b1 - b0):
            col = block[:, j]
            qc = np.where(zero[:, b0 + j], 0.0, np.clip(np.round(col / scale), -QMAX, QMAX) * scale)
            q[:, b0 + j] = qc
            errors[:, j] = (col - qc) / hinv[b0 + j, b0 + j]
            block[:, j + 1 :] -= np.outer(errors[:, j], hinv[b0 + j, b0 + j + 1 : b1])
        w[:, b1:] -= errors @ hinv[b0:b1, b1:]
    top = np.abs(weight).argmax(axis=1)
    rows = np.arange(len(q))
    lost = np.abs(q).max(axis=1) < QMAX * scale * (1 - 1e-6)  # the channel's maximum must stay, or its scale moves
    lost &= np.abs(weight).max(axis=1) > 0
    q[rows[lost], top[lost]] = np.sign(weight[rows[lost], top[lost]]) * QMAX * scale[lost]
    return q


def output_error(weight: np.ndarray, rounded: np.ndarray, gram: np.ndarray) -> float:
    """``||X (W - Q)ᵀ||² / ||X Wᵀ||²`` from the Gram matrix: the op's relative squared output error on the rows."""
    e = weight - rounded
    den = float(np.sum((weight @ gram) * weight))
    return float(np.sum((e @ gram) * e)) / den if den > 0 else 0.0


def match_kernels(ops: list[FcOp], kernels: Mapping[str, np.ndarray], tolerance: float = RANK1_TOLERANCE,
                  ) -> dict[int, str]:
    """Which tf_keras kernel (``[in, out]``, by layer name) each FULLY_CONNECTED weight was folded from.

    A folded weight is the kernel transposed, times a per-input-row and a per-output-column factor (gamma, 1/sqrt(d),
    smoothing): ``log|Wᵀ / K|`` is then a row term plus a column term, with one sign pattern. Each op is matched to the
    unclaimed kernel of its shape for which that holds within ``tolerance``; ops without one are left out.
    """
    out: dict[int, str] = {}
    claimed: set[str] = set()
    for i, op in enumerate(ops):
        folded = op.weight.T
        for name, kernel in kernels.items():
            if name in claimed or kernel.shape != folded.shape or not _rescaled(folded, kernel, tolerance):
                continue
            out[i] = name
            claimed.add(name)
            break
    return out


def _rescaled(folded: np.ndarray, kernel: np.ndarray, tolerance: float) -> bool:
    """Whether ``folded == diag(r) @ kernel @ diag(c)`` for some non-zero ``r``, ``c`` (zeros in the same places)."""
    nz = kernel != 0
    if not np.array_equal(nz, folded != 0) or not nz.any():
        return False
    ratio = np.where(nz, folded / np.where(nz, kernel, 1.0), np.nan)
    log = np.log(np.abs(ratio))
    with warnings.catch_warnings():  # a row or column of zeros (pruned) has no factor: any will do
        warnings.simplefilter("ignore", RuntimeWarning)
        row = np.nan_to_num(np.nanmedian(log, axis=1, keepdims=True))
        col = np.nan_to_num(np.nanmedian(log - row, axis=0, keepdims=True))
    if np.nanmax(np.abs(log - row - col)) > tolerance:
        return False
    sign = np.sign(ratio)
    row_sign = np.sign(np.nansum(sign, axis=1, keepdims=True))
    col_sign = np.sign(np.nansum(sign * row_sign, axis=0, keepdims=True))
    return bool(np.all((sign == row_sign * col_sign) | ~nz))


def rounded_kernels(float_model: bytes, kernels: Mapping[str, np.ndarray], samples: Mapping[str, np.ndarray],
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """New tf_keras kernels whose folded FULLY_CONNECTED weights lie on the converter's int8 grid, rounded by GPTQ.

    Args:
        float_model: the float .tflite of the model in the recipe's spelling (its folded weights).
        kernels: the model's ``Dense`` kernels (``[in, out]``) by layer name.
        samples: calibration inputs, keyed by input name or role.

    Returns:
        The new kernels of the matched layers, and stats: ``ops`` / ``matched`` / ``rows`` and, per matched layer and
        in total, the relative output error on the calibration rows of round-to-nearest and of GPTQ.
    """
    ops, grams, rows = input_grams(float_model, samples)
    matched = match_kernels(ops, kernels)
    new: dict[str, np.ndarray] = {}
    layers: dict[str, dict[str, float]] = {}
    for i, name in matched.items():
        op, gram = ops[i], grams[i]
        rounded = gptq(op.weight, gram)
        nearest = round_to_grid(op.weight)
        layers[name] = {"nearest": output_error(op.weight, nearest, gram), "gptq": output_error(op.weight, rounded, gram)}
        kernel = np.asarray(kernels[name], np.float64)
        nz = kernel != 0
        # carry the rounding back through the folding: kernel * (new folded / old folded), elementwise
        new[name] = np.where(nz, kernel * rounded.T / np.where(nz, op.weight.T, 1.0), 0.0).astype(np.float32)
    stats: dict[str, Any] = {"method": "gptq", "damp": DAMP, "fully_connected_ops": len(ops), "matched": len(matched),
                             "rows": rows}
    if layers:
        stats["output_error"] = {
            "nearest_mean": round(float(np.mean([v["nearest"] for v in layers.values()])), 8),
            "gptq_mean": round(float(np.mean([v["gptq"] for v in layers.values()])), 8)}
        stats["layers"] = {k: {m: round(e, 8) for m, e in v.items()} for k, v in layers.items()}
    unmatched = [ops[i].name for i in range(len(ops)) if i not in matched]
    if unmatched:
        stats["unmatched"] = unmatched[:20]
    return new, stats

"""Streaming text generation from a .tflite file alone (``litegate generate``).

Works with the two signature layouts litegate exports:
* recurrent generators: ``step(token, h_i[, c_i]...)``;
* GPT-2: ``prefill(tokens)`` then ``decode(token, pos, k_cache_i, v_cache_i...)``.

The loop is written against a ``call(signature, inputs) -> outputs`` function, so the same code
drives the TFLite model and (in tests) the float TensorFlow model it came from.

The signatures are read from the verified flatbuffer; LiteRT runs the model only in an isolated
child (:func:`generate_job` through :func:`litegate.isolation.run_isolated`), so a file that crashes
LiteRT is a classified failure, never a crash of litegate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from litegate.errors import ModelLoadError
from litegate.isolation import run_isolated
from litegate.tasks import load_tokenizer, token_ids
from litegate.tflite.flatbuffer import ModelInfo, read_model
from litegate.tflite.verify import load_model, verify_tflite

Call = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def decode_ids(tok: Any, ids: list[int]) -> str:
    """Text of ``ids``: char-level vocabularies join tokens verbatim, BPE uses its decoder."""
    if tok.decoder is not None:
        return str(tok.decode(ids))
    return "".join(tok.id_to_token(i) or "" for i in ids)


class Generator:
    """Greedy or sampled generation over a signature-call function."""

    def __init__(self, call: Call, signatures: Mapping[str, Mapping[str, Any]]) -> None:
        """``signatures``: name -> {"inputs": {name: shape}, "outputs": [name, ...]} (``outputs`` optional).

        Raises:
            ModelLoadError: the signatures are not a litegate text generator's.
        """
        self.call = call
        self.sigs = signatures
        names = ", ".join(signatures) or "none"
        try:
            if "decode" in signatures and "prefill" in signatures:
                self.kind = "kv-cache"
                self.prefill_len = int(signatures["prefill"]["inputs"]["tokens"][1])
                self.cache_shapes = {k: v for k, v in signatures["decode"]["inputs"].items() if "_cache_" in k}
                self.max_len = int(next(iter(self.cache_shapes.values()))[2])
                needs = {"prefill": {"logits", *self.cache_shapes}, "decode": {"logits", *self.cache_shapes}}
                ok = self.prefill_len >= 1 and self.max_len >= 1 and {"token", "pos"} <= set(signatures["decode"]["inputs"])
            elif "step" in signatures:
                self.kind = "recurrent"
                self.state_shapes = {k: v for k, v in signatures["step"]["inputs"].items() if k != "token"}
                needs = {"step": {"logits", *self.state_shapes}}
                ok = "token" in signatures["step"]["inputs"]
            else:
                raise ModelLoadError(f"not a litegate text generator: signatures {names} "
                                     "(expected step, or prefill + decode)")
        except (KeyError, IndexError, StopIteration, TypeError, ValueError):
            ok = False
        for sig, outputs in (needs.items() if ok else ()):
            have = signatures[sig].get("outputs")
            if have is not None and not outputs <= set(have):
                ok = False
        if not ok:
            raise ModelLoadError(f"not a litegate text generator: signatures {names} do not have the inputs and "
                                 "outputs of step(token, state...) or prefill(tokens) + decode(token, pos, caches...)")

    def _pick(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        logits = np.asarray(logits, np.float64).reshape(-1)
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits / temperature
        p = np.exp(z - z.max())
        return int(rng.choice(len(p), p=p / p.sum()))

    def generate(self, prompt_ids: list[int], n_tokens: int, *, temperature: float = 0.0, seed: int = 0) -> list[int]:
        """The ``n_tokens`` ids that follow ``prompt_ids`` (stops early when a KV cache is full)."""
        if not prompt_ids:
            raise ModelLoadError("the prompt encodes to no tokens")
        rng = np.random.default_rng(seed)
        out: list[int] = []
        if self.kind == "recurrent":
            state = {k: np.zeros(shape, np.float32) for k, shape in self.state_shapes.items()}
            logits = None
            for t in prompt_ids:
                res = self.call("step", {"token": np.array([[t]], np.int32), **state})
                state = {k: np.asarray(res[k]) for k in self.state_shapes}
                logits = res["logits"]
            for _ in range(n_tokens):
                t = self._pick(np.asarray(logits), temperature, rng)
                out.append(t)
                res = self.call("step", {"token": np.array([[t]], np.int32), **state})
                state = {k: np.asarray(res[k]) for k in self.state_shapes}
                logits = res["logits"]
            return out
        first = prompt_ids[: self.prefill_len]
        padded = np.zeros((1, self.prefill_len), np.int32)
        padded[0, : len(first)] = first
        res = self.call("prefill", {"tokens": padded})
        caches = {k: np.asarray(res[k]) for k in self.cache_shapes}
        logits = np.asarray(res["logits"])[0, len(first) - 1]
        pos = len(first)
        for t in prompt_ids[len(first):]:
            logits, caches = self._decode(t, pos, caches)
            pos += 1
        for _ in range(n_tokens):
            t = self._pick(logits, temperature, rng)
            out.append(t)
            if pos >= self.max_len:
                break
            logits, caches = self._decode(t, pos, caches)
            pos += 1
        return out

    def _decode(self, token: int, pos: int, caches: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if pos >= self.max_len:
            raise ModelLoadError(f"the prompt is longer than the KV cache ({self.max_len} positions)")
        res = self.call("decode", {"token": np.array([[token]], np.int32), "pos": np.array([pos], np.int32), **caches})
        return np.asarray(res["logits"])[0], {k: np.asarray(res[k]) for k in self.cache_shapes}


def signature_shapes(model: ModelInfo) -> dict[str, dict[str, Any]]:
    """Signature name -> {"inputs": {name: static shape}, "outputs": [name, ...]}, from the flatbuffer."""
    return {sig.key: {"inputs": {k: t.shape for k, t in model.signature_inputs(sig.key).items()},
                      "outputs": [n for n, _ in sig.outputs]} for sig in model.signatures}


def tflite_generator(model: Path, threads: int = 1) -> Generator:
    """A :class:`Generator` over a .tflite file's signature runners (in this process: the child's side)."""
    from ai_edge_litert.interpreter import Interpreter  # LiteRT runtime: only where a model runs

    content = verify_tflite(model)
    sigs = signature_shapes(read_model(content, source=str(model)))
    Generator(lambda _n, _i: {}, sigs)  # refuse what is not a generator before LiteRT sees it
    try:
        interp = Interpreter(model_content=content, num_threads=threads)
        runners = {name: interp.get_signature_runner(name) for name in sigs}
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{model}: LiteRT cannot load the model: {exc}") from None

    def call(name: str, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return runners[name](**inputs)

    return Generator(call, sigs)


def generate_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Child-process entry: the ids that follow ``prompt_ids`` in ``model``."""
    gen = tflite_generator(Path(payload["model"]), threads=int(payload.get("threads", 1)))
    ids = gen.generate(list(payload["prompt_ids"]), int(payload["n_tokens"]), temperature=float(payload["temperature"]),
                       seed=int(payload["seed"]))
    return {"ids": ids}


def generate_text(model: Path, prompt: str, n_tokens: int, *, tokenizer: Path | None = None, temperature: float = 0.0,
                  seed: int = 0, timeout_s: float = 600.0) -> str:
    """Generate ``n_tokens`` tokens after ``prompt`` with the .tflite ``model`` and its tokenizer sidecar.

    The model is verified and its signatures checked here; LiteRT runs it in an isolated child.

    Raises:
        ModelLoadError: no tokenizer, an unsound model, or not a text generator.
        IsolationError: the child crashed, hung or returned nothing.
    """
    tok_path = tokenizer or next((p for p in (model.with_suffix(".tokenizer.json"), model.parent / "tokenizer.json")
                                  if p.is_file()), None)
    if tok_path is None:
        raise ModelLoadError(f"{model}: no tokenizer sidecar ({model.with_suffix('.tokenizer.json').name}); pass --tokenizer")
    tok = load_tokenizer(tok_path)
    gen = Generator(lambda _n, _i: {}, signature_shapes(load_model(model)))  # refusals before any child starts
    prompt_ids = token_ids(tok, prompt, source="the prompt")
    if not prompt_ids:
        raise ModelLoadError("the prompt encodes to no tokens")
    if gen.kind == "kv-cache" and len(prompt_ids) > gen.max_len:
        raise ModelLoadError(f"the prompt is longer than the KV cache ({gen.max_len} positions)")
    result = run_isolated(GENERATE_JOB, {"model": str(model), "prompt_ids": prompt_ids, "n_tokens": n_tokens,
                                         "temperature": temperature, "seed": seed}, timeout_s=timeout_s)
    return decode_ids(tok, [int(i) for i in result["ids"]])


GENERATE_JOB = "litegate.generate:generate_job"

"""Text generators: char-level RNNs (TensorFlow's text-generation tutorial shape) and their exports.

A recurrent generator exports two signatures:
* ``step(token [1, 1], <state inputs>)`` -> ``logits [1, V]`` and the new states, for streaming
  generation with the recurrent state held by the app (LSTM: ``h_i``, ``c_i``; GRU: ``h_i``);
* ``prefill(tokens [1, P], <state inputs>)`` -> ``logits [1, P, V]``, running the whole Keras
  RNN layer so the converter can use its fused sequence op (``UNIDIRECTIONAL_SEQUENCE_LSTM``)
  where it can (see :func:`rnn_signatures` for why it returns no state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from litegate.errors import ModelLoadError

RNN_TYPES = ("LSTM", "GRU", "SimpleRNN")


def char_tokenizer(text: str) -> Any:
    """A character-level ``tokenizers`` Tokenizer over the characters of ``text``."""
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tok


def build_char_rnn(vocab_size: int, kind: str = "lstm", embedding: int = 64, units: int = 256) -> tf_keras.Model:
    """Embedding -> LSTM/GRU (sequences) -> Dense logits, as in TensorFlow's text-generation tutorial."""
    rnn = {"lstm": tf_keras.layers.LSTM, "gru": tf_keras.layers.GRU}[kind]
    tokens = tf_keras.Input((None,), dtype=tf.int32, name="tokens")
    x = tf_keras.layers.Embedding(vocab_size, embedding, name="embedding")(tokens)
    x = rnn(units, return_sequences=True, name=kind)(x)
    logits = tf_keras.layers.Dense(vocab_size, name="logits")(x)
    return tf_keras.Model(tokens, logits, name=f"char_{kind}")


def rnn_parts(model: tf_keras.Model) -> tuple[Any, list[Any], Any]:
    """(Embedding, [RNN layers], Dense) of a tutorial-shaped generator, or a clear error."""
    layers = [la for la in model.layers if not isinstance(la, tf_keras.layers.InputLayer)]
    if len(layers) < 3 or not isinstance(layers[0], tf_keras.layers.Embedding) or not isinstance(layers[-1], tf_keras.layers.Dense):
        raise ModelLoadError("a text-generation Keras model must be Embedding -> RNN layer(s) -> Dense")
    rnns = layers[1:-1]
    for r in rnns:
        if type(r).__name__ not in RNN_TYPES or not r.return_sequences:
            raise ModelLoadError(f"layer {r.name!r} ({type(r).__name__}) is not an RNN with return_sequences=True")
    return layers[0], rnns, layers[-1]


def state_names(rnns: list[Any]) -> list[str]:
    names = []
    for i, r in enumerate(rnns):
        names.append(f"h_{i}")
        if type(r).__name__ == "LSTM":
            names.append(f"c_{i}")
    return names


def _states_for(rnns: list[Any], kw: dict[str, tf.Tensor]) -> list[list[tf.Tensor]]:
    out = []
    for i, r in enumerate(rnns):
        out.append([kw[f"h_{i}"], kw[f"c_{i}"]] if type(r).__name__ == "LSTM" else [kw[f"h_{i}"]])
    return out


def rnn_signatures(model: tf_keras.Model, prefill_len: int) -> dict[str, Any]:
    """Concrete ``step`` and ``prefill`` functions with explicit recurrent state in.

    ``step`` also returns the new state (streaming generation). ``prefill`` returns only the
    logits of every position: measured with TF 2.21, the converter fuses a Keras LSTM into
    ``UNIDIRECTIONAL_SEQUENCE_LSTM`` when the layer takes an initial state but not when it also
    returns its final state (then it emits a WHILE loop), and the fused op does not expose the
    cell state. So a prompt is fed through ``step``; ``prefill`` scores whole windows fast.
    """
    emb, rnns, dense = rnn_parts(model)
    specs = {n: tf.TensorSpec([1, rnns[int(n.split("_")[1])].units], tf.float32, name=n) for n in state_names(rnns)}

    @tf.function
    def step(**kw: tf.Tensor) -> dict[str, tf.Tensor]:
        x = emb(kw["token"])[:, 0, :]
        out: dict[str, tf.Tensor] = {}
        for i, (layer, states) in enumerate(zip(rnns, _states_for(rnns, kw), strict=True)):
            x, new = layer.cell(x, states)
            new = new if isinstance(new, list | tuple) else [new]
            out[f"h_{i}"] = new[0]
            if len(new) > 1:
                out[f"c_{i}"] = new[1]
        out["logits"] = dense(x)
        return out

    @tf.function
    def prefill(**kw: tf.Tensor) -> dict[str, tf.Tensor]:
        x = emb(kw["tokens"])
        for layer, states in zip(rnns, _states_for(rnns, kw), strict=True):
            x = layer(x, initial_state=states)
        return {"logits": dense(x)}

    return {
        "step": step.get_concrete_function(token=tf.TensorSpec([1, 1], tf.int32, name="token"), **specs),
        "prefill": prefill.get_concrete_function(tokens=tf.TensorSpec([1, prefill_len], tf.int32, name="tokens"), **specs),
    }


def load_keras_generator(path: Path) -> tf_keras.Model:
    model = tf_keras.models.load_model(str(path), compile=False, safe_mode=True)
    rnn_parts(model)
    return model

"""Write a small random-weight Llama checkpoint in Hugging Face's layout, for trying the Llama path end to end.

    python scripts/make_tiny_llama.py TEXT_FILE OUT_DIR [--layers 2 --hidden 64 --heads 4 --kv-heads 2 ...]
    litegate convert OUT_DIR -o tiny-llama.tflite --seq-len 32 --max-len 256
    litegate quantize OUT_DIR --recipe int4-blockwise -o tiny-llama-int4.tflite --seq-len 32 --max-len 256
    litegate generate tiny-llama.tflite --prompt "Once" --tokens 40

``--train-steps N`` then trains it (Adam, next-token cross-entropy on windows of ``--seq`` tokens from the first 90%
of TEXT_FILE, the last 10% held out) with litegate's own TensorFlow Llama and writes the trained weights, so that
perplexity and quantization effects mean something; without it the weights are random.

OUT_DIR gets ``config.json`` (``model_type`` llama, ``architectures`` ["LlamaForCausalLM"]), ``model.safetensors``
(Hugging Face tensor names: ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ...,
``model.norm.weight`` and ``lm_head.weight`` unless ``--tied``) and ``tokenizer.json``: a byte-level BPE trained on
TEXT_FILE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([line for line in text.splitlines() if line.strip()] or [text], trainer)
    return tok


def tensors(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool,
            seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": np.ones(hidden, np.float32),
                p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
                p + "self_attn.q_proj.weight": w(heads * d, hidden), p + "self_attn.k_proj.weight": w(kv_heads * d, hidden),
                p + "self_attn.v_proj.weight": w(kv_heads * d, hidden), p + "self_attn.o_proj.weight": w(hidden, heads * d),
                p + "mlp.gate_proj.weight": w(intermediate, hidden), p + "mlp.up_proj.weight": w(intermediate, hidden),
                p + "mlp.down_proj.weight": w(hidden, intermediate)}
    if not tied:
        out["lm_head.weight"] = w(vocab, hidden)
    return out


def train(out: Path, ids: np.ndarray, steps: int, seq: int, batch: int, lr: float, seed: int) -> float:
    """Train the checkpoint in ``out`` on token ids ``ids`` and write its weights back; the last loss."""
    import tensorflow as tf  # TensorFlow only for --train-steps
    import tf_keras

    from litegate.converter.llama import export_weights, load_llama

    tf_keras.utils.set_random_seed(seed)
    model = load_llama(out)
    opt = tf_keras.optimizers.Adam(lr)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(x[:, 1:], model(x[:, :-1]))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    loss = float("nan")
    for i in range(steps):
        starts = rng.integers(0, len(ids) - seq - 1, batch)
        loss = float(step(tf.constant(np.stack([ids[s : s + seq + 1] for s in starts]).astype(np.int32))))
        if i % 100 == 0 or i == steps - 1:
            print(f"step {i}: loss {loss:.3f}")
    save_file(export_weights(model), str(out / "model.safetensors"))
    return loss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("text", type=Path, help="text to train the byte-level BPE tokenizer on")
    ap.add_argument("out", type=Path, help="checkpoint folder to write")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--tied", action="store_true", help="tie the LM head to the embeddings (no lm_head.weight)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=0, help="train this many steps (0: random weights)")
    ap.add_argument("--seq", type=int, default=64, help="training window in tokens")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--limit", type=int, default=0, help="read only the first N characters of TEXT_FILE")
    a = ap.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads:
        ap.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    a.out.mkdir(parents=True, exist_ok=True)
    text = a.text.read_text(encoding="utf-8")
    text = text[: a.limit] if a.limit else text
    tok = train_tokenizer(text, a.vocab)
    tok.save(str(a.out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    weights = tensors(vocab, a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads, a.tied, a.seed)
    save_file(weights, str(a.out / "model.safetensors"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
              "hidden_size": a.hidden, "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
              "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
              "max_position_embeddings": a.max_positions, "rms_norm_eps": 1e-5, "rope_theta": a.rope_theta,
              "rope_scaling": None, "tie_word_embeddings": a.tied, "hidden_act": "silu",
              "bos_token_id": 0, "eos_token_id": 1}
    (a.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {a.out} (vocabulary {vocab}, {sum(v.size for v in weights.values())} parameters)")
    if a.train_steps:
        ids = np.asarray(tok.encode(text[: int(len(text) * 0.9)]).ids)
        loss = train(a.out, ids, a.train_steps, a.seq, a.batch, a.lr, a.seed)
        print(f"trained {a.train_steps} steps on {len(ids)} tokens: loss {loss:.3f}, wrote {a.out / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

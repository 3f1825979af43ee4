"""Write a small random-weight Llama checkpoint in Hugging Face's layout, for trying the Llama path end to end.

    python scripts/make_tiny_llama.py TEXT_FILE OUT_DIR [--layers 2 --hidden 64 --heads 4 --kv-heads 2 ...]
    litegate convert OUT_DIR -o tiny-llama.tflite --seq-len 32 --max-len 256
    litegate quantize OUT_DIR --recipe int4-blockwise -o tiny-llama-int4.tflite --seq-len 32 --max-len 256
    litegate generate tiny-llama.tflite --prompt "Once" --tokens 40

OUT_DIR gets ``config.json`` (``model_type`` llama, ``architectures`` ["LlamaForCausalLM"]), ``model.safetensors``
(Hugging Face tensor names: ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ...,
``model.norm.weight`` and ``lm_head.weight`` unless ``--tied``) and ``tokenizer.json``: a byte-level BPE trained on
TEXT_FILE. The weights are random (the model writes noise): it exercises conversion, quantization and the
signatures, not quality.
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
    a = ap.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads:
        ap.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    a.out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(a.text.read_text(encoding="utf-8"), a.vocab)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

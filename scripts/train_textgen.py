"""Train litegate's char-level Shakespeare generators (LSTM, GRU, GPT-2-shaped) on Tiny Shakespeare.

The last 10% of the text is held out (perplexity and agreement are measured on it). Outputs:
* ``--arch lstm|gru`` -> ``OUT/model.keras`` (tf_keras) + ``OUT/tokenizer.json``;
* ``--arch gpt2`` -> a Hugging Face GPT-2 checkpoint folder (config.json, model.safetensors,
  tokenizer.json), converted through the ``hf-gpt2`` source like any GPT-2 checkpoint. Its context
  (n_positions) is the training window ``--seq``, so no position embedding is left untrained.

    python scripts/train_textgen.py --arch lstm --out examples/textgen/char-lstm
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from litegate.converter.textgen import build_char_rnn, char_tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["lstm", "gru", "gpt2"], required=True)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N characters (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tf_keras.utils.set_random_seed(args.seed)

    text = Path(args.data).read_text(encoding="utf-8")
    if args.limit:
        text = text[: args.limit]
    split = int(len(text) * 0.9)
    tok = char_tokenizer(text)
    ids = np.array(tok.encode(text).ids, np.int32)
    train, held = ids[:split], ids[split:]
    n = (len(train) - 1) // args.seq
    x = train[: n * args.seq].reshape(n, args.seq)
    y = train[1 : n * args.seq + 1].reshape(n, args.seq)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tok.get_vocab_size()

    if args.arch == "gpt2":
        from safetensors.numpy import save_file

        from litegate.converter.gpt2 import GPT2, GPT2Config, export_weights

        # Every position embedding must be trained: windows as long as the context (n_positions).
        cfg = GPT2Config(vocab_size=vocab, n_positions=args.seq, n_embd=128, n_layer=4, n_head=4)
        model = GPT2(cfg)
        model.build_all()
    else:
        model = build_char_rnn(vocab, args.arch)
    steps = args.epochs * math.ceil(n / args.batch)
    sched = tf_keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)
    model.compile(optimizer=tf_keras.optimizers.Adam(sched),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.time()
    hist = model.fit(x, y, batch_size=args.batch, epochs=args.epochs, shuffle=True, verbose=2)
    train_s = time.time() - t0

    # held-out loss with the same windowing
    m = (len(held) - 1) // args.seq
    hx = held[: m * args.seq].reshape(m, args.seq)
    hy = held[1 : m * args.seq + 1].reshape(m, args.seq)
    held_loss = float(model.evaluate(hx, hy, batch_size=args.batch, verbose=0))

    if args.arch == "gpt2":
        save_file(export_weights(model), str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    else:
        model.save(out / "model.keras")
    tok.save(str(out / "tokenizer.json"))
    log = {"script": "scripts/train_textgen.py", "args": vars(args), "train_chars": int(len(train)),
           "held_out_chars": int(len(held)), "train_seconds": round(train_s, 1),
           "final_train_loss": float(hist.history["loss"][-1]), "held_out_loss": held_loss,
           "held_out_perplexity": math.exp(held_loss), "tensorflow": tf.__version__}
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

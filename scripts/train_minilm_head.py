"""Train a linear SST-2 sentiment head on the frozen, real all-MiniLM-L6-v2 encoder.

The encoder is litegate's own TF BERT loaded from the checkpoint (``make models``), with
sentence-transformers pooling (masked mean + L2 norm). The head (``classifier.weight`` [2, 384],
``classifier.bias`` [2]) is fitted on SST-2 train embeddings and written as a small safetensors
file that ``examples/minilm-sst2/release.toml`` adds to the checkpoint (``model.extra_weights``).

    python scripts/train_minilm_head.py --model models/all-MiniLM-L6-v2 --data ../shared/data/sst2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
from safetensors.numpy import save_file

from litegate.converter.encoders import build_encoder, load_weights
from litegate.converter.hf import read_checkpoint
from litegate.tasks import TextEncoder, classification_metrics, read_labelled_tsv


def embed(model: tf_keras.Model, enc: TextEncoder, sentences: tuple[str, ...], batch: int = 128) -> np.ndarray:
    out = []
    for i in range(0, len(sentences), batch):
        x = enc.encode(sentences[i : i + batch])
        out.append(model({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}, training=False)["embedding"].numpy())
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--out", default="examples/minilm-sst2")
    ap.add_argument("--train-rows", type=int, default=16000, help="SST-2 train rows to embed (a seeded sample)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tf_keras.utils.set_random_seed(args.seed)

    ckpt = read_checkpoint(args.model)
    model = build_encoder(ckpt.config, seq_len=None, head="mean")
    load_weights(model, ckpt, "mean")
    enc = TextEncoder(Path(args.model) / "tokenizer.json", args.seq_len)
    train = read_labelled_tsv(Path(args.data) / "train.tsv")
    dev = read_labelled_tsv(Path(args.data) / "dev.tsv")
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(train.sentences), size=min(args.train_rows, len(train.sentences)), replace=False)
    t0 = time.time()
    x_train = embed(model, enc, tuple(train.sentences[i] for i in idx))
    y_train = np.array([train.labels[i] for i in idx])
    x_dev = embed(model, TextEncoder(Path(args.model) / "tokenizer.json", 128), dev.sentences)
    embed_s = time.time() - t0
    print(f"embedded {len(idx)} train + {len(dev.sentences)} dev sentences in {embed_s:.0f} s", flush=True)

    head = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(x_train.shape[1],))])
    head.compile(optimizer=tf_keras.optimizers.Adam(1e-2),
                 loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    head.fit(x_train, y_train, batch_size=256, epochs=args.epochs, verbose=0, shuffle=True)
    w, b = head.layers[0].get_weights()
    dev_metrics = classification_metrics(x_dev @ w + b, np.array(dev.labels))
    train_metrics = classification_metrics(x_train @ w + b, y_train)
    print(f"train {train_metrics}  dev {dev_metrics}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"classifier.weight": np.ascontiguousarray(w.T).astype(np.float32),
               "classifier.bias": b.astype(np.float32)}, str(out / "head.safetensors"))
    (out / "head_log.json").write_text(json.dumps({
        "script": "scripts/train_minilm_head.py", "args": vars(args), "train_rows": int(len(idx)),
        "embed_seconds": round(embed_s, 1), "train": train_metrics, "sst2_dev_fp32_tf": dev_metrics,
        "tensorflow": tf.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

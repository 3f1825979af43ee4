"""Train litegate's embedded default: a BERT-Tiny-shaped sentiment classifier on SST-2 train.

Shape of the published BERT-Tiny (2 layers, hidden 128, 2 heads, intermediate 512) with a
WordPiece vocabulary trained here with the ``tokenizers`` library. The result is written as a
Hugging Face checkpoint folder (config.json, model.safetensors, vocab.txt, tokenizer.json), so
the pipeline converts it through the same ``hf`` source users use for their models.
``--model-type distilbert`` trains the same shape as a DistilBERT (no token types, DistilBERT's
``pre_classifier`` head and tensor names: ``examples/distilbert-sst2``).

    python scripts/train_demo.py --data ../shared/data/sst2 --out examples/demo/model
    python scripts/train_demo.py --model-type distilbert --out examples/distilbert-sst2/model \
        --eval examples/demo/eval.tsv
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
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.processors import BertProcessing

from litegate.converter.encoders import build_encoder, export_weights
from litegate.converter.hf import BertConfig
from litegate.tasks import TextEncoder, classification_metrics, read_labelled_tsv

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/sst2", help="folder with train.tsv and dev.tsv")
    ap.add_argument("--eval", default="examples/demo/eval.tsv", help="extra labelled TSV to report on")
    ap.add_argument("--out", default="examples/demo/model")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training rows (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-type", choices=("bert", "distilbert"), default="bert",
                    help="architecture family of the written checkpoint")
    args = ap.parse_args()

    tf_keras.utils.set_random_seed(args.seed)
    data = Path(args.data)
    train = read_labelled_tsv(data / "train.tsv", limit=args.limit or None)
    dev = read_labelled_tsv(data / "dev.tsv")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(list(train.sentences), vocab_size=args.vocab_size, min_frequency=2, special_tokens=SPECIAL)
    # A tokenizer trained from an iterator has no post-processor: add BERT's [CLS] ... [SEP] template.
    wp.post_processor = BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
    wp.save_model(str(out))  # vocab.txt
    wp.save(str(out / "tokenizer.json"))
    vocab = wp.get_vocab_size()
    print(f"tokenizer: {vocab} wordpieces in {time.time() - t0:.1f} s", flush=True)

    cfg = BertConfig(
        vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
        max_position_embeddings=128, num_labels=2, id2label={"0": "negative", "1": "positive"},
        model_type=args.model_type, type_vocab_size=0 if args.model_type == "distilbert" else 2,
    )
    enc = TextEncoder(out / "tokenizer.json", args.seq_len)
    enc.tokenizer.no_padding()
    tr = enc.tokenizer.encode_batch(list(train.sentences))
    ids = [np.array(e.ids, np.int32) for e in tr]
    labels = np.array(train.labels, np.int32)

    def gen():
        for i, lab in zip(ids, labels, strict=True):
            yield {"input_ids": i, "attention_mask": np.ones_like(i)}, lab

    spec = ({"input_ids": tf.TensorSpec([None], tf.int32), "attention_mask": tf.TensorSpec([None], tf.int32)},
            tf.TensorSpec([], tf.int32))
    ds = (tf.data.Dataset.from_generator(gen, output_signature=spec).cache()
          .shuffle(len(ids), seed=args.seed, reshuffle_each_iteration=True)
          .padded_batch(args.batch).prefetch(2))

    model = build_encoder(cfg, seq_len=None, head="classification", dropout=0.1)
    steps = args.epochs * ((len(ids) + args.batch - 1) // args.batch)
    sched = tf_keras.optimizers.schedules.PolynomialDecay(args.lr, steps, end_learning_rate=args.lr * 0.05)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(sched),
        loss={"logits": tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics={"logits": ["accuracy"]},
    )
    t0 = time.time()
    hist = model.fit(ds.map(lambda x, y: (x, {"logits": y})), epochs=args.epochs, verbose=2)
    train_s = time.time() - t0

    # Score with the static-shape graph the pipeline converts.
    infer = build_encoder(cfg, seq_len=args.seq_len, head="classification")
    infer.set_weights(model.get_weights())
    enc_fixed = TextEncoder(out / "tokenizer.json", args.seq_len)
    results = {}
    for name, ds_eval in (("sst2_dev", dev), ("demo_eval", read_labelled_tsv(args.eval) if Path(args.eval).is_file() else None)):
        if ds_eval is None:
            continue
        x = enc_fixed.encode(ds_eval.sentences)
        logits = infer.predict(x, batch_size=128, verbose=0)["logits"]
        results[name] = classification_metrics(logits, np.array(ds_eval.labels))
        print(f"{name}: {results[name]}", flush=True)

    save_file(export_weights(infer, cfg, "classification"), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    log = {
        "script": "scripts/train_demo.py", "args": vars(args), "train_rows": len(ids), "train_seconds": round(train_s, 1),
        "final_train_accuracy": float(hist.history["accuracy"][-1]) if "accuracy" in hist.history else None,
        "eval": results, "tensorflow": tf.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {out} in {train_s:.0f} s of training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

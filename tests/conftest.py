"""Shared fixtures: tiny real models made in code with seeded RNGs, and paths to shipped data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import litegate  # noqa: F401  (its __init__ selects tf_keras before any test touches tf.keras)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `make test` runs the suite on two workers (pytest-xdist, --dist loadgroup), then the `serial` tests alone. Each test
# file goes to one worker whole, so its module fixtures are built once; test_e2e and test_shard share the session-wide
# `demo_runs` and go together.
SHARED_SESSION_FIXTURES = {"test_e2e": "demo", "test_shard": "demo"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.path.stem
        item.add_marker(pytest.mark.xdist_group(SHARED_SESSION_FIXTURES.get(module, module)))


# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec: the interrupt
# tests (which send SIGINT to litegate, or to this process) would then test nothing. They need Python's default.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_checkpoint(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 2,
                    intermediate: int = 64, max_pos: int = 64, prefix: str = "bert.", with_head: bool = True) -> Path:
    """A random-weight BERT checkpoint in Hugging Face layout, with a WordPiece vocab built from real text."""
    from safetensors.numpy import save_file
    from tokenizers.implementations import BertWordPieceTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # A deterministic WordPiece vocabulary (sorted words and characters of real text): the trainer of
    # `tokenizers` breaks ties differently in every process, which made the "seeded" model vary.
    text = (DEMO / "calibration.txt").read_text().lower()
    words = sorted(set(re.findall(r"[a-z]+|[^\sa-z]", text)))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *(w for w in words if len(w) > 1)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
    tok.save(str(folder / "tokenizer.json"))
    vocab_size = tok.get_vocab_size()
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(vocab_size, hidden, scale=1.0),
        "embeddings.position_embeddings.weight": w(max_pos, hidden, scale=0.5),
        "embeddings.token_type_embeddings.weight": w(2, hidden, scale=0.5),
        "embeddings.LayerNorm.weight": 1 + w(hidden, scale=0.1),
        "embeddings.LayerNorm.bias": w(hidden, scale=0.1),
    }
    for i in range(layers):
        L = f"encoder.layer.{i}."
        for n, (o, inp) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                            "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                            "intermediate.dense": (intermediate, hidden), "output.dense": (hidden, intermediate)}.items():
            t[L + n + ".weight"] = w(o, inp)
            t[L + n + ".bias"] = w(o, scale=0.05)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[L + n + ".weight"] = 1 + w(hidden, scale=0.1)
            t[L + n + ".bias"] = w(hidden, scale=0.1)
    t["pooler.dense.weight"] = w(hidden, hidden)
    t["pooler.dense.bias"] = w(hidden, scale=0.05)
    tensors = {prefix + k: v for k, v in t.items()}
    if with_head:
        tensors["classifier.weight"] = w(2, hidden)
        tensors["classifier.bias"] = w(2, scale=0.05)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "intermediate_size": intermediate, "max_position_embeddings": max_pos,
           "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
           "id2label": {"0": "negative", "1": "positive"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


def write_config(folder: Path, *, model: Path, variants=("fp32",), extra: str = "", eval_path: Path | None = None,
                 seq_len: int = 32, budgets: str = "", cache_dir: Path | None = None) -> Path:
    """A small release.toml for tests: a fast bench protocol, without the machine-peak probe and the op profile
    (test_e2e checks those on the embedded default); ``cache_dir`` shares converted models between runs."""
    folder.mkdir(parents=True, exist_ok=True)
    ev = eval_path or DEMO / "eval.tsv"
    vs = ", ".join(f'"{v}"' for v in variants)
    text = f'''name = "t"
variants = [{vs}]
[model]
source = "hf-bert"
path = "{model}"
seq_len = {seq_len}
[data]
eval = "{ev}"
calibration = "{DEMO / 'calibration.txt'}"
calibration_samples = 20
max_eval_samples = 40
[output]
dir = "{folder / 'out'}"
{f'cache_dir = "{cache_dir}"' if cache_dir else ""}
[bench]
threads = [1]
warmup_runs = 2
min_runs = 5
min_seconds = 0.0
max_runs = 20
peak_probe = false
profile_runs = 0
{budgets}
{extra}
'''
    path = folder / "release.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``litegate`` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "litegate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory):
    """The embedded default run twice through the real CLI (the second from the converted-model cache in
    ``<out>/.cache``): (out, first process, first report.json, second process). Session-wide: test_e2e checks the
    runs, test_shard reuses the cache."""
    out = tmp_path_factory.mktemp("demo") / "reports"
    first = run_cli("run", str(DEMO / "release.toml"), "--output", str(out), "--jobs", "2")
    rep1 = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    second = run_cli("run", str(DEMO / "release.toml"), "--output", str(out))
    return out, first, rep1, second

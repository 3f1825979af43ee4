"""Issue 20, untrusted .tflite: every index LiteRT dereferences is checked, the reader's work is linear in the file
size, the tensors' declared bytes are capped in all, and nothing native opens the file in litegate's own process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tflite_craft as craft
from conftest import DEMO, ROOT, run_cli

from litegate.errors import ModelLoadError
from litegate.tflite.verify import verify_bytes

TOKENIZER = ROOT / "examples" / "textgen" / "char-gpt2" / "tokenizer.json"
U32_MAX = 2**32 - 1


def _refused(data: bytes, *patterns: str) -> str:
    with pytest.raises(ModelLoadError) as exc:
        verify_bytes(data, source="m.tflite")
    msg = exc.value.message
    assert "\n" not in msg and msg.startswith("m.tflite: ")
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


def _sig(fn):
    return craft.mutate(craft.add_model(), fn)


@pytest.mark.parametrize("fn,patterns", [
    (lambda m: setattr(m.signatureDefs[0], "subgraphIndex", 7), ("signature 0", "runs subgraph 7", "1 subgraphs")),
    (lambda m: setattr(m.signatureDefs[0], "inputs", []), ("has no inputs",)),
    (lambda m: setattr(m.signatureDefs[0], "outputs", []), ("has no outputs",)),
    (lambda m: setattr(m.signatureDefs[0].outputs[0], "tensorIndex", U32_MAX), ("output 'y' is tensor 4294967295",)),
    (lambda m: setattr(m.signatureDefs[0].inputs[0], "tensorIndex", 2), ("input 'input_ids' is tensor 2",)),
    (lambda m: setattr(m.signatureDefs[0], "signatureKey", None), ("no signature_key",)),
    (lambda m: setattr(m.signatureDefs[0].inputs[0], "name", None), ("input 0 has no name",)),
], ids=["subgraph-7", "no-inputs", "no-outputs", "output-u32-max", "input-out-of-range", "no-key", "no-name"])
def test_signature_defs_are_verified(fn, patterns):
    _refused(_sig(fn), *patterns)


@pytest.mark.parametrize("fn,patterns", [
    (lambda m: setattr(m.subgraphs[0].operators[0], "intermediates", [5]), ("intermediate tensor index 5",)),
    (lambda m: setattr(m.subgraphs[0], "inputs", [-1]), ("subgraph 0 input tensor index -1",)),
    (lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 3), ("opcode index 3",)),
    (lambda m: setattr(m.subgraphs[0].operators[0], "largeCustomOptionsOffset", 1 << 40), ("custom options",)),
], ids=["intermediate", "subgraph-input-minus-1", "opcode", "large-custom-options"])
def test_operator_and_subgraph_indices_are_verified(fn, patterns):
    _refused(craft.mutate(craft.add_model(), fn), *patterns)


def test_metadata_buffer_index_is_verified():
    def bad(m):
        m.metadata[0].buffer = 99

    _refused(craft.mutate(craft.mlp_model(), bad), "metadata 0 points at buffer 99")


def test_shared_vector_bomb_is_refused_in_linear_time():
    # 4,000 operators sharing one 4,000-entry inputs vector: 16 million references in 32 KB (the old reader decoded
    # them all: 5 s, and quadratic)
    t0 = time.perf_counter()
    _refused(craft.shared_vector_bomb(4000, 4000), "tables or vectors shared many times over")
    # the attacker's file: 20,000 x 20,000 = 400 million references in 160 KB (120 s and 6 GiB before)
    bomb = craft.shared_vector_bomb()
    assert len(bomb) < 200_000
    _refused(bomb, "inputs of operator", "tables or vectors shared many times over")
    assert time.perf_counter() - t0 < 2.0
    # the same operators written out one by one (each its own table, still one shared inputs vector) are refused too
    _refused(craft.shared_vector_bomb(2000, 2000, share_op=False), "shared many times over")


def test_real_layouts_stay_within_the_decode_budget():
    for data in (craft.add_model(), craft.mlp_model(), craft.step_model(), craft.shared_vector_bomb(50, 3)):
        verify_bytes(data)


def test_total_declared_tensor_bytes_are_capped():
    add = craft.add_model()
    verify_bytes(craft.huge_tensors(add, n=1, gib=15.0))  # one 15 GiB tensor: under both caps
    msg = _refused(craft.huge_tensors(add, n=8, gib=15.0), "more than 16.0 GiB in all", "tensor 3 ('huge_1') of subgraph 0")
    assert "30.0 GiB" in msg


def test_signatures_come_from_the_flatbuffer_not_litert(monkeypatch, tmp_path):
    """bench's sequence length, the run's model card signatures and a generator's bench feeds never open the file
    with LiteRT in this process."""
    import ai_edge_litert.interpreter as litert

    from litegate.api import model_seq_len
    from litegate.backends.runtime import signatures_of
    from litegate.benchmarks.accuracy import generator_bench_inputs

    def refuse(*_a, **_k):
        raise AssertionError("LiteRT opened an untrusted model in the main process")

    monkeypatch.setattr(litert, "Interpreter", refuse)
    add, step = tmp_path / "add.tflite", tmp_path / "step.tflite"
    add.write_bytes(craft.add_model(seq=6))
    step.write_bytes(craft.step_model())
    assert model_seq_len(add) == 6
    assert signatures_of(step) == {"prefill": {"inputs": ["h_0", "tokens"], "outputs": ["h_0", "logits"]},
                                   "step": {"inputs": ["h_0", "token"], "outputs": ["h_0", "logits"]}}
    name, feeds = generator_bench_inputs(step, [1, 2, 3], n=4)
    assert name == "step" and feeds["token"].shape == (4, 1) and feeds["h_0"].shape == (4, 4)
    assert feeds["h_0"].dtype == np.float32


def test_generator_signatures_that_do_not_fit_are_a_load_error():
    from litegate.generate import Generator

    def no_call(_n, _i):
        return {}

    for sigs in ({"prefill": {"inputs": {}}, "decode": {"inputs": {"token": (1, 1)}}},
                 {"prefill": {"inputs": {"tokens": (1, 8)}}, "decode": {"inputs": {"token": (1, 1), "pos": (1,)}}},
                 {"step": {"inputs": {"token": (1, 1), "h": (1, 4)}, "outputs": ["h"]}}):
        with pytest.raises(ModelLoadError, match="not a litegate text generator"):
            Generator(no_call, sigs)


def test_generator_logits_of_the_wrong_shape_are_a_load_error():
    from litegate.benchmarks.accuracy import lm_metrics

    with pytest.raises(ModelLoadError, match="prefill logits have shape"):
        lm_metrics(np.zeros((4, 4)), np.zeros((4, 4), np.int64))


# --- through the real CLI: exit 3, one line, nothing left behind -----------------------------------------------


def _one_line(r, code: int, *patterns: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("litegate: error: "), r.stderr
    for p in patterns:
        assert p in lines[0], (p, lines[0])


@pytest.fixture
def bad_signature(tmp_path: Path) -> Path:
    path = tmp_path / "m.tflite"
    path.write_bytes(_sig(lambda m: setattr(m.signatureDefs[0], "subgraphIndex", 7)))
    (tmp_path / "m.tokenizer.json").write_text(TOKENIZER.read_text())
    return path


def test_bench_and_generate_refuse_a_signature_past_the_subgraphs(bad_signature):
    # before: LiteRT opened the file in litegate's own process and both died of SIGSEGV (exit 139)
    r = run_cli("bench", str(bad_signature), "--text", str(DEMO / "calibration.txt"), timeout=120)
    _one_line(r, 3, "runs subgraph 7")
    r = run_cli("generate", str(bad_signature), "--prompt", "ab", "--tokens", "2", timeout=120)
    _one_line(r, 3, "runs subgraph 7")


def test_tflite_text_generation_run_refuses_a_bad_signature_and_leaves_nothing(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    step = craft.mutate(craft.step_model(), lambda m: setattr(m.signatureDefs[1], "subgraphIndex", 7))
    (folder / "model.tflite").write_bytes(step)
    (folder / "tokenizer.json").write_text(TOKENIZER.read_text())
    (folder / "eval.txt").write_text((DEMO / "calibration.txt").read_text())
    (folder / "release.toml").write_text('name = "t"\nvariants = ["fp32"]\n[model]\nsource = "tflite"\n'
                                         'path = "model.tflite"\ntask = "text-generation"\nseq_len = 4\n'
                                         '[data]\neval = "eval.txt"\nmax_eval_samples = 4\n[output]\ndir = "out"\n')
    r = run_cli("run", str(folder / "release.toml"), "-q", timeout=300)
    _one_line(r, 3, "signature 1 ('step') runs subgraph 7")
    out = folder / "out"
    assert not [p.name for p in out.iterdir() if p.name.startswith("litegate-run-")] if out.exists() else True
    assert not (out / "report.json").exists()

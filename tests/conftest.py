"""Shared fixtures. Tests use small models saved to a temporary directory or the shipped ones;
nothing is fetched from a hub."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("TTSCALE_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A randomly initialised model of the tiny size, in Hugging Face format."""
    from transformers import LlamaForCausalLM

    from ttscale.models.family import SIZES
    from ttscale.train.sft import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random-tiny")
    save_model(LlamaForCausalLM(SIZES["ttscale-tiny"].config()), path)
    return str(path)


@pytest.fixture(scope="module")
def engine(random_model_dir):
    """The torch engine over the random tiny model (a module may define its own)."""
    from serve_helpers import load_engine

    return load_engine(random_model_dir)


@pytest.fixture(scope="module")
def server(engine, random_model_dir):
    """A live `ttscale serve` on loopback over `engine`."""
    from serve_helpers import chat_template_of, engine_server

    with engine_server(engine, chat_template=chat_template_of(random_model_dir)) as s:
        yield s

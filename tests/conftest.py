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

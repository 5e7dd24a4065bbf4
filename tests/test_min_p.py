"""min-p sampling: validated, drops exactly the tokens below min_p x the top probability, and is
passed to OpenAI-compatible servers."""
from __future__ import annotations

import pytest
import torch

from ttscale.engine.sampling import RowParams, check_params, sample
from ttscale.errors import TTScaleError
from ttscale.types import SamplingParams


def _draws(probs: list[float], min_p: float, temperature: float = 1.0, rows: int = 4000) -> torch.Tensor:
    logits = torch.log(torch.tensor(probs))[None, :].repeat(rows, 1)
    params = [SamplingParams(temperature=temperature, min_p=min_p)] * rows
    rp = RowParams.of(params, list(range(rows)), torch.device("cpu"))
    return sample(logits, rp, torch.zeros(rows, dtype=torch.long))


def test_min_p_keeps_exactly_the_tokens_above_its_share_of_the_top_one():
    probs = [0.5, 0.3, 0.15, 0.05]
    off = torch.bincount(_draws(probs, 0.0), minlength=4)
    assert off[3] > 100  # without min_p the 5% token is drawn
    on = torch.bincount(_draws(probs, 0.2), minlength=4)  # floor 0.2 x 0.5 = 0.1
    assert on[3] == 0 and on[2] > 0
    # the kept tokens keep their relative probabilities: 0.5 : 0.3 : 0.15 renormalised
    share = on[:3].float() / on.sum()
    assert torch.allclose(share, torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.03)
    only_top = torch.bincount(_draws(probs, 1.0), minlength=4)
    assert only_top[0] == only_top.sum()


def test_min_p_reads_the_probabilities_after_temperature():
    probs = [0.5, 0.3, 0.15, 0.05]
    # at temperature 2 the 5% token rises to sqrt(.05)/sqrt(.5) = 0.32 of the top one
    hot = torch.bincount(_draws(probs, 0.3, temperature=2.0), minlength=4)
    cold = torch.bincount(_draws(probs, 0.3, temperature=1.0), minlength=4)  # 0.1 of the top
    assert hot[3] > 0 and cold[3] == 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1", True])
def test_bad_min_p_is_refused_naming_the_value(bad):
    with pytest.raises(TTScaleError, match=r"min_p.*\[0, 1\]") as e:
        check_params(SamplingParams(min_p=bad))
    assert repr(bad) in str(e.value) or str(bad) in str(e.value)


def test_min_p_is_sent_to_openai_compatible_servers_only_when_on():
    from ttscale.engine.openai_backend import OpenAIGenerator

    gen = OpenAIGenerator("http://127.0.0.1:9/v1", "m", 1000, 2, 16)
    on = gen._body("hi", SamplingParams(min_p=0.1), 2, 0, chat=False)
    off = gen._body("hi", SamplingParams(), 2, 0, chat=False)
    assert on["min_p"] == 0.1 and "min_p" not in off


def test_torch_engine_applies_min_p(engine):
    """min_p=1 keeps only the most likely token: hot sampling then equals greedy decoding."""
    from ttscale.types import GenerationRequest

    prompt = "Q: 12+7*3\n"
    greedy = engine.generate([GenerationRequest(prompt, SamplingParams(temperature=0.0, max_tokens=24))])
    hot = engine.generate([GenerationRequest(prompt, SamplingParams(n=4, temperature=2.0, min_p=1.0,
                                                                    max_tokens=24, seed=1))])
    assert {c.text for c in hot[0].completions} == {greedy[0].completions[0].text}

"""Top-k logprobs of sampled positions (`Sample.topk_sample_logprobs`): they equal an independent
reference (a plain PEFT model's forward of prompt + sampled tokens, log_softmax, topk), the sampled
token's `model_logprobs` is under that same distribution, and a request that does not ask gets
nothing extra and the same tokens."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.errors import EngineInputError
from gpu_runner.types import Sample, SamplingParams
from gpu_runner.validation import validate_sample

from .reference import new_adapter, peft_reference, random_sequence, sft_datum, train_steps

PROMPT = [3, 320, 265, 203, 44, 538]
K = 5


@pytest.fixture(scope="module")
def trained(engine):
    adapter_id = new_adapter(engine, rank=8, seed=41)
    train_steps(engine, adapter_id, [sft_datum(random_sequence(24, seed=5))], steps=3, lr=2e-2)
    return adapter_id


@pytest.fixture(scope="module")
def reference(engine, trained, tmp_path_factory):
    return peft_reference(engine, trained, tmp_path_factory.mktemp("topk-peft"), trainable=False)


def _reference_logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), V): the distribution each sampled token was drawn from, before temperature."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


def test_topk_equals_reference_and_sampled_logprob_is_consistent(engine, trained, reference):
    params = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=17, stop=[])
    asking = Sample(trained, PROMPT, 2, params, topk_sample_logprobs=K)
    plain = Sample(trained, PROMPT, 2, params)
    with_topk, without = engine.run_cycle([asking, plain])  # one batch: rows that ask and rows that don't
    assert with_topk.ok and without.ok, (with_topk.error, without.error)
    for seq, same in zip(with_topk.output.sequences, without.output.sequences, strict=True):
        assert seq.tokens == same.tokens and seq.logprobs == same.logprobs  # asking changes no draw
        assert same.topk_logprobs is None and same.model_logprobs is None
        expected = _reference_logprobs(reference, PROMPT, seq.tokens)
        assert len(seq.topk_logprobs) == len(seq.model_logprobs) == len(seq.tokens)
        for position, (row, token, model_lp) in enumerate(zip(seq.topk_logprobs, seq.tokens, seq.model_logprobs)):
            ids = torch.tensor([t for t, _ in row])
            values = torch.tensor([lp for _, lp in row])
            top = torch.topk(expected[position], K)
            torch.testing.assert_close(values, top.values, rtol=0, atol=1e-4)
            torch.testing.assert_close(values, expected[position][ids], rtol=0, atol=1e-4)  # ids, robust to ties
            assert abs(model_lp - float(expected[position][token])) <= 1e-4
            assert model_lp <= values[0].item() + 1e-6
            if token in ids.tolist():
                assert model_lp == pytest.approx(values[ids.tolist().index(token)].item(), abs=1e-6)
        # `logprobs` stay the sampling distribution's (temperature 0.7), so they differ from the model's
        scaled = torch.log_softmax(torch.log_softmax(expected, -1) / 0.7, -1)
        reference_scaled = scaled.gather(1, torch.tensor(seq.tokens)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(seq.logprobs), reference_scaled, rtol=0, atol=1e-4)


def test_at_temperature_one_and_greedy_model_logprobs_equal_logprobs(engine, trained):
    for temperature in (1.0, 0.0):
        params = SamplingParams(max_tokens=6, temperature=temperature, seed=3, stop=[])
        (result,) = engine.run_cycle([Sample(trained, PROMPT, 1, params, topk_sample_logprobs=1)])
        seq = result.output.sequences[0]
        assert seq.model_logprobs == pytest.approx(seq.logprobs, abs=1e-5)
        if temperature == 0.0:  # greedy: the sampled token is the top-1
            assert [row[0][0] for row in seq.topk_logprobs] == seq.tokens


def test_topk_sample_logprobs_out_of_range_is_refused(engine):
    with pytest.raises(EngineInputError) as refused:
        validate_sample(engine.info, PROMPT, 1, SamplingParams(max_tokens=2), topk_sample_logprobs=101)
    assert refused.value.field == "topk_sample_logprobs"
    (result,) = engine.run_cycle([Sample(None, PROMPT, 1, SamplingParams(max_tokens=2), topk_sample_logprobs=-1)])
    assert not result.ok and "topk_sample_logprobs" in result.error and result.category == "user"

"""Sampling: greedy equals transformers `generate` on the merged adapter, sampled logprobs equal
`forward`, seeds reproduce, stops end sequences, and batching across adapters changes nothing."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.types import ForwardBackward, Sample, SamplingParams

from .reference import new_adapter, peft_reference, random_sequence, sft_datum, train_steps


@pytest.fixture(scope="module")
def trained(engine):
    """An adapter moved well away from its zero-B init, so it changes what the model says."""
    adapter_id = new_adapter(engine, rank=8, seed=21)
    train_steps(engine, adapter_id, [sft_datum(random_sequence(24, seed=3))], steps=4, lr=2e-2)
    return adapter_id


PROMPT = [3, 320, 265, 203, 44, 538]


def _sample(engine, adapter_id, **params):
    (result,) = engine.run_cycle([Sample(adapter_id, PROMPT, params.pop("num_samples", 1), SamplingParams(**params))])
    assert result.ok, result.error
    return result.output


def test_greedy_matches_generate_with_merged_adapter(engine, trained, tmp_path):
    reference = peft_reference(engine, trained, tmp_path / "peft", trainable=False).merge_and_unload()
    expected = reference.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False)[0, len(PROMPT) :].tolist()
    got = _sample(engine, trained, max_tokens=12, temperature=0.0).sequences[0]
    assert got.tokens[: len(expected)] == expected
    assert got.stop_reason == ("length" if len(expected) == 12 else "stop")


def test_sampled_logprobs_at_temperature_one_equal_forward(engine, trained):
    out = _sample(engine, trained, num_samples=3, max_tokens=8, temperature=1.0, seed=5, stop=[])
    for seq in out.sequences:
        full = PROMPT + seq.tokens
        datum = sft_datum(full)
        (fwd,) = engine.run_cycle([ForwardBackward(trained, [datum], forward_only=True)])
        forward_lp = fwd.output.loss_fn_outputs[0]["logprobs"][len(PROMPT) - 1 :]
        torch.testing.assert_close(torch.tensor(seq.logprobs), forward_lp, rtol=1e-4, atol=1e-4)


def test_seed_reproduces_and_differs_across_seeds(engine, trained):
    first = _sample(engine, trained, num_samples=2, max_tokens=10, seed=123, stop=[])
    again = _sample(engine, trained, num_samples=2, max_tokens=10, seed=123, stop=[])
    other = _sample(engine, trained, num_samples=2, max_tokens=10, seed=124, stop=[])
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert [s.tokens for s in first.sequences] != [s.tokens for s in other.sequences]
    assert first.sequences[0].tokens != first.sequences[1].tokens


def test_stop_token_and_stop_string_end_the_sequence(engine, trained):
    greedy = _sample(engine, trained, max_tokens=6, temperature=0.0, stop=[]).sequences[0].tokens
    by_token = _sample(engine, trained, max_tokens=6, temperature=0.0, stop=[greedy[2]]).sequences[0]
    assert by_token.stop_reason == "stop" and by_token.tokens == greedy[: greedy.index(greedy[2]) + 1]
    text = engine.tokenizer.decode(greedy[:3])
    by_string = _sample(engine, trained, max_tokens=6, temperature=0.0, stop=[text[-2:]]).sequences[0]
    assert by_string.stop_reason == "stop" and len(by_string.tokens) <= 3
    assert text[-2:] in engine.tokenizer.decode(by_string.tokens)
    unstopped = _sample(engine, trained, max_tokens=6, temperature=0.0, stop=[]).sequences[0]
    assert unstopped.stop_reason == "length" and len(unstopped.tokens) == 6


def test_batched_across_adapters_equals_alone(engine, trained):
    other = new_adapter(engine, rank=2, seed=33)
    params = SamplingParams(max_tokens=7, temperature=0.8, top_k=50, top_p=0.9, seed=9, stop=[])
    ops = [
        Sample(trained, PROMPT, 2, params),
        Sample(other, PROMPT[:3], 1, params),
        Sample(None, PROMPT[1:], 1, params),
    ]
    together = engine.run_cycle(ops)
    for op, batched in zip(ops, together):
        (alone,) = engine.run_cycle([op])
        assert [s.tokens for s in batched.output.sequences] == [s.tokens for s in alone.output.sequences]
        for a, b in zip(alone.output.sequences, batched.output.sequences):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prompt_logprobs_equal_forward_and_topk_is_sorted(engine, trained):
    (result,) = engine.run_cycle(
        [Sample(trained, PROMPT, 1, SamplingParams(max_tokens=1), prompt_logprobs=True, topk_prompt_logprobs=3)]
    )
    out = result.output
    (fwd,) = engine.run_cycle([ForwardBackward(trained, [sft_datum(PROMPT)], forward_only=True)])
    assert out.prompt_logprobs[0] is None
    assert out.prompt_logprobs[1:] == pytest.approx(fwd.output.loss_fn_outputs[0]["logprobs"].tolist(), abs=1e-5)
    assert out.topk_prompt_logprobs[0] is None
    for position, row in enumerate(out.topk_prompt_logprobs[1:], start=1):
        values = [lp for _, lp in row]
        assert len(row) == 3 and values == sorted(values, reverse=True)
        assert values[0] >= out.prompt_logprobs[position] - 1e-6


def test_top_k_and_top_p_truncate_the_distribution(engine, trained):
    greedy = _sample(engine, trained, max_tokens=6, temperature=0.0, stop=[]).sequences[0].tokens
    assert _sample(engine, trained, max_tokens=6, top_k=1, seed=1, stop=[]).sequences[0].tokens == greedy
    assert _sample(engine, trained, max_tokens=6, top_p=1e-6, seed=1, stop=[]).sequences[0].tokens == greedy
    out = _sample(engine, trained, num_samples=4, max_tokens=6, top_k=3, seed=8, stop=[])
    for seq in out.sequences:
        prefix = list(PROMPT)
        for token in seq.tokens:
            assert _rank_of(engine, trained, prefix, token) < 3  # among the 3 most likely at its position
            prefix.append(token)


def _rank_of(engine, adapter_id, prefix, token):
    (res,) = engine.run_cycle(
        [Sample(adapter_id, prefix + [token], 1, SamplingParams(max_tokens=1), topk_prompt_logprobs=10)]
    )
    ranking = [t for t, _ in res.output.topk_prompt_logprobs[-1]]
    return ranking.index(token)

"""SamplingClient against the live server: seeded sampling repeats, sampled-token logprobs at
temperature 1 equal compute_logprobs of the same tokens, prompt and top-k prompt logprobs; old
ephemeral snapshots are released."""

from __future__ import annotations

import asyncio

import pytest

import lorasmith
from lorasmith import ModelInput, SamplingParams

from .reference import SEQUENCE

PROMPT = ModelInput.from_ints(SEQUENCE[:6])


def test_sampling_is_seeded_and_scored_like_compute_logprobs(service):
    sampler = service.create_sampling_client(base_model="tiny-llama")
    params = SamplingParams(max_tokens=5, seed=11)
    first = sampler.sample(PROMPT, 2, params).result(timeout=60)
    again = asyncio.run(sampler.sample_async(PROMPT, 2, params))
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert all(len(s.tokens) == 5 and s.stop_reason == "length" for s in first.sequences)
    assert all(s.sequence_id for s in first.sequences)

    sequence = first.sequences[0]
    scored = sampler.compute_logprobs(ModelInput.from_ints(PROMPT.to_ints() + sequence.tokens)).result(timeout=60)
    assert scored[0] is None and len(scored) == PROMPT.length + 5
    assert scored[PROMPT.length :] == pytest.approx(sequence.logprobs, abs=1e-4)


def test_prompt_logprobs_of_the_last_n_positions(service):
    sampler = service.create_sampling_client(base_model="tiny-llama")
    full = sampler.compute_logprobs(PROMPT).result(timeout=60)
    last_two = sampler.compute_logprobs(PROMPT, prompt_logprobs_last_n=2).result(timeout=60)
    assert last_two == [None] * (PROMPT.length - 2) + full[-2:]


def test_prompt_logprobs_and_topk(service):
    sampler = service.create_sampling_client(base_model="tiny-llama")
    response = sampler.sample(
        PROMPT, 1, SamplingParams(max_tokens=1, temperature=0.0), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result(timeout=60)
    assert response.prompt_logprobs[0] is None and len(response.prompt_logprobs) == PROMPT.length
    topk = response.topk_prompt_logprobs
    assert topk[0] is None and all(len(row) == 3 for row in topk[1:])
    for row, own in zip(topk[1:], response.prompt_logprobs[1:]):
        values = [logprob for _, logprob in row]
        assert values == sorted(values, reverse=True) and values[0] >= own - 1e-5


def test_old_ephemeral_snapshots_are_released_and_sampling_them_says_so(service, live_server_embedded):
    """An RL loop makes a sampler snapshot per step: only the newest 8 of a run stay on disk."""
    training = service.create_lora_training_client("tiny-llama", rank=2)
    samplers = [training.save_weights_and_get_sampling_client() for _ in range(10)]
    params = SamplingParams(max_tokens=2, seed=1)
    assert len(samplers[-1].sample(PROMPT, 1, params).result(timeout=60).sequences[0].tokens) == 2
    assert samplers[2].sample(PROMPT, 1, params).result(timeout=60).sequences
    with pytest.raises(lorasmith.NotFoundError, match="no longer kept"):
        samplers[1].sample(PROMPT, 1, params).result(timeout=60)
    run_dir = training.model_id.replace(":", "_")
    kept = list(live_server_embedded.data_dir.glob(f"checkpoints/*/{run_dir}/ephemeral/seq-*"))
    assert len(kept) == 8


def test_target_prompt_logprobs_score_the_asked_ids_like_compute_logprobs(service):
    """Column 0 asks each position's own next prompt token (so it equals compute_logprobs), column 1
    another id, -1 leaves a cell unscored; given as a plain nested list."""
    sampler = service.create_sampling_client(base_model="tiny-llama")
    ids = PROMPT.to_ints()
    targets = [[ids[i + 1], 7 if i else -1] for i in range(len(ids) - 1)]
    response = sampler.sample(
        PROMPT, 1, SamplingParams(max_tokens=1, temperature=0.0), target_prompt_logprobs=targets
    ).result(timeout=60)
    scored = response.target_prompt_logprobs.to_numpy()
    assert scored.shape == (len(ids) - 1, 2)
    own = sampler.compute_logprobs(PROMPT).result(timeout=60)
    assert scored[:, 0].tolist() == pytest.approx(own[1:], abs=1e-4)
    # id 7 at position i + 1: the prompt with its token i + 1 replaced by 7, scored at that position
    for i in range(1, len(ids) - 1):
        swapped = ids[: i + 1] + [7]
        assert scored[i, 1] == pytest.approx(
            sampler.compute_logprobs(ModelInput.from_ints(swapped)).result(timeout=60)[-1], abs=1e-4
        )

"""The rlhf recipe on tiny-llama, all three stages: the reward model ranks held-out pairs better
than chance (checked again through samplers on its saved weights and the base model), RL raises
the reward model's mean score of the policy's samples, and the KL penalty's drift from the SFT
policy starts at zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cookbook.data import load_comparisons, split_held_out
from cookbook.preference import pair_datums, sampler_scores
from cookbook.recipes import rlhf
from cookbook.renderers import get_renderer


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # three stages: several minutes on 2 shared cores
def test_rlhf_reward_model_ranks_and_rl_raises_its_score(recipe_flags, service):
    config = rlhf.Config(**recipe_flags, sft_steps=10, rm_steps=10, rl_steps=6, eval_prompts=8)

    result = rlhf.run(config)

    assert result["rm/heldout_accuracy_initial"] == 0.5  # untrained, it scores every response 0
    assert result["rm/heldout_accuracy"] > 0.5
    rm_losses = [m["rm/rm_loss"] for m in _lines(Path(config.log_dir) / "metrics.jsonl") if "rm/rm_loss" in m]
    assert rm_losses[-1] < rm_losses[0]
    assert result["rl/rm_score"] > result["rl/rm_score_initial"]
    # the first RL step samples the SFT weights themselves: the sampler's logprobs and the frozen SFT
    # sampler's compute_logprobs of the same tokens agree, so the KL estimate starts at zero
    assert result["rl/kl_to_sft_first"] == pytest.approx(0.0, abs=1e-3)
    drift = [m["rl/kl_to_sft"] for m in _lines(Path(config.log_dir) / "metrics.jsonl") if "rl/kl_to_sft" in m]
    assert len(drift) == config.rl_steps and drift[-1] == result["rl/kl_to_sft_last"]

    # independently: samplers on the reward model's saved weights and on the base model
    reward = service.create_sampling_client(model_path=result["rm/sampler_path"])
    base = service.create_sampling_client(base_model=config.base_model)
    renderer = get_renderer(config.renderer, reward.get_tokenizer())
    _, held_out = split_held_out(load_comparisons(config.preference_data), config.held_out_fraction, config.seed)
    datums = pair_datums(held_out, renderer, config.max_length, "mean")
    scores = [r - b for r, b in zip(sampler_scores(reward, datums), sampler_scores(base, datums))]
    ranked = [scores[i] > scores[i + 1] for i in range(0, len(scores), 2)]
    assert sum(ranked) / len(ranked) == pytest.approx(result["rm/heldout_accuracy"])

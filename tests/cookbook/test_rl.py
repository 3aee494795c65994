"""The rl recipe on tiny-llama's easy addition task: the mean reward of the policy, scored on every
problem with the same seeded sampling, rises above its start; the eval recipe, sampling the final
checkpoint and the base model side by side, sees the trained one ahead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cookbook.recipes import eval as eval_recipe
from cookbook.recipes import rl

RL_FLAGS = {"steps": 12}  # the defaults otherwise: 40 warm-start steps, 9 problems x 8 samples a step


@pytest.fixture(scope="module")
def rl_result(live_server_embedded, tmp_path_factory) -> dict:
    log_dir = tmp_path_factory.mktemp("rl")
    config = rl.Config(
        base_url=live_server_embedded.base_url,
        api_key=live_server_embedded.api_key,
        log_dir=str(log_dir),
        show_progress=False,
        **RL_FLAGS,
    )
    return {"log_dir": log_dir, **rl.run(config)}


@pytest.mark.slow  # 40 warm-start and 12 RL steps: minutes on 2 shared cores
def test_rl_raises_the_mean_reward(rl_result):
    assert rl_result["eval/reward"] > rl_result["eval/reward_initial"]
    steps = [json.loads(line) for line in (Path(rl_result["log_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rewards = [s["reward/mean"] for s in steps if "reward/mean" in s]
    assert len(rewards) == RL_FLAGS["steps"] and all(0.0 <= r <= 1.0 for r in rewards)
    # sampling on the current policy: the sampler's and the trainer's logprobs agree
    assert all(abs(s["kl_sample_train"]) < 1e-3 for s in steps if "kl_sample_train" in s)


@pytest.mark.slow  # needs the rl run above
def test_eval_compares_the_trained_checkpoint_with_the_base_model(recipe_flags, rl_result):
    trained = rl_result["checkpoint/sampler_path"]

    scores = eval_recipe.run(eval_recipe.Config(**recipe_flags, checkpoints=f"{trained},base", samples_per_problem=6))

    assert scores[trained]["reward"] > scores["base"]["reward"]
    answers = [json.loads(line) for line in (Path(recipe_flags["log_dir"]) / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 * 9 * 6
    for answer in answers:  # graded right: 1 exactly when a finished answer ends in the sum
        a, b = map(int, re.findall(r"\d+", answer["prompt"]))
        numbers = re.findall(r"-?\d+", answer["response"])
        right = answer["terminated"] and bool(numbers) and int(numbers[-1]) == a + b
        assert answer["reward"] == (1.0 if right else 0.0)

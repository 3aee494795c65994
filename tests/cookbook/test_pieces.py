"""The pure pieces the recipes stand on, against values worked out by hand: LR schedules, the
preference losses, group advantages, policy-gradient Datums and the tasks' graders."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cookbook.losses import bradley_terry_loss, dpo_loss
from cookbook.recipes.rlhf import kl_penalised, unfinished_last
from cookbook.rollouts import (
    Completion,
    completion_datum,
    group_advantages,
    mean_log_ratio,
    policy_gradient_batch,
    reference_logprobs,
)
from cookbook.schedules import learning_rate_at
from cookbook.tasks import AdditionTask, ReversalTask
from lorasmith import ModelInput


def test_schedules():
    assert learning_rate_at(1.0, 0, 10, "linear") == 1.0
    assert learning_rate_at(1.0, 5, 10, "linear") == pytest.approx(0.5)
    assert learning_rate_at(1.0, 5, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate_at(1.0, 9, 10, "constant") == 1.0
    assert [learning_rate_at(1.0, s, 10, "linear", warmup_steps=2) for s in (0, 1, 2, 6)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5]
    )
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        learning_rate_at(1.0, 0, 10, "step")


def test_dpo_loss_of_one_pair():
    # beta 0.5: chosen gained 1 nat on the reference, rejected lost 1, so the margin is 0.5 * 2 = 1
    loss, metrics = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )

    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert metrics["accuracy"] == 1.0 and metrics["margin"] == pytest.approx(1.0)
    assert metrics["chosen_reward"] == pytest.approx(0.5) and metrics["rejected_reward"] == pytest.approx(-0.5)


def test_bradley_terry_loss_is_the_mean_over_pairs():
    loss, metrics = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))

    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert float(loss) == pytest.approx(expected) and metrics["accuracy"] == 0.5


def test_group_advantages_are_centred_rewards():
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]


def _completion(tokens: list[int]) -> Completion:
    return Completion(
        ModelInput.from_ints([5, 6, 7]), tokens, [-0.5] * len(tokens), {"role": "assistant", "content": ""}, True
    )


def test_completion_datum_puts_advantages_on_sampled_targets_only():
    datum = completion_datum(_completion([8, 9]), advantage=0.25)

    assert datum.model_input.to_ints() == [5, 6, 7, 8]
    assert datum.loss_fn_inputs["target_tokens"].tolist() == [6, 7, 8, 9]
    assert datum.loss_fn_inputs["logprobs"].tolist() == [0.0, 0.0, -0.5, -0.5]
    assert datum.loss_fn_inputs["advantages"].tolist() == [0.0, 0.0, 0.25, 0.25]


def test_groups_with_equal_rewards_are_left_out():
    groups = [[_completion([8]), _completion([9])], [_completion([8]), _completion([9])]]

    batch = policy_gradient_batch(groups, [[1.0, 1.0], [1.0, 0.0]])

    assert [d.loss_fn_inputs["advantages"].tolist()[-1] for d in batch.datums] == [0.5, -0.5]
    assert batch.completion_starts == [2, 2]


def test_task_graders():
    addition, reversal = AdditionTask(max_operand=2), ReversalTask(length=3, alphabet_size=3)

    assert len(addition.problems()) == 9 and addition.prompt((1, 2))[0]["content"] == "What is 1 plus 2?"
    assert addition.reward((1, 2), "1 plus 2 is 3.") == 1.0 and addition.reward((1, 2), "4") == 0.0
    assert len(reversal.problems()) == 6 and reversal.prompt((0, 1, 2))[0]["content"] == "Reverse: a b c"
    assert reversal.reward((0, 1, 2), "c b a") == 1.0
    assert reversal.reward((0, 1, 2), "c a b") == pytest.approx(1 / 3) and reversal.reward((0, 1, 2), "c b") == 0.0


def test_an_unfinished_answer_ranks_last_in_its_group():
    finished, rambling = _completion([8]), replace(_completion([8]), terminated=False)

    assert unfinished_last([finished, rambling, finished], [2.0, 5.0, 1.0]) == [2.0, 0.0, 1.0]


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _ScoringSampler:
    """compute_logprobs as the SDK answers it: token i's logprob at index i, None first; here the
    logprob of token t is -t / 10, so every expected value is written down by hand."""

    def __init__(self):
        self.scored: list[list[int]] = []

    def compute_logprobs(self, prompt: ModelInput):
        tokens = prompt.to_ints()
        self.scored.append(tokens)
        return _Done([None] + [-t / 10 for t in tokens[1:]])


def test_reference_logprobs_are_the_completions_tokens_after_the_prompt():
    sampler = _ScoringSampler()
    short, long = _completion([8]), _completion([9, 4, 2])

    first, second = reference_logprobs(sampler, [short, long])

    assert first == pytest.approx([-0.8]) and second == pytest.approx([-0.9, -0.4, -0.2])
    assert sampler.scored == [[5, 6, 7, 8], [5, 6, 7, 9, 4, 2]]  # prompt + completion, one request each


def test_mean_log_ratio_and_the_kl_penalty():
    completion = replace(_completion([8, 9]), logprobs=[-0.5, -1.0])  # the policy's own logprobs

    ratio = mean_log_ratio(completion, [-0.7, -2.0])

    assert ratio == pytest.approx(((-0.5 + 0.7) + (-1.0 + 2.0)) / 2)
    assert mean_log_ratio(replace(_completion([]), logprobs=[]), []) == 0.0
    with pytest.raises(ValueError, match="2 sampled logprobs but 1 reference"):
        mean_log_ratio(completion, [-0.7])
    assert kl_penalised([1.0, 2.0], [ratio, -0.5], kl_coef=0.1) == pytest.approx([1.0 - 0.1 * 0.6, 2.05])

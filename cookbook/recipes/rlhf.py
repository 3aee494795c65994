"""RLHF in three stages: supervised fine-tuning of a policy, a reward model trained on preference
pairs, then RL of the policy against the reward model.

    python -m cookbook.recipes.rlhf --base-url http://127.0.0.1:8000 --api-key tml-...

The design, and why:
- **SFT** (`--sft-steps`): the policy is a LoRA on the base model trained on a chat JSONL, so that
  RL starts from a policy that already answers in the right shape (a random one never does).
- **The reward model** is a second LoRA on the same base model, trained with the SDK like any other
  run. Its score of a response is the mean logprob per token that the LoRA adds over the base
  model, RM(response) - base(response): a logprob head, so no new parameters or server support are
  needed. The difference, not the RM's logprob alone, because a likelihood rewards whatever is
  predictable (an RL policy scored by the RM's likelihood alone learns to repeat "User" and scores
  higher); the difference is what the preference pairs taught, and an untrained RM scores every
  response 0. The mean, not the sum, so length alone decides nothing. It is trained on comparison
  pairs with the pairwise Bradley-Terry loss -log sigmoid(score(chosen) - score(rejected)) through
  `forward_backward_custom`; the base model's scores of the pairs are its own before the first step
  (a LoRA starts as a no-op). Its ranking accuracy on held-out pairs (never trained on) is measured
  before (0.5, all ties) and after. Scoring a batch of responses is one forward pass of its training
  client (never stepped again) and `compute_logprobs` on a frozen base-model sampler. The shipped
  pairs reject three kinds of answer: refusals, wrong sums and empty answers (a reward model shown
  only refusals scored an empty answer high, and RL found it: the policy learned to stop at once).
- **RL** (`--rl-steps`): the GRPO-style loop of `cookbook.recipes.rl`, the reward of a completion
  being the frozen reward model's score, centred per group; an answer that never ends ranks last
  in its group whatever its score (`unfinished_last`). The reward is penalised by the policy's
  drift from the SFT policy, as in InstructGPT: score - `kl_coef` * mean over the completion's
  tokens of log pi(token) - log pi_sft(token), pi's logprobs being the sampler's and pi_sft's
  `compute_logprobs` on a frozen sampler of the SFT weights (the mean per token, as the reward
  model's score is). Without it the policy finds what the reward model overrates and drifts into
  text no SFT policy would write; `rl/kl_to_sft` charts the drift each step (0 at the first, whose
  policy is the SFT one). The reward model's mean score of the policy's samples on fixed prompts,
  with the same seeded sampling, is measured before and after RL.
Everything goes to one `metrics.jsonl` (a `stage` field per line) and one progress bar per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import lorasmith
from lorasmith import AdamParams, Datum, SamplingParams

from ..cli import DATA_DIR, RunConfig, as_metadata, connect, log_dir_of, main, run_metadata
from ..data import (
    Comparison,
    batch_at_step,
    conversation_to_datum,
    load_comparisons,
    load_conversations,
    split_held_out,
)
from ..losses import bradley_terry_loss
from ..metrics import MetricsLogger
from ..policy_gradient import LoopConfig, run_policy_gradient
from ..preference import completion_datum, forward_scores, pair_datums, sampler_scores, weighted_scores
from ..renderers import Message, Renderer, get_renderer
from ..rollouts import Completion, mean_log_ratio, reference_logprobs, sample_groups
from ..supervised import train

RECIPE = "rlhf"


@dataclass
class Config(RunConfig):
    sft_data: str = str(DATA_DIR / "arithmetic_chats.jsonl")
    preference_data: str = str(DATA_DIR / "preferences.jsonl")
    held_out_fraction: float = 0.25
    max_length: int = 256
    sft_steps: int = 15
    sft_batch_size: int = 16
    sft_learning_rate: float = 3e-3
    rm_steps: int = 15
    rm_batch_size: int = 8  # pairs
    rm_learning_rate: float = 2e-3
    rl_steps: int = 10
    prompts_per_step: int = 8
    group_size: int = 4
    max_tokens: int = 12
    temperature: float = 1.0
    rl_learning_rate: float = 2e-3
    kl_coef: float = 1.0  # reward - kl_coef * mean log(pi / pi_sft) per token; 0 turns it off
    eval_prompts: int = 12
    eval_samples: int = 4


class RewardModel:
    """The reward model, frozen after its training. Its score of a response is the mean logprob per
    token that its LoRA adds over the base model: RM(response) - base(response). Its training client,
    used forward-only, scores a whole batch in one request; the base model's part comes from a
    frozen base-model sampler."""

    def __init__(
        self,
        training: lorasmith.TrainingClient,
        reference: lorasmith.SamplingClient,
        renderer: Renderer,
        max_length: int,
    ):
        self.training, self.reference, self.renderer, self.max_length = training, reference, renderer, max_length

    def datum(self, prompt: list[Message], response: str) -> Datum:
        completion = [Message(role="assistant", content=response)]
        return completion_datum(prompt, completion, self.renderer, self.max_length, "mean")

    def scores(self, prompts: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        """Each response's score after its prompt."""
        data = [self.datum(p, r) for p, r in zip(prompts, responses)]
        reward = self.training.forward(data)  # queued while the base model's scores are computed
        base = sampler_scores(self.reference, data)
        return (forward_scores(reward.result(), data) - torch.tensor(base)).tolist()


def train_reward_model(
    reward: lorasmith.TrainingClient, pairs: list[Datum], base: torch.Tensor, config: Config, logger: MetricsLogger
) -> None:
    """`config.rm_steps` pipelined Bradley-Terry steps on interleaved chosen/rejected `pairs`, whose
    base-model scores are `base`."""
    pair_indices = list(range(len(pairs) // 2))

    def loss_for(batch_base: torch.Tensor):
        def loss_fn(data: list[Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            scores = weighted_scores(data, logprobs) - batch_base  # (2 * pairs,)
            return bradley_terry_loss(scores[0::2], scores[1::2])

        return loss_fn

    pending = None
    for step in range(config.rm_steps + 1):
        queued = None
        if step < config.rm_steps:
            chosen = batch_at_step(pair_indices, min(config.rm_batch_size, len(pair_indices)), step, config.seed)
            rows = [2 * i + side for i in chosen for side in (0, 1)]
            queued = (
                step,
                reward.forward_backward_custom([pairs[r] for r in rows], loss_for(base[rows])),
                reward.optim_step(AdamParams(learning_rate=config.rm_learning_rate)),
            )
        if pending is not None:
            done, forward_backward, optim = pending
            metrics = {k: v for k, v in forward_backward.result().metrics.items() if ":" not in k}
            optim.result()
            logger.log(done, {f"rm/{k}": v for k, v in metrics.items()})
        pending = queued


def ranking_accuracy(reward: lorasmith.TrainingClient, pairs: list[Datum], base: torch.Tensor) -> float:
    """The fraction of pairs whose chosen response the reward model scores above the rejected one
    (a tie counts half: an untrained reward model scores every response 0 and is at chance)."""
    scores = forward_scores(reward.forward(pairs).result(), pairs) - base
    chosen, rejected = scores[0::2], scores[1::2]
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def policy_score(
    policy: lorasmith.SamplingClient,
    model: RewardModel,
    renderer: Renderer,
    prompts: Sequence[list[Message]],
    samples: int,
    params: SamplingParams,
) -> float:
    """The reward model's mean score of `samples` responses of the policy to each prompt."""
    groups = sample_groups(policy, renderer, prompts, samples, params)
    flat_prompts = [p for p, group in zip(prompts, groups) for _ in group]
    responses = [c.message["content"] for group in groups for c in group]
    scores = model.scores(flat_prompts, responses)
    return sum(scores) / len(scores)


def unfinished_last(group: list[Completion], scores: list[float]) -> list[float]:
    """The group's scores with every answer that never ended (no stop sequence) moved below all the
    others, their order kept: a likelihood-based RM can like a rambling repetition, and RL finds it
    (tiny-llama learns to repeat "User" without end), so finishing comes first. Only the order
    within a group matters to group-centred advantages, and a group of unfinished answers still
    learns from their scores."""
    below = max(scores) - min(scores) + 1.0
    return [score if completion.terminated else score - below for completion, score in zip(group, scores)]


def kl_penalised(scores: Sequence[float], log_ratios: Sequence[float], kl_coef: float) -> list[float]:
    """Each score minus `kl_coef` times its completion's mean log(pi / pi_sft) per token."""
    return [score - kl_coef * ratio for score, ratio in zip(scores, log_ratios)]


def unique_prompts(comparisons: Sequence[Comparison]) -> list[list[Message]]:
    """Each distinct prompt once, in first-seen order."""
    seen: dict[str, list[Message]] = {}
    for comparison in comparisons:
        seen.setdefault(repr(comparison.prompt), comparison.prompt)
    return list(seen.values())


def run(config: Config) -> dict[str, Any]:
    """All three stages; returns `rm/heldout_accuracy(_initial)`, `rl/rm_score(_initial)` (the reward
    model's mean score of the policy before and after RL), `rl/kl_to_sft_first`/`_last` (the
    policy's drift from the SFT policy at the first and last RL steps), `sft/train_nll` and the
    checkpoints' paths."""
    log_dir = log_dir_of(config, RECIPE)
    with connect(config, RECIPE) as service:
        policy = service.create_lora_training_client(
            config.base_model, rank=config.lora_rank, seed=config.seed, user_metadata=run_metadata(config, RECIPE)
        )
        renderer = get_renderer(config.renderer, policy.get_tokenizer())
        final: dict[str, Any] = {"policy/run_id": policy.model_id}

        chats, _ = split_held_out(load_conversations(config.sft_data), config.held_out_fraction, config.seed)
        demonstrations = [
            conversation_to_datum(c, renderer, max_length=config.max_length, reduction="mean") for c in chats
        ]
        with MetricsLogger(log_dir, config.sft_steps, "sft", show_progress=config.show_progress, run=policy) as logger:
            sft = train(
                policy,
                demonstrations,
                config.sft_steps,
                config.sft_batch_size,
                lambda _: config.sft_learning_rate,
                config.seed,
                logger.log,
            )
        final["sft/train_nll"] = sft.get("train/nll")
        final["sft/sampler_path"] = policy.save_weights_for_sampler("sft").result().path
        sft_policy = service.create_sampling_client(model_path=final["sft/sampler_path"])

        comparisons = load_comparisons(config.preference_data)
        train_pairs, held_out_pairs = split_held_out(comparisons, config.held_out_fraction, config.seed)
        train_data = pair_datums(train_pairs, renderer, config.max_length, "mean")
        held_out_data = pair_datums(held_out_pairs, renderer, config.max_length, "mean")
        reward = service.create_lora_training_client(
            config.base_model,
            rank=config.lora_rank,
            seed=config.seed + 1,
            user_metadata={**run_metadata(config, RECIPE), "stage": "reward_model"},
        )
        final["rm/run_id"] = reward.model_id
        # the LoRA starts as a no-op, so the untrained reward model's scores are the base model's
        base_train = forward_scores(reward.forward(train_data).result(), train_data)
        base_held_out = forward_scores(reward.forward(held_out_data).result(), held_out_data)
        final["rm/heldout_accuracy_initial"] = ranking_accuracy(reward, held_out_data, base_held_out)
        with MetricsLogger(
            log_dir, config.rm_steps, "reward_model", append=True, show_progress=config.show_progress, run=reward
        ) as logger:
            train_reward_model(reward, train_data, base_train, config, logger)
            final["rm/heldout_accuracy"] = ranking_accuracy(reward, held_out_data, base_held_out)
            logger.log(config.rm_steps, {"rm/heldout_accuracy": final["rm/heldout_accuracy"]}, advance=False)
        final["rm/sampler_path"] = reward.save_weights_for_sampler("reward-model").result().path
        reference = service.create_sampling_client(base_model=config.base_model)
        model = RewardModel(reward, reference, renderer, config.max_length)

        prompts = unique_prompts(train_pairs)
        eval_prompts = unique_prompts(held_out_pairs)[: config.eval_prompts] or prompts[: config.eval_prompts]
        evaluation = SamplingParams(
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            stop=renderer.get_stop_sequences(),
            seed=config.seed,
        )

        loop = LoopConfig(
            steps=config.rl_steps,
            prompts_per_step=config.prompts_per_step,
            group_size=config.group_size,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            learning_rate=config.rl_learning_rate,
            seed=config.seed,
        )
        with MetricsLogger(
            log_dir, config.rl_steps, "rl", append=True, show_progress=config.show_progress, run=policy
        ) as logger:
            drift: list[float] = []  # each RL step's mean log(pi / pi_sft) per token

            def score(chosen: list[int], groups: list[list[Completion]]) -> list[list[float]]:
                completions = [c for group in groups for c in group]
                flat = model.scores(
                    [prompts[i] for i, group in zip(chosen, groups) for _ in group],
                    [c.message["content"] for c in completions],
                )
                ratios = [
                    mean_log_ratio(c, ref) for c, ref in zip(completions, reference_logprobs(sft_policy, completions))
                ]
                drift.append(sum(ratios) / len(ratios))
                logger.log(len(drift) - 1, {"rl/kl_to_sft": drift[-1]}, advance=False)
                penalised = kl_penalised(flat, ratios, config.kl_coef)
                sizes = [len(group) for group in groups]
                scored = [penalised[sum(sizes[:k]) : sum(sizes[: k + 1])] for k in range(len(groups))]
                return [unfinished_last(group, rewards) for group, rewards in zip(groups, scored)]

            before = policy.save_weights_and_get_sampling_client()
            final["rl/rm_score_initial"] = policy_score(
                before, model, renderer, eval_prompts, config.eval_samples, evaluation
            )
            logger.log(0, {"rl/rm_score": final["rl/rm_score_initial"]}, advance=False)
            after, _ = run_policy_gradient(policy, renderer, prompts, score, loop, logger)
            final["rl/rm_score"] = policy_score(after, model, renderer, eval_prompts, config.eval_samples, evaluation)
            final["rl/kl_to_sft_first"], final["rl/kl_to_sft_last"] = drift[0], drift[-1]
            logger.log(config.rl_steps, {"rl/rm_score": final["rl/rm_score"]}, advance=False)
        final["policy/sampler_path"] = (
            policy.save_weights_for_sampler("final", user_metadata=as_metadata(final)).result().path
        )
        return final


if __name__ == "__main__":
    main(Config, run, RECIPE, __doc__)

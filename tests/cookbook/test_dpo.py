"""The dpo recipe on tiny-llama: preference accuracy on the training pairs rises above 0.5, and a
sampler on its final weights against the base model (the reference: LoRA starts as a no-op)
agrees that chosen answers gained on rejected ones."""

from __future__ import annotations

import pytest

from cookbook.cli import DATA_DIR
from cookbook.data import load_comparisons, split_held_out
from cookbook.preference import pair_datums, sampler_scores
from cookbook.recipes import dpo
from cookbook.renderers import get_renderer


@pytest.mark.slow  # ~2 min on 2 cores; `make test` (CI) runs it
def test_dpo_prefers_the_chosen_answers(recipe_flags, service, tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # 24 of the shipped pairs: the reference scores 2 requests a pair
    pairs.write_text("".join((DATA_DIR / "preferences.jsonl").read_text().splitlines(keepends=True)[:24]))
    config = dpo.Config(**recipe_flags, data=str(pairs), steps=10, batch_size=8)

    result = dpo.run(config)

    assert result["train/accuracy"] > 0.5 and result["train/accuracy"] > result["train/accuracy_initial"]

    policy = service.create_sampling_client(model_path=result["checkpoint/sampler_path"])
    reference = service.create_sampling_client(base_model=config.base_model)
    renderer = get_renderer(config.renderer, policy.get_tokenizer())
    train_pairs, _ = split_held_out(load_comparisons(config.data), config.held_out_fraction, config.seed)
    datums = pair_datums(train_pairs[:8], renderer, config.max_length, "sum")
    gain = [p - r for p, r in zip(sampler_scores(policy, datums), sampler_scores(reference, datums))]
    right = [gain[i] > gain[i + 1] for i in range(0, len(gain), 2)]  # chosen gained more than rejected
    assert sum(right) / len(right) > 0.5

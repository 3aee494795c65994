"""The sl recipe on tiny-llama: held-out NLL falls, the number it reports is what a sampler on its
checkpoint gives, and a resumed run continues from the checkpoint's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cookbook.data import conversation_to_datum, load_conversations, split_held_out
from cookbook.preference import sampler_scores
from cookbook.recipes import sl
from cookbook.renderers import get_renderer


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sl_lowers_held_out_nll_and_resumes(recipe_flags, service):
    config = sl.Config(**recipe_flags, steps=8, batch_size=8, eval_every=4, save_every=4)

    first = sl.run(config)
    resumed = sl.run(sl.Config(**{**vars(config), "steps": 12, "resume": True}))

    assert first["heldout/nll"] < first["heldout/nll_initial"] - 0.5
    log_dir = Path(config.log_dir)
    assert [c["step"] for c in _lines(log_dir / "checkpoints.jsonl")] == [4, 8, 12]
    metrics = _lines(log_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics if "train/nll" in m] == list(range(12))  # 0-7, then 8-11 resumed
    # the resumed run's first evaluation is of the weights it loaded: the first run's last ones
    assert resumed["heldout/nll_initial"] == pytest.approx(first["heldout/nll"], rel=1e-3)
    assert resumed["heldout/nll"] < first["heldout/nll"]

    # independently: the mean NLL of the held-out answers under a sampler on the final checkpoint
    sampler = service.create_sampling_client(model_path=resumed["checkpoint/sampler_path"])
    renderer = get_renderer("role_colon", sampler.get_tokenizer())
    _, held_out = split_held_out(load_conversations(config.data), config.held_out_fraction, config.seed)
    datums = [conversation_to_datum(c, renderer, max_length=config.max_length) for c in held_out]
    total = -sum(sampler_scores(sampler, datums))
    tokens = sum(sum(d.loss_fn_inputs["weights"].tolist()) for d in datums)
    assert total / tokens == pytest.approx(resumed["heldout/nll"], rel=1e-3)

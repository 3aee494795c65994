"""A LoraSpec checks itself when built: a refusal is an EngineInputError naming the wire field."""

from __future__ import annotations

import pytest

from gpu_runner.errors import EngineInputError
from gpu_runner.types import LoraSpec

RANK = ("lora_config.rank must be between 1 and 1024", "lora_config.rank")
ALPHA = ("lora_config.alpha must be a finite number > 0", "lora_config.alpha")
SEED = ("lora_config.seed must be an integer or null", "lora_config.seed")
NOTHING_TRAINED = ("at least one of train_attn, train_mlp, train_unembed must be true", "lora_config")


@pytest.mark.parametrize(
    "fields,refusal",
    [
        ({"rank": 0}, RANK),
        ({"rank": -4}, RANK),
        ({"rank": 1025}, RANK),
        ({"rank": 8.0}, RANK),
        ({"rank": True}, RANK),
        ({"rank": "8"}, RANK),
        ({"alpha": 0}, ALPHA),
        ({"alpha": -1.0}, ALPHA),
        ({"alpha": float("nan")}, ALPHA),
        ({"alpha": float("inf")}, ALPHA),
        ({"alpha": "32"}, ALPHA),
        ({"alpha": True}, ALPHA),
        ({"seed": 1.5}, SEED),
        ({"seed": "7"}, SEED),
        ({"train_attn": False, "train_mlp": False, "train_unembed": False}, NOTHING_TRAINED),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(fields, refusal):
    message, field = refusal
    with pytest.raises(EngineInputError) as caught:
        LoraSpec(**fields)
    assert str(caught.value) == message
    assert caught.value.field == field


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"rank": 1, "alpha": 0.5, "seed": 0},
        {"rank": 1024, "alpha": 16, "seed": 2**62},
        {"train_attn": False, "train_mlp": False},
        {"train_mlp": False, "train_unembed": False},
    ],
)
def test_a_valid_spec_is_kept_as_given(fields):
    spec = LoraSpec(**fields)
    assert {name: getattr(spec, name) for name in fields} == fields

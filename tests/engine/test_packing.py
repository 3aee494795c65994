"""Packed passes: every sequence's logprobs equal that sequence run alone through plain transformers,
on tiny-llama and tiny-qwen3; packed sequences never see each other; rows stay grouped by adapter."""

from __future__ import annotations

import pytest
import torch

from gpu_runner import Engine
from gpu_runner.packing import micro_batches, pack
from gpu_runner.types import ForwardBackward

from .reference import new_adapter, random_sequence, sft_datum

LENGTHS = (7, 19, 3, 12, 26, 5)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen3"])
def packed_engine(request, engine_data_dir) -> Engine:
    """Rows of 32 tokens: the six sequences share rows, and one row holds several of them."""
    return Engine(request.param, data_dir=engine_data_dir, pack_row_tokens=32)


def _alone(engine: Engine, tokens: list[int], targets: list[int]) -> torch.Tensor:
    """The independent reference: the plain HF model (no LoRA, B = 0 adds nothing), one sequence."""
    with torch.no_grad():
        logits = engine.model.base_model(input_ids=torch.tensor([tokens])).last_hidden_state
        logits = engine.model.get_output_embeddings().base(logits)[0].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[:, None])[:, 0]


def test_packed_logprobs_equal_each_sequence_alone(packed_engine):
    adapter_id = new_adapter(packed_engine, rank=4, seed=3)
    data = [sft_datum(random_sequence(n + 1, seed=40 + i)) for i, n in enumerate(LENGTHS)]
    (result,) = packed_engine.run_cycle([ForwardBackward(adapter_id, data, forward_only=True)])
    assert result.ok, result.error
    for datum, out in zip(data, result.output.loss_fn_outputs):
        expected = _alone(packed_engine, datum.model_input, datum.loss_fn_inputs["target_tokens"].tolist())
        torch.testing.assert_close(out["logprobs"], expected, rtol=1e-5, atol=1e-5)


def test_packed_sequences_cannot_see_each_other(packed_engine):
    """Change only the first sequence of a packed row: the others' logprobs must not move."""
    adapter_id = new_adapter(packed_engine, rank=4, seed=4)
    tail = [sft_datum(random_sequence(9, seed=60 + i)) for i in range(2)]
    runs = []
    for seed in (1, 2):
        data = [sft_datum(random_sequence(10, seed=seed))] + tail  # 9 + 8 + 8 tokens: one row of 32
        (result,) = packed_engine.run_cycle([ForwardBackward(adapter_id, data, forward_only=True)])
        runs.append(result.output.loss_fn_outputs)
    assert not torch.allclose(runs[0][0]["logprobs"], runs[1][0]["logprobs"])
    for a, b in zip(runs[0][1:], runs[1][1:]):
        torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=0, atol=1e-6)


def test_with_a_cache_packed_sequences_would_leak(packed_engine):
    """Why the engine passes `use_cache=False`: with the cache on, transformers ignores the position
    resets and the second packed sequence attends to the first."""
    first, second = random_sequence(8, seed=7), random_sequence(8, seed=8)
    ids = torch.tensor([first + second])
    positions = torch.tensor([list(range(8)) * 2])
    body = packed_engine.model.base_model
    with torch.no_grad():
        alone = body(input_ids=torch.tensor([second]), use_cache=False).last_hidden_state[0]
        packed = body(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0, 8:]
        leaking = body(input_ids=ids, position_ids=positions, use_cache=True).last_hidden_state[0, 8:]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert (leaking - alone).abs().max() > 1e-2


def test_rows_fill_in_order_and_segments_stay_grouped_by_adapter():
    a, b = object(), object()
    batch = pack([[1] * 5, [2] * 4, [3] * 6, [4] * 2], [a, a, b, b], row_tokens=10, pad_id=0, max_position=64)
    # rows of at most 10 tokens, padded to the longest row (9); padding continues its row's positions
    assert batch.input_ids.tolist() == [[1] * 5 + [2] * 4, [3] * 6 + [4] * 2 + [0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]]
    assert batch.starts == [0, 5, 9, 15]
    assert [(s.adapter, s.start, s.stop) for s in batch.segments] == [(a, 0, 9), (b, 9, 18)]


def test_micro_batches_respect_the_budget_and_keep_order():
    assert micro_batches([5, 5, 5, 20, 1], 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert micro_batches([3, 3, 3], 100) == [range(0, 3)]

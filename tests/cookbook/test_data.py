"""Data helpers: loaders, seeded order, splits, batching and the Datum builder, with literal values."""

from __future__ import annotations

import json

import pytest

from cookbook.data import (
    DataError,
    batch_at_step,
    batches,
    conversation_to_datum,
    datum_from_tokens,
    iter_conversations,
    iter_text_lines,
    load_comparisons,
    shuffle_buffered,
    shuffled,
    split_held_out,
    text_to_datum,
    token_budget_batches,
)
from cookbook.renderers import Message, RoleColonRenderer

from .fakes import CharTokenizer, codes


def _fields(datum) -> tuple[list[int], list[int], list[float]]:
    return (
        datum.model_input.to_ints(),
        datum.loss_fn_inputs["target_tokens"].tolist(),
        datum.loss_fn_inputs["weights"].tolist(),
    )


def test_datum_shifts_inputs_and_targets_and_drops_the_first_weight():
    datum = datum_from_tokens([10, 11, 12, 13], [0.0, 0.0, 1.0, 1.0])

    assert _fields(datum) == ([10, 11, 12], [11, 12, 13], [0.0, 1.0, 1.0])


def test_datum_mean_reduction_makes_the_weights_sum_to_one():
    datum = datum_from_tokens([10, 11, 12, 13, 14], [0.0, 0.0, 1.0, 1.0, 1.0], reduction="mean")

    assert _fields(datum)[2] == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3])


def test_datum_max_length_keeps_the_first_tokens():
    datum = datum_from_tokens([10, 11, 12, 13, 14], [0.0, 1.0, 1.0, 1.0, 1.0], max_length=3)

    assert _fields(datum) == ([10, 11], [11, 12], [1.0, 1.0])


def test_datum_refuses_mismatched_or_unweighted_examples():
    with pytest.raises(DataError, match="3 tokens but 2 weights"):
        datum_from_tokens([1, 2, 3], [0.0, 1.0])
    with pytest.raises(DataError, match="no token has a positive weight"):
        datum_from_tokens([1, 2, 3], [1.0, 0.0, 0.0], reduction="mean")


def test_conversation_datum_masks_the_prompt():
    chat = [Message(role="user", content="Hi"), Message(role="assistant", content="Yo")]

    inputs, targets, weights = _fields(conversation_to_datum(chat, RoleColonRenderer(CharTokenizer())))

    full = [1] + codes("User: Hi\nAssistant: Yo\nUser:")
    assert inputs == full[:-1] and targets == full[1:]
    # target i is token i + 1: the 19 prompt tokens after BOS weigh 0, " Yo\nUser:" (9) weighs 1
    assert weights == [0.0] * 19 + [1.0] * 9


def test_text_datum_trains_every_token_after_bos():
    inputs, targets, weights = _fields(text_to_datum("abc", CharTokenizer()))

    assert (inputs, targets, weights) == ([1, 97, 98], [97, 98, 99], [1.0, 1.0, 1.0])


def test_shuffle_is_a_seeded_permutation():
    items = list(range(20))

    first, again, other = shuffled(items, 3), shuffled(items, 3), shuffled(items, 4)

    assert first == again and sorted(first) == items and first != items and other != first


def test_split_holds_out_the_requested_fraction_without_overlap():
    train, held_out = split_held_out(list(range(10)), 0.2, seed=0)

    assert len(train) == 8 and len(held_out) == 2 and sorted(train + held_out) == list(range(10))
    assert split_held_out(list(range(10)), 0.2, seed=0) == (train, held_out)


def test_batches_by_count_and_by_token_budget():
    lengths = [3, 3, 5, 1, 9, 2]
    datums = [datum_from_tokens(list(range(n + 1)), [1.0] * (n + 1)) for n in lengths]  # n input tokens each

    by_count = list(batches(range(5), 2))
    by_budget = [[d.model_input.length for d in b] for b in token_budget_batches(datums, 8)]

    assert by_count == [[0, 1], [2, 3], [4]]
    assert list(batches(range(5), 2, drop_last=True)) == [[0, 1], [2, 3]]
    assert by_budget == [[3, 3], [5, 1], [9], [2]]  # 9 > 8 goes alone


def test_batch_at_step_covers_each_epoch_once_and_depends_only_on_the_step():
    items = list(range(9))

    epoch = [x for step in range(3) for x in batch_at_step(items, 3, step, seed=1)]

    assert sorted(epoch) == items
    assert batch_at_step(items, 3, 4, seed=1) == batch_at_step(items, 3, 4, seed=1)
    assert sorted(x for step in range(3, 6) for x in batch_at_step(items, 3, step, seed=1)) == items


def test_buffered_shuffle_streams_a_seeded_permutation():
    stream = shuffle_buffered(iter(range(100)), buffer_size=8, seed=5)

    out = list(stream)

    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert out == list(shuffle_buffered(iter(range(100)), buffer_size=8, seed=5))


def test_loaders_stream_line_by_line(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n\n" + "{not json\n")

    chats = iter_conversations(path)

    assert next(chats) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataError, match=r"chats.jsonl:3: not JSON"):  # found only when the stream gets there
        next(chats)


def test_text_and_comparison_loaders(tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("one\n\n two\r\n")
    pairs = tmp_path / "pairs.jsonl"
    turn = [{"role": "user", "content": "q"}]
    pairs.write_text(
        json.dumps({"prompt": turn, "chosen": [{"role": "assistant", "content": "y"}], "rejected": turn}) + "\n"
    )

    [comparison] = load_comparisons(pairs)

    assert list(iter_text_lines(text)) == ["one", " two"]
    assert comparison.chosen == [{"role": "assistant", "content": "y"}] and comparison.prompt == turn
    pairs.write_text(json.dumps({"prompt": turn, "chosen": []}) + "\n")
    with pytest.raises(DataError, match="record 1 'chosen'"):
        load_comparisons(pairs)

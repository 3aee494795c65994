"""Renderers against a character tokenizer: the expected tokens and weights are written out by hand."""

from __future__ import annotations

import pytest

from cookbook.renderers import (
    ChatTemplateRenderer,
    Message,
    RendererError,
    RoleColonRenderer,
    TrainOnWhat,
    get_renderer,
)

from .fakes import CharTokenizer, codes

CHAT = [
    Message(role="user", content="Hi"),
    Message(role="assistant", content="Yo"),
]
TWO_TURNS = [*CHAT, Message(role="user", content="Ok?"), Message(role="assistant", content="No")]


def test_role_colon_weights_only_the_answer_and_the_stop_sequence():
    tokens, weights = RoleColonRenderer(CharTokenizer()).build_supervised_example(CHAT)

    assert tokens == [1] + codes("User: Hi\nAssistant: Yo\nUser:")
    # BOS, "User: Hi\n" (9), "Assistant:" (10) weigh 0; " Yo\n" (4) and the stop's "User:" (5) weigh 1
    assert weights == [0.0] + [0.0] * 9 + [0.0] * 10 + [1.0] * 9


def test_role_colon_last_assistant_message_leaves_earlier_answers_untrained():
    renderer = RoleColonRenderer(CharTokenizer())

    _, all_weights = renderer.build_supervised_example(TWO_TURNS, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    _, last_weights = renderer.build_supervised_example(TWO_TURNS, TrainOnWhat.LAST_ASSISTANT_MESSAGE)

    # [BOS] "User: Hi\n" "Assistant:" " Yo\n" "User: Ok?\n" "Assistant:" " No\nUser:"
    head = [0.0] * (1 + 9 + 10)
    assert all_weights == head + [1.0] * 4 + [0.0] * (10 + 10) + [1.0] * 9
    assert last_weights == head + [0.0] * 4 + [0.0] * (10 + 10) + [1.0] * 9


def test_role_colon_supervised_example_is_the_prompt_then_the_completion():
    renderer = RoleColonRenderer(CharTokenizer())

    prompt = renderer.build_generation_prompt(CHAT[:1]).to_ints()
    tokens, weights = renderer.build_supervised_example(CHAT)

    assert prompt == [1] + codes("User: Hi\nAssistant:")
    assert tokens[: len(prompt)] == prompt
    assert set(weights[: len(prompt)]) == {0.0} and set(weights[len(prompt) :]) == {1.0}


def test_role_colon_parses_a_completion_up_to_the_stop_sequence():
    renderer = RoleColonRenderer(CharTokenizer())

    stopped = renderer.parse_response(codes(" Yo\nUser: more"))
    truncated = renderer.parse_response(codes(" Yo and on"))

    assert stopped.message == {"role": "assistant", "content": "Yo"} and stopped.terminated
    assert truncated.message == {"role": "assistant", "content": "Yo and on"} and not truncated.terminated
    assert renderer.get_stop_sequences() == ["\nUser:"]


def test_role_colon_round_trips_a_supervised_completion():
    renderer = RoleColonRenderer(CharTokenizer())
    prompt_length = renderer.build_generation_prompt(CHAT[:1]).length

    tokens, _ = renderer.build_supervised_example(CHAT)

    assert renderer.parse_response(tokens[prompt_length:]).message == CHAT[1]


def test_role_colon_refuses_an_unknown_role():
    with pytest.raises(RendererError, match="tool"):
        RoleColonRenderer(CharTokenizer()).build_supervised_example([Message(role="tool", content="x")])


def test_chat_template_weights_the_answer_through_its_end_of_turn():
    tokens, weights = ChatTemplateRenderer(CharTokenizer()).build_supervised_example(CHAT)

    assert tokens == codes("[user]Hi\x02\n[assistant]Yo\x02\n")
    # "[user]Hi<EOS>\n" (10) and the header "[assistant]" (11) weigh 0; "Yo<EOS>" (3) 1; the "\n" after it 0
    assert weights == [0.0] * 10 + [0.0] * 11 + [1.0] * 3 + [0.0]


def test_chat_template_prompt_stops_and_parse():
    renderer = ChatTemplateRenderer(CharTokenizer())

    prompt = renderer.build_generation_prompt(CHAT[:1]).to_ints()
    parsed = renderer.parse_response(codes("Yo\x02\n[user]"))

    assert prompt == codes("[user]Hi\x02\n[assistant]")
    assert renderer.get_stop_sequences() == [2]
    assert parsed.message == CHAT[1] and parsed.terminated


def test_chat_template_round_trips_a_supervised_completion():
    renderer = ChatTemplateRenderer(CharTokenizer())
    prompt_length = renderer.build_generation_prompt(CHAT[:1]).length

    tokens, _ = renderer.build_supervised_example(CHAT)

    assert tokens[:prompt_length] == renderer.build_generation_prompt(CHAT[:1]).to_ints()
    assert renderer.parse_response(tokens[prompt_length:]).message == CHAT[1]


def test_a_tokenizer_without_a_template_is_refused_by_name():
    tokenizer = CharTokenizer()
    tokenizer.chat_template = None

    with pytest.raises(RendererError, match="role_colon"):
        get_renderer("chat_template", tokenizer)
    with pytest.raises(RendererError, match="unknown renderer"):
        get_renderer("llama9", tokenizer)


def test_completion_ends_the_prompt_with_its_own_last_token_and_the_answer_with_a_newline():
    renderer = get_renderer("completion", CharTokenizer())

    tokens, weights = renderer.build_supervised_example(CHAT)

    assert tokens == [1] + codes("Hi Yo\n")  # BOS, "Hi" weigh 0; " Yo\n" weighs 1
    assert weights == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert renderer.build_generation_prompt(CHAT[:1]).to_ints() == [1] + codes("Hi")
    parsed = renderer.parse_response(codes(" Yo\nmore"))
    assert parsed.message["content"] == "Yo" and parsed.terminated
    with pytest.raises(RendererError):
        renderer.build_supervised_example(TWO_TURNS)


def test_word_categories_hold_out_unseen_word_sets_of_seen_words():
    from cookbook.tasks import WORD_CATEGORIES, word_category_split

    train, held_out = word_category_split(words=3, train_per_category=24, held_out_per_category=5, seed=0)
    assert (len(train), len(held_out)) == (24 * 5, 5 * 5)
    for chat in train + held_out:
        words, category = chat[0]["content"].split(), chat[1]["content"]
        assert len(set(words)) == 3 and set(words) <= set(WORD_CATEGORIES[category])
    trained_sets = {frozenset(chat[0]["content"].split()) for chat in train}
    assert not {frozenset(chat[0]["content"].split()) for chat in held_out} & trained_sets
    assert {w for chat in held_out for w in chat[0]["content"].split()} <= {w for s in trained_sets for w in s}
    assert word_category_split(seed=0) == (train, held_out)

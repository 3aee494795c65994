"""The OpenAI-compatible endpoint's door, in process (no cycles run): refusals in OpenAI's error
shape with the status the `openai` client maps to its exceptions, quotas as 429 + Retry-After with
nothing stored, and the text rules (stop strings cut, end-of-sequence dropped, pieces join to the
decoded text) checked against the tokenizer's own decode."""

from __future__ import annotations

import dataclasses
import json

import pytest
from django.test import Client

from accounts.services import ensure_user, issue_api_key
from api.oai import request_params, shapes, text
from api.oai.errors import OaiError
from training import dispatch
from training.models import Operation

from .wire import InProcess, Wire

BASE = "tiny-llama"


@pytest.fixture
def key(db, monkeypatch) -> str:
    monkeypatch.setattr(dispatch, "dispatch", lambda base_model: None)
    return issue_api_key(ensure_user("oai-user"), "test")


def _post(path: str, body: dict, key: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return Client().post(f"/oai/api/v1/{path}", json.dumps(body), content_type="application/json", **headers)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_over_the_quota_a_call_is_429_with_retry_after_and_nothing_stored(key, settings):
    unlimited = {"max_active_runs": 0, "max_pending_operations": 1, "max_pending_bytes": 0}
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, **unlimited)
    wire = Wire(InProcess(key))
    assert wire.create_model(wire.session()).status_code == 200  # one operation pending: the quota is full
    before = Operation.objects.count()
    response = _post("completions", {"model": BASE, "prompt": "The cat", "max_tokens": 2}, key)
    error = _error(response, 429)
    assert error["type"] == "rate_limit_error" and "1 operations pending" in error["message"]
    assert int(response["Retry-After"]) >= 1
    assert Operation.objects.count() == before


def test_refusals_have_openais_shape_and_name_the_parameter(key):
    no_key = _error(_post("completions", {"model": BASE, "prompt": "x"}, None), 401)
    assert no_key["code"] == "invalid_api_key"
    assert _error(_post("completions", {"model": BASE, "prompt": "x"}, "tml-wrong"), 401)["code"] == "invalid_api_key"

    unknown_model = _error(_post("completions", {"model": "gpt-4o", "prompt": "x"}, key), 404)
    assert unknown_model["param"] == "model" and unknown_model["code"] == "model_not_found"
    missing = _error(_post("completions", {"model": "tinker://run-x/sampler_weights/s", "prompt": "x"}, key), 404)
    assert missing["param"] == "model"
    state = _error(
        _post(
            "chat/completions",
            {"model": "tinker://run-x/weights/s", "messages": [{"role": "user", "content": "x"}]},
            key,
        ),
        400,
    )
    assert state["param"] == "model" and "tinker://run-x/sampler_weights/" in state["message"]

    body = {"model": BASE, "prompt": "x", "max_tokens": 2}
    assert _error(_post("completions", {**body, "suffix": "!"}, key), 400)["param"] == "suffix"
    assert _error(_post("completions", {**body, "n": 0}, key), 400)["param"] == "n"
    too_long = _error(_post("completions", {**body, "max_tokens": 10**6}, key), 400)
    assert too_long["param"] == "max_tokens" and "context" in too_long["message"]
    vocab = _error(_post("completions", {**body, "prompt": [10**7]}, key), 400)
    assert vocab["param"] == "prompt"
    chat = _error(_post("chat/completions", {"model": BASE, "messages": [{"role": "tool", "content": "x"}]}, key), 400)
    assert chat["param"] == "messages[0].role"
    assert not Operation.objects.filter(kind="sample").exists()

    assert _error(Client().get("/oai/api/v1/completions"), 405)["type"] == "invalid_request_error"
    assert _error(Client().post("/oai/api/v1/embeddings"), 404)["code"] == "unknown_url"


def test_an_accepted_call_is_a_sample_request_of_the_callers_api_session(key):
    """(The view then waits for the cycle; here none runs, so only the submission is checked.)"""
    from training.intake import served_models

    user = ensure_user("oai-user")
    served = served_models.resolve(user, BASE)
    sampler = served_models.sampler_for(user, served)
    assert served_models.sampler_for(user, served).id == sampler.id  # one sampler per model, reused
    op = served_models.submit(user, sampler, [3, 320, 265], 2, {"max_tokens": 4, "temperature": 0.0, "seed": 3})
    assert op.kind == "sample" and op.status == Operation.Status.QUEUED
    assert op.payload["num_samples"] == 2 and op.payload["sampling_params"]["seed"] == 3
    assert sampler.session.display_name == served_models.API_SESSION_NAME and sampler.source_run is None
    assert "topk_sample_logprobs" not in op.payload  # an ordinary sample's payload is unchanged
    asking = served_models.submit(user, sampler, [3, 320, 265], 1, {"max_tokens": 4}, topk_sample_logprobs=3)
    assert asking.payload["topk_sample_logprobs"] == 3


def test_top_logprobs_up_to_20_are_asked_of_the_sampler():
    chat = request_params.parse(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 20},
        chat=True,
    )
    assert chat.logprobs and chat.top_logprobs == chat.topk_sample_logprobs == 20
    completions = request_params.parse({"model": BASE, "prompt": "x", "logprobs": 3}, chat=False)
    assert completions.logprobs and completions.top_logprobs == completions.topk_sample_logprobs == 3
    plain = request_params.parse({"model": BASE, "prompt": "x", "top_p": 0.5}, chat=False)
    assert not plain.logprobs and plain.topk_sample_logprobs == 0  # nothing extra computed
    off = request_params.parse(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 0}, chat=True
    )
    assert off.topk_sample_logprobs == 0


def test_refused_top_logprobs_reach_the_client_as_a_400_naming_the_field(key):
    messages = [{"role": "user", "content": "hi"}]
    error = _error(_post("chat/completions", {"model": BASE, "messages": messages, "top_logprobs": 3}, key), 400)
    assert error["param"] == "top_logprobs" and "logprobs" in error["message"]
    body = {"model": BASE, "messages": messages, "logprobs": True, "top_logprobs": 21}
    assert _error(_post("chat/completions", body, key), 400)["param"] == "top_logprobs"
    assert _error(_post("completions", {"model": BASE, "prompt": "x", "logprobs": 21}, key), 400)["param"] == "logprobs"
    assert not Operation.objects.exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0]"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ],
)
def test_chat_parameters_outside_what_is_served_are_refused_by_name(body, param):
    with pytest.raises(OaiError) as refused:
        request_params.parse({"model": BASE, "messages": [{"role": "user", "content": "hi"}], **body}, chat=True)
    assert refused.value.status == 400 and refused.value.param == param


def test_parameters_at_their_off_value_and_nulls_pass():
    call = request_params.parse(
        {"model": BASE, "prompt": [1, 2], "presence_penalty": 0, "echo": False, "seed": None, "logprobs": 0},
        chat=False,
    )
    assert call.prompt == [1, 2] and call.seed is None and call.logprobs
    assert call.top_logprobs == 0 and call.topk_sample_logprobs == 1  # the top-1: the model's logprobs
    with pytest.raises(OaiError) as refused:
        request_params.parse({"model": BASE, "prompt": "x", "logprobs": 21}, chat=False)
    assert refused.value.status == 400 and refused.value.param == "logprobs"
    with pytest.raises(OaiError) as refused:
        request_params.parse({"model": BASE, "prompt": ["a", "b"]}, chat=False)
    assert refused.value.param == "prompt"


@pytest.fixture
def words(db):
    return text.tokenizer(BASE)


def test_visible_text_cuts_at_the_stop_string_and_drops_the_end_token(words):
    tokens = words.encode(" the cat sat on the mat", add_special_tokens=False)
    decoded = words.decode(tokens)
    sequence = {"tokens": tokens + [words.eos_token_id], "logprobs": [-0.5] * (len(tokens) + 1), "stop_reason": "stop"}
    whole = text.visible(words, sequence, [])
    assert whole.text == decoded and whole.tokens == tokens and whole.finish_reason == "stop"
    assert len(whole.pieces) == len(whole.logprobs) == len(tokens)

    cut = text.visible(words, {**sequence, "stop_reason": "length"}, [" on"])
    assert cut.text == decoded[: decoded.index(" on")] and cut.finish_reason == "stop"
    assert "".join(cut.pieces) == cut.text and len(cut.logprobs) == len(cut.pieces)

    ran_out = text.visible(words, {"tokens": tokens, "logprobs": [-1.0] * len(tokens), "stop_reason": "length"}, [])
    assert ran_out.finish_reason == "length" and ran_out.text == decoded


def test_visible_carries_each_tokens_alternatives_under_the_models_logprobs(words):
    tokens = words.encode(" the cat sat", add_special_tokens=False)
    other = words.encode(" dog", add_special_tokens=False)[-1]
    sequence = {
        "tokens": tokens,
        "logprobs": [-9.0] * len(tokens),  # the temperature-scaled ones: not what OpenAI shows
        "model_logprobs": [-0.5] * len(tokens),
        "topk_logprobs": [[[t, -0.5], [other, -1.0], [words.eos_token_id, -2.0]] for t in tokens],
        "stop_reason": "length",
    }
    seq = text.visible(words, sequence, [], top_k=3)
    assert seq.logprobs == [-0.5] * len(tokens)
    for piece, top in zip(seq.pieces, seq.top, strict=True):
        assert top[0] == (piece, -0.5)  # the sampled token decoded in context reads as its piece
        assert top[1] == (" dog", -1.0) and top[2] == (words.eos_token, -2.0)
    assert [len(top) for top in text.visible(words, sequence, [], top_k=1).top] == [1] * len(tokens)
    chat = shapes.chat_logprobs(seq)["content"]
    assert [e["top_logprobs"][1] for e in chat] == [{"token": " dog", "logprob": -1.0, "bytes": list(b" dog")}] * 3
    assert all(e["logprob"] == -0.5 and e["bytes"] == list(e["token"].encode()) for e in chat)
    plain = shapes.completion_logprobs(seq, True)
    assert plain["top_logprobs"][1] == {seq.pieces[1]: -0.5, " dog": -1.0, words.eos_token: -2.0}
    assert list(plain["top_logprobs"][1].values()) == [-0.5, -1.0, -2.0]  # most likely first
    streamed = shapes.completion_logprobs(seq, True, 2, 3)
    assert streamed["tokens"] == seq.pieces[2:] and streamed["text_offset"] == [plain["text_offset"][2]]
    assert shapes.completion_logprobs(seq, False)["top_logprobs"] is None
    without = text.visible(words, {k: v for k, v in sequence.items() if "topk" not in k and "model" not in k}, [])
    assert without.logprobs == [-9.0] * len(tokens) and without.top == [[]] * len(tokens)


def test_pieces_join_to_the_decoded_text_across_split_characters(words):
    tokens = words.encode("naïve café ☃ über", add_special_tokens=False)
    pieces = text.text_pieces(words, tokens)
    assert len(pieces) == len(tokens) and "".join(pieces) == words.decode(tokens)


def test_chat_without_a_template_falls_back_to_role_colon(words, monkeypatch):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with_template, stops = text.render_chat(words, messages)
    assert words.decode(with_template) == words.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert stops == []
    monkeypatch.setattr(words, "chat_template", None)
    plain, stops = text.render_chat(words, messages)
    assert words.decode(plain, skip_special_tokens=True) == "System: Be brief.\nUser: Hi\nAssistant:"
    assert stops == ["\nUser:"]


def test_messages_a_chat_template_refuses_are_a_400_naming_messages(words, monkeypatch):
    monkeypatch.setattr(words, "chat_template", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(OaiError) as refused:
        text.render_chat(words, [{"role": "user", "content": "Hi"}])
    assert refused.value.status == 400 and refused.value.param == "messages"
    assert "roles must alternate" in refused.value.message

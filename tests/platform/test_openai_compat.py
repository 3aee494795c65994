"""The OpenAI-compatible endpoint (/oai/api/v1) through the official `openai` client, on a live
server, against an adapter trained (through our SDK) until its greedy output differs from the base
model's. The reference for every sampled answer is our SDK's `sample` / `compute_logprobs` of the
same checkpoint, never the endpoint itself."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput, SamplingParams

COMPLETION_PROMPT = "The cat"
CHAT = [{"role": "user", "content": "Where is the cat?"}]
# the tiny models' chat template, written out: the reference for how the server renders CHAT
CHAT_RENDERED = "<|im_start|>user\nWhere is the cat?<|im_end|>\n<|im_start|>assistant\n"
TARGET = " sat on the warm mat by the door"
MAX_TOKENS = 8
STEPS_PER_CHECK = 4

pytestmark = pytest.mark.slow  # trains an adapter and makes and revokes an API key (about 2-4 minutes on 2 busy cores)


@dataclass
class Trained:
    server: object
    service: lorasmith.ServiceClient
    words: object  # the base model's tokenizer, as the SDK loads it
    path: str  # tinker://RUN/sampler_weights/NAME
    run_id: str
    name: str
    sampler: object  # the SDK's sampler of `path`
    completion_prompt: list[int]
    chat_prompt: list[int]
    base_completion: list[int]  # the base model's greedy tokens
    base_chat: list[int]

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.server.base_url}/oai/api/v1", api_key=api_key or self.server.api_key, max_retries=0
        )

    def greedy(self, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
        return _greedy(self.sampler, prompt, max_tokens)

    def text(self, tokens: list[int]) -> str:
        return self.words.decode(tokens, skip_special_tokens=True)


def _greedy(sampler, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    return _greedy_many(sampler, [prompt], max_tokens)[0]


def _greedy_many(sampler, prompts: list[list[int]], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Sent together (they may share a cycle), then waited for."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    futures = [sampler.sample(ModelInput.from_ints(p), 1, params) for p in prompts]
    return [f.result().sequences[0].tokens for f in futures]


def _datum(prompt: list[int], target: list[int]) -> Datum:
    tokens = prompt + target
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(target)
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


@pytest.fixture(scope="module")
def trained(live_server_embedded) -> Trained:
    """One adapter for the module, trained until greedy decoding of both prompts leaves the base's."""
    service = lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key)
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=5)
    words = training.get_tokenizer()
    prompts = [words.encode(COMPLETION_PROMPT), words.encode(CHAT_RENDERED, add_special_tokens=False)]
    target = words.encode(TARGET, add_special_tokens=False)
    base = service.create_sampling_client(base_model="tiny-llama")
    base_greedy = _greedy_many(base, prompts)
    data = [_datum(p, target) for p in prompts]
    for round_ in range(1, 9):
        steps = []  # pipelined: each request is sent before the previous one's result is awaited
        for _ in range(STEPS_PER_CHECK):
            steps += [
                training.forward_backward(data, "cross_entropy"),
                training.optim_step(AdamParams(learning_rate=3e-2)),
            ]
        for step in steps:
            step.result()
        name = f"oai-{round_ * STEPS_PER_CHECK}"
        path = training.save_weights_for_sampler(name).result().path
        sampler = service.create_sampling_client(model_path=path)
        if all(a != b for a, b in zip(_greedy_many(sampler, prompts), base_greedy, strict=True)):
            break
    else:
        pytest.fail("the adapter's greedy output never left the base model's")
    yield Trained(
        live_server_embedded,
        service,
        words,
        path,
        training.model_id,
        name,
        sampler,
        prompts[0],
        prompts[1],
        base_greedy[0],
        base_greedy[1],
    )
    service.close()


def test_both_endpoints_sample_the_adapter_not_the_base_model(trained):
    """Tinker's open bug: /completions served the base model for a LoRA checkpoint."""
    client = trained.client()
    completion_tokens, chat_tokens = _greedy_many(trained.sampler, [trained.completion_prompt, trained.chat_prompt])
    assert completion_tokens != trained.base_completion and chat_tokens != trained.base_chat

    for model in (trained.path, trained.name):  # the path, and the name /models lists it with
        done = client.completions.create(model=model, prompt=COMPLETION_PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        assert done.object == "text_completion"
        assert done.choices[0].text == trained.text(completion_tokens) != trained.text(trained.base_completion)
        assert done.usage.completion_tokens == len(completion_tokens)
        assert done.usage.prompt_tokens == len(trained.completion_prompt)

        chat = client.chat.completions.create(model=model, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
        assert chat.object == "chat.completion"
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == trained.text(chat_tokens) != trained.text(trained.base_chat)
        assert chat.usage.prompt_tokens == len(trained.chat_prompt)

    by_ids = client.completions.create(
        model=trained.path, prompt=trained.completion_prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    assert by_ids.choices[0].text == trained.text(completion_tokens)
    assert by_ids.choices[0].finish_reason == "length"


def test_models_lists_base_models_and_the_callers_sampler_checkpoints(trained):
    listed = {m.id: m for m in trained.client().models.list().data}
    assert "tiny-llama" in listed
    mine = listed[trained.path]
    assert mine.owned_by == "alice" and mine.model_extra["parent"] == "tiny-llama"
    assert mine.model_extra["name"] == trained.name


def test_streaming_equals_the_non_streamed_answer(trained):
    client = trained.client()
    for chat in (False, True):
        create = client.chat.completions.create if chat else client.completions.create
        asked = {"messages": CHAT} if chat else {"prompt": COMPLETION_PROMPT}
        whole = create(model=trained.path, max_tokens=MAX_TOKENS, temperature=0, **asked)
        chunks = list(
            create(
                model=trained.path,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                **asked,
            )
        )
        if chat:
            assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            expected = whole.choices[0].message.content
        else:
            streamed = "".join(c.choices[0].text for c in chunks if c.choices)
            expected = whole.choices[0].text
        assert streamed == expected
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == [whole.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # the raw stream: Server-Sent Events ending with [DONE]
    with httpx.stream(
        "POST",
        f"{trained.server.base_url}/oai/api/v1/chat/completions",
        headers={"Authorization": f"Bearer {trained.server.api_key}"},
        json={"model": trained.path, "messages": CHAT, "max_tokens": 3, "temperature": 0, "stream": True},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"


def test_n_seed_and_stop(trained):
    client = trained.client()
    kwargs = {"model": trained.path, "prompt": COMPLETION_PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0}
    first = client.completions.create(n=2, seed=11, **kwargs)
    again = client.completions.create(n=2, seed=11, **kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    other = [client.completions.create(n=2, seed=seed, **kwargs) for seed in (12, 13)]
    assert any([c.text for c in o.choices] != [c.text for c in first.choices] for o in other)

    greedy = trained.text(trained.greedy(trained.completion_prompt))
    stop = greedy[len(greedy) // 2 :][:3]
    assert stop.strip(), greedy
    stopped = client.completions.create(
        model=trained.path, prompt=COMPLETION_PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == greedy[: greedy.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_logprobs_equal_compute_logprobs_of_the_returned_tokens(trained):
    client = trained.client()
    for chat in (False, True):
        prompt = trained.chat_prompt if chat else trained.completion_prompt
        tokens = trained.greedy(prompt)
        scored = trained.sampler.compute_logprobs(ModelInput.from_ints(prompt + tokens)).result()
        expected = scored[len(prompt) :]
        if chat:
            answer = client.chat.completions.create(
                model=trained.path, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, logprobs=True
            )
            entries = answer.choices[0].logprobs.content
            got = [e.logprob for e in entries]
            assert "".join(e.token for e in entries) == answer.choices[0].message.content
        else:
            answer = client.completions.create(
                model=trained.path, prompt=COMPLETION_PROMPT, max_tokens=MAX_TOKENS, temperature=0, logprobs=0
            )
            got = answer.choices[0].logprobs.token_logprobs
            assert "".join(answer.choices[0].logprobs.tokens) == answer.choices[0].text
        assert len(got) == len(tokens)
        assert got == pytest.approx(expected, abs=1e-3)


def test_top_logprobs_are_the_models_alternatives_and_stream_the_same(trained):
    """At temperature 0.8 (seeded), so the logprobs shown must be the model's own, not the
    temperature-scaled ones the sampler draws from: equal to compute_logprobs of the tokens that
    our SDK's sample with the same seed returns."""
    client = trained.client()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=11)
    for chat in (True, False):
        prompt = trained.chat_prompt if chat else trained.completion_prompt
        tokens = trained.sampler.sample(ModelInput.from_ints(prompt), 1, params).result().sequences[0].tokens
        scored = trained.sampler.compute_logprobs(ModelInput.from_ints(prompt + tokens)).result()
        expected = scored[len(prompt) :]
        common = {"model": trained.path, "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": 11}
        if chat:
            answer = client.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=3, **common)
            entries = answer.choices[0].logprobs.content
            got = [e.logprob for e in entries]
            tops = [[(t.token, t.logprob) for t in e.top_logprobs] for e in entries]
            assert all(t.bytes == list(t.token.encode()) for e in entries for t in e.top_logprobs)
            pieces = [e.token for e in entries]
            streamed = client.chat.completions.create(
                messages=CHAT, logprobs=True, top_logprobs=3, stream=True, **common
            )
            streamed_entries = [
                e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
            ]
            assert [(e.token, e.logprob, e.top_logprobs) for e in streamed_entries] == [
                (e.token, e.logprob, e.top_logprobs) for e in entries
            ]
        else:
            answer = client.completions.create(prompt=COMPLETION_PROMPT, logprobs=3, **common)
            logprobs = answer.choices[0].logprobs
            got, pieces = logprobs.token_logprobs, logprobs.tokens
            tops = [list(d.items()) for d in logprobs.top_logprobs]
            streamed = client.completions.create(prompt=COMPLETION_PROMPT, logprobs=3, stream=True, **common)
            streamed_tops = [
                d for c in streamed if c.choices and c.choices[0].logprobs for d in c.choices[0].logprobs.top_logprobs
            ]
            assert streamed_tops == logprobs.top_logprobs
        assert len(got) == len(tops) == len(tokens) - (tokens[-1] == trained.words.eos_token_id)
        assert got == pytest.approx(expected[: len(got)], abs=1e-3)  # the model's logprobs at any temperature
        for piece, logprob, top in zip(pieces, got, tops, strict=True):
            values = [lp for _, lp in top]
            assert len(top) == 3 and values == sorted(values, reverse=True)
            assert logprob <= values[0] + 1e-6
            if logprob >= values[-1] + 1e-4:  # the sampled token is among the three: same text, same logprob
                assert (piece, pytest.approx(logprob, abs=1e-5)) in top


def test_access_follows_the_rest_api(trained):
    server = trained.server
    bob = trained.client(server.make_api_key("bob"))
    with pytest.raises(openai.NotFoundError):  # alice's checkpoint is private
        bob.completions.create(model=trained.path, prompt=COMPLETION_PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError):  # nor does her checkpoint's name mean anything to bob
        bob.completions.create(model=trained.name, prompt=COMPLETION_PROMPT, max_tokens=2)
    rest = trained.service.create_rest_client()
    rest.publish_checkpoint(trained.path).result()
    try:
        published = bob.completions.create(
            model=trained.path, prompt=COMPLETION_PROMPT, max_tokens=MAX_TOKENS, temperature=0
        )
        assert published.choices[0].text == trained.text(trained.greedy(trained.completion_prompt))
        listed = {m.id: m for m in bob.models.list().data}
        assert listed[trained.path].owned_by == "alice"  # a published checkpoint bob has used
    finally:
        rest.unpublish_checkpoint(trained.path).result()

    with pytest.raises(openai.AuthenticationError):
        trained.client("tml-not-a-key").models.list()
    no_key = httpx.get(f"{server.base_url}/oai/api/v1/models")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    bob_key = bob.api_key
    by_header = httpx.get(f"{server.base_url}/oai/api/v1/models", headers={"X-API-Key": bob_key})
    assert by_header.status_code == 200
    server._manage("api_keys", "bob", "--revoke", bob_key[:12])
    with pytest.raises(openai.AuthenticationError):
        bob.completions.create(model="tiny-llama", prompt=COMPLETION_PROMPT, max_tokens=2)


def test_refusals_name_what_to_change(trained):
    client = trained.client()
    state_path = trained.path.replace("/sampler_weights/", "/weights/")
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=state_path, prompt=COMPLETION_PROMPT, max_tokens=2)
    assert refused.value.param == "model"
    assert f"tinker://{trained.run_id}/sampler_weights/" in refused.value.message

    for unknown, value in (("frobnicate", 1), ("presence_penalty", 0.5), ("logit_bias", {"5": 1})):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(
                model="tiny-llama", prompt=COMPLETION_PROMPT, max_tokens=2, extra_body={unknown: value}
            )
        assert refused.value.param == unknown and unknown in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=2, tools=[_a_tool()])
    assert refused.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny-llama", prompt=COMPLETION_PROMPT, max_tokens=100_000)
    assert refused.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=COMPLETION_PROMPT, max_tokens=2)


def _a_tool() -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _sampled_for_run(server, run_id: str | None) -> int:
    usage = httpx.get(f"{server.base_url}/api/v1/usage", headers={"X-API-Key": server.api_key}).json()
    return sum(row["tokens_sampled"] for row in usage["per_run"] if row["run_id"] == run_id)


def test_usage_counts_the_sampled_tokens_under_the_checkpoints_run(trained):
    client = trained.client()
    before = _sampled_for_run(trained.server, trained.run_id)
    before_no_run = _sampled_for_run(trained.server, None)
    answers = [
        client.completions.create(model=trained.path, prompt=COMPLETION_PROMPT, max_tokens=5, n=2, seed=1),
        client.chat.completions.create(model=trained.name, messages=CHAT, max_tokens=4, temperature=0),
    ]
    on_base = client.completions.create(model="tiny-llama", prompt=COMPLETION_PROMPT, max_tokens=3, seed=1)
    sampled = sum(a.usage.completion_tokens for a in answers)
    assert sampled > 0 and on_base.usage.completion_tokens > 0
    assert _sampled_for_run(trained.server, trained.run_id) - before == sampled
    assert _sampled_for_run(trained.server, None) - before_no_run == on_base.usage.completion_tokens  # no run

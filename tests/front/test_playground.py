"""The sampling playground on a checkpoint: the prompt goes through the base model's tokenizer and
the API's own intake (so it is refused for the same reasons), the output shows each token with its
logprob; only the owner (or anyone, once published) may sample, and only their own samples show."""

from __future__ import annotations

import html
import re

from accounts.models import ApiKey
from front.playground import tokenizer
from training.models import Operation, SamplingSession, UsageRecord

from .conftest import make_checkpoint, make_run


def _trained_checkpoint(wire):
    """A run with one sampler checkpoint saved by the runner (real adapter weights)."""
    model_id = wire.model(wire.session())
    saved = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "s1"}))
    return saved["path"], f"/runs/{model_id}/checkpoints/sampler_weights/s1/playground/"


def test_form_and_empty_state(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "s1")
    page = browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/").content.decode()
    assert 'id="no-sample"' in page and 'name="prompt"' in page and 'for="id_temperature"' in page


def test_a_sample_is_tokenized_queued_like_the_api_and_shown_with_logprobs(browser, alice, api_of, runner, data_dir):
    wire, _ = api_of(alice)
    path, url = _trained_checkpoint(wire)
    prompt = "Once upon a time"

    answer = browser.post(
        url, {"prompt": prompt, "max_tokens": 5, "temperature": 0, "top_p": 1, "top_k": -1, "num_samples": 2}
    )

    assert answer.status_code == 302
    op = Operation.objects.get(kind="sample", owner=alice)
    assert answer["Location"] == f"{url}?request={op.id}"
    assert op.payload["prompt"] == tokenizer("tiny-llama").encode(prompt)  # the base model's own tokenizer
    assert op.sampling_session.model_path == path and op.api_key is None
    page = browser.get(answer["Location"]).content.decode()
    assert op.status == "done" or Operation.objects.get(pk=op.pk).status == "done"
    result = Operation.objects.get(pk=op.pk).result
    logprobs = re.findall(r'class="token" tabindex="0" data-logprob="([^"]+)"', page)
    expected = [f"{lp:.4g}" for s in result["sequences"] for lp in s["logprobs"]]
    assert logprobs == expected and len(expected) == sum(len(s["tokens"]) for s in result["sequences"])
    assert page.count('class="sequence"') == 2 and html.escape(prompt) in page
    assert 'value="5"' in page  # the form keeps what was asked
    assert UsageRecord.objects.get(operation=op).tokens_sampled == len(expected)  # counted, under no key


def test_the_intakes_refusal_is_shown_on_the_form(browser, alice, api_of, runner, data_dir):
    wire, _ = api_of(alice)
    _, url = _trained_checkpoint(wire)
    long_prompt = "word " * 1000  # 3,000 tokens, past tiny-llama's context of 512: the intake says so
    page = browser.post(
        url, {"prompt": long_prompt, "max_tokens": 5, "temperature": 1, "top_p": 1, "top_k": -1, "num_samples": 1}
    )
    text = page.content.decode()
    assert page.status_code == 200 and 'class="errors" role="alert"' in text and "512" in text
    assert not Operation.objects.filter(kind="sample").exists()


def test_form_errors_name_the_field(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "s1")
    url = f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/"
    page = browser.post(
        url, {"prompt": "", "max_tokens": 0, "temperature": 1, "top_p": 2, "top_k": -1, "num_samples": 1}
    )
    text = page.content.decode()
    assert page.status_code == 200 and text.count('class="error"') == 3  # prompt, max_tokens, top_p


def test_another_users_checkpoint_and_samples_are_404(browser, alice, bob, api_of, runner, data_dir):
    theirs, _ = api_of(bob)
    _, url = _trained_checkpoint(theirs)
    assert browser.get(url).status_code == 404
    assert browser.post(url, {"prompt": "hi"}).status_code == 404

    mine, _ = api_of(alice)
    _, my_url = _trained_checkpoint(mine)
    sampler = theirs.sampler(theirs.session())
    their_sample = theirs.post("asample", theirs.sample_body(sampler))
    assert browser.get(f"{my_url}?request={their_sample['request_id']}").status_code == 404


def test_a_published_checkpoint_may_be_sampled_by_anyone(browser, alice, bob, data_dir):
    run = make_run(bob)
    make_checkpoint(run, "s1", public=True)
    assert browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/").status_code == 200


def test_external_checkpoints_are_not_for_sampling(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "e1", kind="external")
    assert browser.get(f"/runs/{run.id}/checkpoints/external_weights/e1/playground/").status_code == 404


def test_a_pending_sample_asks_to_be_refreshed(browser, alice, api_of, data_dir):
    run = make_run(alice)
    checkpoint = make_checkpoint(run, "s1")
    url = f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/"
    browser.post(url, {"prompt": "hi", "max_tokens": 3, "temperature": 1, "top_p": 1, "top_k": -1, "num_samples": 1})
    op = Operation.objects.get(kind="sample")  # no runner here: it stays queued
    assert op.sampling_session.model_path == checkpoint.tinker_path
    page = browser.get(f"{url}?request={op.id}").content.decode()
    assert 'id="sample-pending"' in page and f'data-refresh="{url}?request={op.id}&amp;fragment=1"' in page
    fragment = browser.get(f"{url}?request={op.id}&fragment=1").content.decode()
    assert 'id="sample-pending"' in fragment and "<html" not in fragment


def test_one_dashboard_session_and_sampler_are_reused(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "s1")
    url = f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/"
    for _ in range(2):
        browser.post(
            url, {"prompt": "hi", "max_tokens": 3, "temperature": 1, "top_p": 1, "top_k": -1, "num_samples": 1}
        )
    samples = Operation.objects.filter(kind="sample")
    assert samples.count() == 2 and len({op.sampling_session_id for op in samples}) == 1
    assert not ApiKey.objects.exists()


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/runs/r/checkpoints/sampler_weights/s/playground/")["Location"].startswith("/accounts/login/")


def test_a_training_checkpoint_is_refused_when_its_sampler_is_made(browser, alice, api_of, runner, data_dir):
    """weights/… holds training state, not sampler weights: the API refuses the sampler with a 400
    naming model_path and the sampler_weights alternative, and the playground shows that refusal
    (and links no playground for it) instead of queueing samples that would all fail."""
    wire, _ = api_of(alice)
    session = wire.session()
    model_id = wire.model(session)
    saved = wire.result(wire.post("save_weights", {"model_id": model_id, "seq_id": 1, "path": "state1"}))
    assert "/weights/state1" in saved["path"]

    refused = wire.send(
        "create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0, "model_path": saved["path"]}
    )

    assert refused.status_code == 400 and refused.json()["field"] == "model_path"
    assert "sampler_weights" in refused.json()["error"] and "save_weights_for_sampler" in refused.json()["error"]
    url = f"/runs/{model_id}/checkpoints/weights/state1/playground/"
    page = browser.post(
        url, {"prompt": "hi", "max_tokens": 2, "temperature": 0, "top_p": 1, "top_k": -1, "num_samples": 1}
    )
    assert page.status_code == 200 and "sampler_weights" in html.unescape(page.content.decode())
    assert not Operation.objects.filter(kind="sample").exists()
    assert "playground" not in browser.get("/checkpoints/").content.decode().split("<tbody>")[1]


# ---- stop sequences, the prompt-format hint, visible whitespace, errors that keep the output ----

FORM = {"max_tokens": 12, "temperature": 0, "top_p": 1, "top_k": -1, "num_samples": 1}


def test_stop_sequences_are_sent_unescaped_and_shown_back_escaped(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "s1")
    url = f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/"

    answer = browser.post(url, {"prompt": "hi", **FORM, "stop": "\\n\r\nUser:\r\n\\t\\\\"})

    op = Operation.objects.get(kind="sample")
    assert op.payload["sampling_params"]["stop"] == ["\n", "User:", "\t\\"]
    page = browser.get(answer["Location"]).content.decode()
    textarea = re.search(r'<textarea name="stop"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    assert html.unescape(textarea).strip("\r\n").splitlines() == ["\\n", "User:", "\\t\\\\"]


def test_a_stop_sequence_ends_the_sample_where_it_appears(browser, alice, api_of, runner, data_dir):
    wire, _ = api_of(alice)
    _, url = _trained_checkpoint(wire)
    free = browser.post(url, {"prompt": "Once upon a time", **FORM})
    unstopped = Operation.objects.get(pk=free["Location"].split("request=")[1]).result["sequences"][0]
    words = tokenizer("tiny-llama")
    pieces = [words.decode([t]) for t in unstopped["tokens"]]
    cut = next(i for i in range(3, len(pieces)) if pieces[i].strip() and pieces[i] not in "".join(pieces[:i]))

    stopped = browser.post(url, {"prompt": "Once upon a time", **FORM, "stop": pieces[cut]})

    sequence = Operation.objects.get(pk=stopped["Location"].split("request=")[1]).result["sequences"][0]
    assert sequence["stop_reason"] == "stop"
    assert sequence["tokens"] == unstopped["tokens"][: cut + 1]  # greedy: the same tokens, up to the stop


def _sample_row(checkpoint, tokens: list[int], **params) -> Operation:
    """A finished sample of `checkpoint` with the given tokens, made as rows (no runner)."""
    run = checkpoint.training_run
    sampler = SamplingSession.objects.create(
        id=SamplingSession.make_id(run.session_id, 0),
        session=run.session,
        owner=run.owner,
        base_model=run.base_model,
        model_path=checkpoint.tinker_path,
    )
    payload = {"prompt": tokenizer("tiny-llama").encode("hi"), "num_samples": 1, "sampling_params": params}
    result = {"sequences": [{"tokens": tokens, "logprobs": [-0.5] * len(tokens), "stop_reason": "length"}]}
    op = Operation.of_sampler(sampler, 0, payload, status="done", result=result)
    op.save(force_insert=True)
    return op


def test_whitespace_tokens_are_visible_in_the_output(browser, alice, data_dir):
    run = make_run(alice)
    checkpoint = make_checkpoint(run, "s1")
    words = tokenizer("tiny-llama")
    newline, tab, space = (words.encode(c)[0] for c in ("\n", "\t", " "))
    assert [words.decode([t]) for t in (newline, tab, space)] == ["\n", "\t", " "]
    op = _sample_row(checkpoint, [newline, tab, space, *words.encode("ok")])

    page = browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/?request={op.id}").content.decode()

    cells = re.findall(r'<td><code class="token-text">(.*?)</code></td>', page)
    assert cells[:3] == ["↵", "→", "·"] and "".join(cells[3:]) == "ok"
    inline = re.findall(r'<span class="token"[^>]*>(.*?)</span>', page, re.S)
    assert inline[:2] == ["↵\n", "→\t"]  # marked, and the newline still breaks the line


def test_an_invalid_form_keeps_the_output_shown_before(browser, alice, api_of, runner, data_dir):
    wire, _ = api_of(alice)
    _, url = _trained_checkpoint(wire)
    shown = browser.post(url, {"prompt": "Once upon a time", **FORM})["Location"]
    page = browser.get(shown).content.decode()
    action = re.search(r'<form method="post" action="([^"]+)" class="playground-form"', page).group(1)
    assert html.unescape(action) == shown  # the form posts back to the output's own URL

    for refused in ({"prompt": "again", **FORM, "max_tokens": 0}, {"prompt": "word " * 1000, **FORM}):
        again = browser.post(html.unescape(action), refused).content.decode()
        assert 'class="error"' in again or 'class="errors" role="alert"' in again
        assert again.count('class="sequence"') == 1 and "Once upon a time" in again  # the last output stays
    assert Operation.objects.filter(kind="sample").count() == 1


def _hint(browser, run) -> tuple[str, str, str]:
    make_checkpoint(run, "s1")
    page = browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/s1/playground/").content.decode()
    template = html.unescape(re.search(r'<pre class="format-template" id="format-template">(.*?)</pre>', page, re.S)[1])
    stop = html.unescape(re.search(r'<textarea name="stop"[^>]*>(.*?)</textarea>', page, re.S)[1]).strip("\r\n")
    return template, stop, page


def test_the_format_hint_follows_the_runs_renderer(browser, alice, data_dir):
    words = tokenizer("tiny-llama")
    chat = words.apply_chat_template(
        [{"role": "user", "content": "{your text}"}], tokenize=False, add_generation_prompt=True
    )
    visible = chat.replace("\n", "↵").replace(" ", "·").replace("{your·text}", "{your text}")

    template, stop, page = _hint(browser, make_run(alice))  # no renderer named: the chat template
    assert template == visible and stop == "" and "<code>chat_template</code>" in page
    assert (
        "No renderer named" in page
        and "Answers end with <code>&lt;|im_end|&gt;</code>, the model's end of sequence" in page
    )

    template, stop, _ = _hint(browser, make_run(alice, user_metadata={"renderer": "completion", "recipe": "sl"}))
    assert template == f"{words.bos_token}{{your text}}" and stop == "\\n"  # the completion renderer's

    template, stop, _ = _hint(browser, make_run(alice, user_metadata={"renderer_name": "role_colon"}))
    assert template == f"{words.bos_token}User:·{{your text}}↵Assistant:" and stop == "\\nUser:"


def test_the_format_buttons_prefix_and_suffix_rebuild_the_renderers_prompt(browser, alice, data_dir):
    from cookbook.renderers import get_renderer

    words = tokenizer("tiny-llama")
    _, _, page = _hint(browser, make_run(alice, user_metadata={"renderer": "role_colon"}))
    button = re.search(r'id="apply-format" data-prefix="([^"]*)" data-suffix="([^"]*)"', page)
    typed = html.unescape(button[1]) + "Hello there" + html.unescape(button[2])
    expected = get_renderer("role_colon", words).build_generation_prompt([{"role": "user", "content": "Hello there"}])
    assert words.encode(typed, add_special_tokens=True) == expected.to_ints()

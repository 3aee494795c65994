"""Usage is recorded as operations finish, per run, per API key and per day, and GET /api/v1/usage
answers it: every number equals a count made here from the requests sent (model_input tokens) and
the answers received (sampled tokens), never read back from the records themselves."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from tests.platform.wire import datum_json, prompt_json
from training.models import Operation, UsageRecord

from .conftest import make_run

SEQUENCES = [[3, 320, 265, 203, 44], [3, 17, 99], [3, 5, 6, 7, 8, 9, 10, 11]]


def _data(sequences):
    return [datum_json(s) for s in sequences]


def _input_tokens(sequences) -> int:
    return sum(len(s) - 1 for s in sequences)  # datum_json: model_input = s[:-1], targets = s[1:]


def _train(wire, model_id, seq, sequences, forward_only=False):
    path = "forward" if forward_only else "forward_backward"
    return wire.result(wire.post(path, wire.forward_backward_body(model_id, seq, _data(sequences))))


def test_usage_counts_equal_the_tokens_sent_and_sampled(alice, api_of, runner):
    wire, key = api_of(alice, "laptop")
    model_id = wire.model(wire.session())
    _train(wire, model_id, 1, SEQUENCES)
    _train(wire, model_id, 2, SEQUENCES[:2])
    wire.result(wire.optim_step(model_id, 3))
    _train(wire, model_id, 4, SEQUENCES[2:], forward_only=True)
    sampler = wire.sampler(wire.session())
    sample = wire.result(wire.post("asample", {**wire.sample_body(sampler, 0, max_tokens=6), "num_samples": 3}))
    sampled = sum(len(s["tokens"]) for s in sample["sequences"])
    assert len(sample["sequences"]) == 3 and sampled > 0

    answer = wire.get("usage")

    trained, forward = _input_tokens(SEQUENCES) + _input_tokens(SEQUENCES[:2]), _input_tokens(SEQUENCES[2:])
    expected = {"tokens_trained": trained, "tokens_forward": forward, "tokens_sampled": sampled, "optimizer_steps": 1}
    assert answer["totals"] == expected
    today = timezone.now().date().isoformat()
    assert answer["last_day"] == today and len(answer["per_day"]) == 30
    assert [d for d in answer["per_day"] if d["day"] == today] == [{"day": today, **expected}]
    assert {r["run_id"]: r["tokens_trained"] for r in answer["per_run"]} == {model_id: trained, None: 0}
    assert [(k["key_prefix"], k["key_name"], k["tokens_sampled"]) for k in answer["per_api_key"]] == [
        (key.prefix, "laptop", sampled)
    ]


def _sampled_tokens(wire, sampler) -> int:
    sample = wire.result(wire.post("asample", {**wire.sample_body(sampler, 0, max_tokens=5), "num_samples": 2}))
    return sum(len(s["tokens"]) for s in sample["sequences"])


def test_sampling_a_runs_own_checkpoint_is_that_runs_usage(alice, bob, api_of, runner):
    """An RL loop samples its run's latest weights: that sampling is part of the run's cost. Another
    user sampling the same checkpoint once it is published is charged, but not to a run of alice's."""
    wire, _ = api_of(alice)
    session = wire.session()
    model_id = wire.model(session)
    _train(wire, model_id, 1, SEQUENCES[:1])
    path = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 2, "path": "s1"}))["path"]
    own = _sampled_tokens(wire, wire.sampler(session, 0, model_path=path))
    base = _sampled_tokens(wire, wire.sampler(session, 1))
    wire.post(f"training_runs/{model_id}/checkpoints/sampler_weights/s1/publish", {})
    theirs, _ = api_of(bob)
    shared = _sampled_tokens(theirs, theirs.sampler(theirs.session(), 0, model_path=path))

    assert own > 0 and base > 0 and shared > 0
    mine = {r["run_id"]: r["tokens_sampled"] for r in wire.get("usage")["per_run"]}
    assert mine == {model_id: own, None: base}
    assert {r["run_id"]: r["tokens_sampled"] for r in theirs.get("usage")["per_run"]} == {None: shared}


def test_an_rl_loops_ephemeral_samplers_count_for_its_run(alice, api_of, runner):
    """save_weights_and_get_sampling_client: an unnamed save_weights_for_sampler gives a sampler on a
    snapshot of the run's weights (no checkpoint path); what it samples is the run's usage."""
    wire, _ = api_of(alice)
    session = wire.session()
    model_id = wire.model(session)
    _train(wire, model_id, 1, SEQUENCES[:1])
    saved = wire.result(
        wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 2, "sampling_session_seq_id": 7})
    )
    assert saved["path"] is None
    own = _sampled_tokens(wire, saved["sampling_session_id"])
    base = _sampled_tokens(wire, wire.sampler(session, 1))

    assert own > 0 and base > 0
    assert {r["run_id"]: r["tokens_sampled"] for r in wire.get("usage")["per_run"]} == {model_id: own, None: base}


def test_each_key_is_charged_what_it_sent(alice, api_of, runner):
    laptop, laptop_key = api_of(alice, "laptop")
    ci, ci_key = api_of(alice, "ci")
    model_id = laptop.model(laptop.session())
    _train(laptop, model_id, 1, SEQUENCES)
    _train(ci, model_id, 2, SEQUENCES[:1])  # the same run, through the other key
    ci.result(ci.optim_step(model_id, 3))

    per_key = {k["key_prefix"]: k for k in laptop.get("usage")["per_api_key"]}

    assert per_key[laptop_key.prefix]["tokens_trained"] == _input_tokens(SEQUENCES)
    assert per_key[ci_key.prefix]["tokens_trained"] == _input_tokens(SEQUENCES[:1])
    assert (per_key[laptop_key.prefix]["optimizer_steps"], per_key[ci_key.prefix]["optimizer_steps"]) == (0, 1)


def test_nothing_is_recorded_for_failed_or_tokenless_operations(alice, api_of, runner, settings):
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, test_hooks=True)
    wire, _ = api_of(alice)
    session = wire.session()
    model_id = wire.model(session)
    wire.result(wire.post("save_weights", {"model_id": model_id, "seq_id": 1, "path": "w"}))
    failing = wire.model(session, seq=1, force_runner_failure="yes")
    assert "error" in _train(wire, failing, 1, SEQUENCES)

    assert wire.get("usage")["totals"]["tokens_trained"] == 0
    assert UsageRecord.objects.count() == 0
    assert Operation.objects.filter(owner=alice, status="done").count() == 3  # two creates and a save


def test_another_users_usage_is_not_counted(alice, bob, api_of, runner):
    mine, _ = api_of(alice)
    theirs, _ = api_of(bob)
    model_id = theirs.model(theirs.session())
    _train(theirs, model_id, 1, SEQUENCES)
    assert mine.get("usage")["totals"] == dict.fromkeys(
        ("tokens_trained", "tokens_forward", "tokens_sampled", "optimizer_steps"), 0
    )
    assert mine.get("usage")["per_run"] == []


def test_days_window_and_older_records(alice, api_of):
    wire, key = api_of(alice)
    run = make_run(alice)
    old = timezone.now().date() - timedelta(days=10)
    UsageRecord.objects.create(
        owner=alice, api_key=key, training_run=run, base_model="tiny-llama", day=old, tokens_trained=7
    )
    assert wire.get("usage?days=7")["totals"]["tokens_trained"] == 0
    answer = wire.get("usage?days=11")
    assert answer["totals"]["tokens_trained"] == 7 and answer["first_day"] == old.isoformat()


def test_bad_days_is_a_400_naming_the_field(alice, api_of):
    wire, _ = api_of(alice)
    for days in ("0", "367", "x"):
        assert wire.get(f"usage?days={days}", expect=400)["field"] == "days"


def test_a_key_is_needed(db):
    assert APIClient().get("/api/v1/usage").status_code == 401


def test_prompt_json_is_what_datum_json_sends():
    """The counting above assumes datum_json's model_input is the sequence minus its last token."""
    assert datum_json([1, 2, 3])["model_input"] == prompt_json([1, 2])

"""RestClient against the live server: runs, checkpoints, publish, TTL, delete, weights info; the
tokenizer the server names; state round trips through save_state / load_state."""

from __future__ import annotations

import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput

from .reference import SEQUENCE


def _datum() -> Datum:
    return Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})


def test_rest_client_manages_runs_and_checkpoints(service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=2, user_metadata={"purpose": "rest"})
    state = training.save_state("s1", user_metadata={"epoch": "1"}).result().path
    sampler = training.save_weights_for_sampler("w1").result().path
    rest = service.create_rest_client()

    runs = rest.list_training_runs(limit=100).result()
    assert training.model_id in [r["training_run_id"] for r in runs["training_runs"]]
    assert runs["cursor"]["total_count"] >= 1
    assert service.session_id in rest.list_sessions(limit=5).result()["sessions"]
    assert training.model_id in rest.get_session(service.session_id).result()["training_run_ids"]
    run = rest.get_training_run(training.model_id).result()
    assert (run["lora_rank"], run["user_metadata"]) == (4, {"purpose": "rest"})
    listed = {c["tinker_path"]: c for c in rest.list_checkpoints(training.model_id).result()["checkpoints"]}
    assert {state, sampler} <= set(listed)
    assert listed[sampler]["checkpoint_type"] == "sampler"
    assert (listed[state]["user_metadata"], listed[sampler]["user_metadata"]) == ({"epoch": "1"}, None)
    assert sampler in [c["tinker_path"] for c in rest.list_user_checkpoints().result()["checkpoints"]]

    rest.publish_checkpoint(sampler).result()
    assert _checkpoint(rest, training.model_id, sampler)["public"] is True
    rest.unpublish_checkpoint(sampler).result()
    assert _checkpoint(rest, training.model_id, sampler)["public"] is False
    rest.set_checkpoint_ttl(sampler, 3600).result()
    assert _checkpoint(rest, training.model_id, sampler)["expires_at"] is not None

    info = rest.get_weights_info(sampler).result()
    assert (info["base_model"], info["lora_rank"]) == ("tiny-llama", 4)
    assert rest.get_checkpoint_archive_url(sampler).result()["url"].startswith("http")

    assert rest.get_training_run_by_tinker_path(sampler).result()["training_run_id"] == training.model_id
    rest.delete_checkpoint(sampler).result()
    with pytest.raises(lorasmith.NotFoundError):
        rest.get_weights_info(sampler).result()
    rest.delete_checkpoint(training.model_id, "weights/s1").result()  # Tinker's (run_id, checkpoint_id) form
    with pytest.raises(lorasmith.NotFoundError):
        rest.get_weights_info_by_tinker_path(state).result()
    with pytest.raises(lorasmith.LorasmithError, match="not a checkpoint path"):
        rest.delete_checkpoint("weights/nothing")


def test_state_round_trip_and_capabilities(service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=9)
    training.forward_backward([_datum()]).result()
    training.optim_step(AdamParams(learning_rate=1e-2)).result()
    path = training.save_state("trained").result().path
    trained_loss = training.forward([_datum()]).result().metrics["loss:sum"]

    restored = service.create_training_client_from_state(path)
    assert restored.model_id != training.model_id
    assert restored.forward([_datum()]).result().metrics["loss:sum"] == pytest.approx(trained_loss, rel=1e-5)

    fresh = service.create_lora_training_client("tiny-llama", rank=4, seed=9)
    fresh.load_state_with_optimizer(path).result()
    assert fresh.forward([_datum()]).result().metrics["loss:sum"] == pytest.approx(trained_loss, rel=1e-5)

    models = [m["model_name"] for m in service.get_server_capabilities()["supported_models"]]
    assert "tiny-llama" in models


def test_tokenizer_comes_from_the_server(service, tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_CACHE", str(tmp_path))
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=1)
    tokenizer = training.get_tokenizer()
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    assert ids and tokenizer.decode(ids).strip() == "hello world"
    sampler = service.create_sampling_client(base_model="tiny-llama")
    assert sampler.get_tokenizer().encode("hello world", add_special_tokens=False) == ids


def _checkpoint(rest, run_id: str, path: str) -> dict:
    return next(c for c in rest.list_checkpoints(run_id).result()["checkpoints"] if c["tinker_path"] == path)


def test_tinker_call_styles_and_refused_options(service):
    """Code written for Tinker: client factories used as futures, its extra keyword arguments;
    options this server does not implement are refused by name, never silently ignored."""
    training = service.create_lora_training_client("tiny-llama", rank=2).result()
    sampler = training.save_weights_and_get_sampling_client(record_stability_info=False)
    assert sampler.result() is sampler
    assert service.create_rest_client().get_sampler(sampler.sampling_session_id).result()["base_model"] == "tiny-llama"
    with pytest.raises(lorasmith.BadRequestError, match="age encryption") as refused:
        training.save_weights_external("enc", age_encryption_recipients=["age1xyz"]).result()
    assert refused.value.field == "age_encryption_recipients"
    saved = training.save_state("again").result().path
    assert training.save_state("again", overwrite=True).result().path == saved
    greedy = lorasmith.SamplingParams(max_tokens=2, temperature=0.0)
    (seq,) = sampler.sample(ModelInput.from_ints(SEQUENCE[:4]), 1, greedy, topk_sample_logprobs=3).result().sequences
    assert [len(row) for row in seq.topk_logprobs] == [3, 3] and [row[0][0] for row in seq.topk_logprobs] == seq.tokens
    assert [row[0][1] for row in seq.topk_logprobs] == pytest.approx(seq.logprobs, abs=1e-5)  # greedy: the top-1
    plain = sampler.sample(ModelInput.from_ints(SEQUENCE[:4]), 1, greedy).result().sequences[0]
    assert plain.topk_logprobs is None and plain.tokens == seq.tokens
    with pytest.raises(lorasmith.BadRequestError) as refused:
        sampler.sample(
            ModelInput.from_ints(SEQUENCE[:4]), 1, lorasmith.SamplingParams(max_tokens=1), topk_sample_logprobs=101
        ).result()
    assert refused.value.field == "topk_sample_logprobs"

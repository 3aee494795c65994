"""The official `tinker` client's sampling options, a DPO step and checkpoint management, all
against a live Lorasmith (issue 12): prompt / top-k / target prompt logprobs agree with the
trainer's forward pass, seeds, stop tokens and strings, `stop: []`; DPO through
`forward_backward_custom` from a frozen reference; a checkpoint fetched the 0.38.0 way loads in
`peft` and scores as the trainer did; the `tinker checkpoint` CLI lists, sets TTL, publishes,
downloads and deletes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_runner import describe_base_model

from .conftest import run_tinker, run_tinker_process


@pytest.fixture(scope="module")
def report(tinker_python, live_server_embedded, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tinker-sampling")
    return run_tinker(tinker_python, live_server_embedded, "sampling_and_checkpoints.py", str(out))


@pytest.fixture(scope="module")
def base_dir(live_server_embedded) -> str:
    return describe_base_model("tiny-llama", live_server_embedded.data_dir).model_dir


def test_prompt_and_topk_logprobs_are_the_trainers(report):
    forward = report["forward_logprobs"]  # the trainer scoring prompt token i+1 at position i
    assert report["prompt_logprobs"][0] is None
    assert report["prompt_logprobs"][1:] == pytest.approx(forward, abs=1e-3)
    topk = report["topk_prompt_logprobs"]
    assert topk[0] is None
    for position, row in enumerate(topk[1:], start=1):
        values = [lp for _, lp in row]
        assert len(row) == 3 and values == sorted(values, reverse=True)
        actual = report["asked"][position - 1][0]
        assert values[0] >= forward[position - 1] - 1e-4
        for token, lp in row:
            if token == actual:
                assert lp == pytest.approx(forward[position - 1], abs=1e-3)


def test_topk_sample_logprobs_are_the_models_alternatives_at_each_sampled_position(report):
    """Sampled at temperature 0.7, the top-3 are the model's own distribution's (before temperature):
    the prompt scorer's top-3 at the same positions of prompt + sampled tokens. A sample that does not
    ask gets None."""
    sampled, rescored = report["topk_sampled"], report["topk_rescored"]
    assert report["plain_topk"] is None
    assert len(sampled) == len(rescored) == len(report["topk_sampled_tokens"]) == 5
    for row, reference in zip(sampled, rescored, strict=True):
        values = [lp for _, lp in row]
        assert len(row) == 3 and values == sorted(values, reverse=True)
        assert values == pytest.approx([lp for _, lp in reference], abs=1e-3)
        assert {t for t, _ in row} == {t for t, _ in reference} or len(set(values)) < 3  # ties may swap ids


def test_target_prompt_logprobs_dense_and_sparse(report):
    forward, topk = report["forward_logprobs"], report["topk_prompt_logprobs"]
    dense = report["dense_target"]
    assert len(dense) == len(forward) and all(len(row) == 3 for row in dense)
    for i, (actual, favourite, nothing) in enumerate(dense):
        assert actual == pytest.approx(forward[i], abs=1e-3)
        assert favourite == pytest.approx(topk[i + 1][0][1], abs=1e-3)
        assert nothing == 0.0  # a -1 cell asks nothing
    assert report["sparse_asked_sent_as_csr"]
    sparse = report["sparse_target"]
    assert [row[0] for row in sparse] == pytest.approx(forward, abs=1e-3)
    assert all(row[1:] == [0.0] * 7 for row in sparse)


def test_seeds_num_samples_and_stops(report, base_dir):
    drawn = report["drawn"]
    assert report["again"] == drawn and len(drawn) == 3  # the same seed draws the same samples
    assert len({tuple(tokens) for tokens in drawn}) == 3
    first = drawn[0]
    # a stop token ends the sample at its first occurrence, included
    assert report["by_token"] == first[: first.index(report["stop_token"]) + 1]
    assert report["by_token_reason"] == "stop"
    # stop: [] turns every stop off, EOS included: max_tokens, on the same draw
    assert report["no_stops"] == first and report["no_stops_reason"] == "length"
    # a stop string ends the sample at the token that completes it
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    stopped = report["by_string"]
    assert stopped == first[: len(stopped)] and report["by_string_reason"] == "stop"
    assert report["stop_string"] in tokenizer.decode(stopped)
    assert report["stop_string"] not in tokenizer.decode(stopped[:-1])


def test_a_dpo_step_through_forward_backward_custom(report):
    dpo = report["dpo"]
    # policy = reference at the start: margin 0, loss log 2; the trainer agrees with the sampler
    assert dpo["step_metrics"]["loss:sum"] == pytest.approx(math.log(2), abs=1e-4)
    assert dpo["step_metrics"]["dpo/chosen:mean"] == pytest.approx(dpo["ref_chosen"], abs=1e-3)
    assert dpo["margin_after"] > 0.5  # one step moved the policy toward the chosen answer


def _peft_completion_logprob(base_dir: str, adapter_dir: Path, tokens: list[int], prompt_length: int) -> float:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1)
    return float(logprobs[prompt_length - 1 :].sum())


def test_an_external_checkpoint_fetched_the_tinker_way_loads_in_peft(report, base_dir):
    assert report["files"] == ["adapter_config.json", "adapter_model.safetensors"]
    dpo = report["dpo"]
    scored = _peft_completion_logprob(
        base_dir, Path(report["out_dir"]) / "external", dpo["chosen_tokens"], dpo["prompt_length"]
    )
    assert scored == pytest.approx(dpo["after_chosen"], abs=1e-3)


def test_the_checkpoint_cli(report, tinker_python, live_server_embedded, tmp_path):
    def tinker(*args: str):
        done = run_tinker_process(tinker_python, live_server_embedded, ["-m", "tinker.cli", "-f", "json", *args])
        return json.loads(done.stdout) if done.stdout.strip() else None

    state, external = report["state_path"], report["external_path"]
    listed = tinker("checkpoint", "list", "--run-id", report["model_id"])
    assert {c["tinker_path"] for c in listed["checkpoints"]} == {state, external}
    tinker("checkpoint", "set-ttl", state, "--ttl", "7200")
    tinker("checkpoint", "publish", state)
    info = tinker("checkpoint", "info", state)
    assert info["public"] is True and info["expires_at"] is not None and info["lora_rank"] == 8
    downloaded = tinker("checkpoint", "download", state, "-o", str(tmp_path))
    weights = load_file(str(Path(downloaded["destination"]) / "adapter_model.safetensors"))
    exported = load_file(str(Path(report["out_dir"]) / "external" / "adapter_model.safetensors"))
    assert weights.keys() == exported.keys()
    for name, tensor in exported.items():  # saved from the same weights, one step apart in seq
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)
    tinker("checkpoint", "unpublish", state)
    assert tinker("checkpoint", "info", state)["public"] is False
    assert tinker("checkpoint", "delete", "-y", external)["deleted_count"] == 1
    listed = tinker("checkpoint", "list", "--run-id", report["model_id"])
    assert [c["tinker_path"] for c in listed["checkpoints"]] == [state]

"""Tinker code, unchanged: run with `.venv-tinker/bin/python` (the official `tinker` 0.38.0) and
TINKER_BASE_URL / TINKER_API_KEY pointing at a Lorasmith server. `sync` or `async` as argument;
prints one line `RESULT <json>` with what the test checks.

Nothing here imports Lorasmith: this is what a Tinker user's script looks like.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import tinker
from tinker import types

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3, 334, 87, 485, 88, 203, 41, 77]
STEPS = 5
LR = 1e-2
DATUM = types.Datum(
    model_input=types.ModelInput.from_ints(SEQUENCE[:-1]),
    loss_fn_inputs={
        "target_tokens": np.array(SEQUENCE[1:], dtype=np.int64),
        "weights": np.ones(len(SEQUENCE) - 1, dtype=np.float32),
    },
)
BAD_DATUM = types.Datum(  # a token past the tiny models' 1024-token vocabulary
    model_input=types.ModelInput.from_ints([3, 5000, 4]),
    loss_fn_inputs={"target_tokens": np.array([5000, 4, 3], dtype=np.int64)},
)
PROMPT = types.ModelInput.from_ints(SEQUENCE)
COMPLETION = np.arange(len(SEQUENCE) - 1) >= 5  # tokens 5.. stand for the sampled completion
GSPO_DATUM = types.Datum(
    model_input=types.ModelInput.from_ints(SEQUENCE[:-1]),
    loss_fn_inputs={
        "target_tokens": np.array(SEQUENCE[1:], dtype=np.int64),
        "logprobs": np.full(len(SEQUENCE) - 1, -2.5, dtype=np.float32),
        "advantages": np.where(COMPLETION, 1.0, 0.0).astype(np.float32),
        "sequence_ratio_mask": COMPLETION.astype(np.float32),
    },
)


def negative_log_likelihood(data, logprobs_list):
    """A client-side custom loss: the same as cross_entropy with weights 1."""
    loss = sum(-lp.sum() for lp in logprobs_list)
    return loss, {"custom/nll:sum": loss.item()}


def logprobs_of(output) -> list[float]:
    return output.loss_fn_outputs[0]["logprobs"].tolist()


def error_of(call) -> dict:
    try:
        call()
    except tinker.RequestFailedError as error:
        return {"type": type(error).__name__, "message": str(error), "category": str(error.category)}
    except tinker.APIStatusError as error:
        return {"type": type(error).__name__, "message": str(error), "status": error.status_code}
    return {"type": None}


def run_sync() -> dict:
    service = tinker.ServiceClient()
    training = service.create_lora_training_client(base_model="tiny-llama", rank=8, seed=1).result()
    # pipelined: every step is submitted before any result is read
    steps = [
        (training.forward_backward([DATUM], "cross_entropy"), training.optim_step(types.AdamParams(learning_rate=LR)))
        for _ in range(STEPS)
    ]
    losses = [fwd_bwd.result().metrics["loss:sum"] for fwd_bwd, _ in steps]
    grad_norms = [optim.result().metrics.get("grad_norm:mean") for _, optim in steps]
    external = training.save_weights_external("after-5").result().path
    forward_future = training.forward([DATUM], "cross_entropy")
    forward_seq = training._request_id_counter  # the seq id it reserved (seq_id = request index + 1)
    forward = forward_future.result()
    gspo = training.forward([GSPO_DATUM], "gspo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}).result()
    tokenizer = training.get_tokenizer()  # the test runs this with HF_HUB_OFFLINE=1
    custom = training.forward_backward_custom([DATUM], negative_log_likelihood).result()
    state = training.save_state("ckpt-5").result().path
    restored = service.create_training_client_from_state_with_optimizer(state).result()
    restored_logprobs = logprobs_of(restored.forward([DATUM], "cross_entropy").result())
    sampler = training.save_weights_and_get_sampling_client().result()
    sample = sampler.sample(
        PROMPT, 2, types.SamplingParams(max_tokens=4, seed=3), include_prompt_logprobs=True
    ).result()
    computed = sampler.compute_logprobs(PROMPT).result()
    rest = tinker.RestClient()
    runs = [run.training_run_id for run in rest.list_training_runs(limit=100).result().training_runs]
    checkpoints = [c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result().checkpoints]
    bad_request = error_of(lambda: training.forward_backward([BAD_DATUM], "cross_entropy").result())
    unsupported = error_of(lambda: training.forward_backward([DATUM], "stable_reinforce").result())
    doomed = service.create_lora_training_client(
        base_model="tiny-llama", rank=4, seed=1, user_metadata={"force_runner_failure": "yes"}
    ).result()
    failed = error_of(lambda: doomed.forward_backward([DATUM], "cross_entropy").result())
    after_error = logprobs_of(training.forward([DATUM], "cross_entropy").result())
    report = {
        "model_id": training.model_id,
        "losses": losses,
        "grad_norms": grad_norms,
        "external_path": external,
        "forward_seq": forward_seq,
        "forward_logprobs": logprobs_of(forward),
        "forward_metrics": forward.metrics,
        "gspo_metrics": gspo.metrics,
        "tokenized": tokenizer.encode("the cat sat on the mat"),
        "custom_metrics": custom.metrics,
        "state_path": state,
        "restored_model_id": restored.model_id,
        "restored_logprobs": restored_logprobs,
        "sample_tokens": [s.tokens for s in sample.sequences],
        "sample_stop_reasons": [s.stop_reason for s in sample.sequences],
        "prompt_logprobs": sample.prompt_logprobs,
        "computed_logprobs": computed,
        "runs": runs,
        "checkpoints": checkpoints,
        "bad_request": bad_request,
        "unsupported": unsupported,
        "failed": failed,
        "after_error_logprobs": after_error,
        "final_seq": training._request_id_counter,
    }
    service.close("success").result()
    return report


async def run_async() -> dict:
    service = tinker.ServiceClient()
    training = await service.create_lora_training_client_async(base_model="tiny-llama", rank=8, seed=1)
    steps = []
    for _ in range(STEPS):  # the first await submits (reserves the seq id); the second waits for the result
        fwd_bwd = await training.forward_backward_async([DATUM], "cross_entropy")
        optim = await training.optim_step_async(types.AdamParams(learning_rate=LR))
        steps.append((fwd_bwd, optim))
    losses = [(await fwd_bwd).metrics["loss:sum"] for fwd_bwd, _ in steps]
    grad_norms = [(await optim).metrics.get("grad_norm:mean") for _, optim in steps]
    external = (await (await training.save_weights_external_async("after-5"))).path
    forward_future = await training.forward_async([DATUM], "cross_entropy")
    forward_seq = training._request_id_counter
    forward = await forward_future
    custom = await (await training.forward_backward_custom_async([DATUM], negative_log_likelihood))
    state = (await (await training.save_state_async("ckpt-5"))).path
    restored = await service.create_training_client_from_state_with_optimizer_async(state)
    restored_logprobs = logprobs_of(await (await restored.forward_async([DATUM], "cross_entropy")))
    sampler = await training.save_weights_and_get_sampling_client_async()
    sample = await sampler.sample_async(
        PROMPT, 2, types.SamplingParams(max_tokens=4, seed=3), include_prompt_logprobs=True
    )
    computed = await sampler.compute_logprobs_async(PROMPT)
    rest = tinker.RestClient()
    runs = [run.training_run_id for run in (await rest.list_training_runs(limit=100)).training_runs]
    checkpoints = [c.checkpoint_id for c in (await rest.list_checkpoints(training.model_id)).checkpoints]
    report = {
        "model_id": training.model_id,
        "losses": losses,
        "grad_norms": grad_norms,
        "external_path": external,
        "forward_seq": forward_seq,
        "forward_logprobs": logprobs_of(forward),
        "forward_metrics": forward.metrics,
        "custom_metrics": custom.metrics,
        "state_path": state,
        "restored_model_id": restored.model_id,
        "restored_logprobs": restored_logprobs,
        "sample_tokens": [s.tokens for s in sample.sequences],
        "sample_stop_reasons": [s.stop_reason for s in sample.sequences],
        "prompt_logprobs": sample.prompt_logprobs,
        "computed_logprobs": computed,
        "runs": runs,
        "checkpoints": checkpoints,
        "final_seq": training._request_id_counter,
    }
    await service.close("success")
    return report


if __name__ == "__main__":
    result = run_sync() if sys.argv[1] == "sync" else asyncio.run(run_async())
    print("RESULT " + json.dumps(result))

"""Tinker code, unchanged (run with `.venv-tinker/bin/python`): the sampling options the cookbook
uses, one DPO step through `forward_backward_custom`, and a checkpoint downloaded the 0.38.0 way
(`get_external_weights_urls` + plain GETs). Prints `RESULT <json>` with what the test checks.

Nothing here imports Lorasmith.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import tinker
import torch
from tinker import types

PROMPT_TOKENS = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3, 334]
PROMPT = types.ModelInput.from_ints(PROMPT_TOKENS)
CHOSEN = [41, 77, 203, 88]
REJECTED = [93, 12, 650, 17]
BETA = 0.5


def datum(tokens: list[int], weights: list[float]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.array(tokens[1:], dtype=np.int64),
            "weights": np.array(weights[1:], dtype=np.float32),
        },
    )


def completion_datum(completion: list[int]) -> types.Datum:
    tokens = PROMPT_TOKENS + completion
    return datum(tokens, [0.0] * len(PROMPT_TOKENS) + [1.0] * len(completion))


def sequence_logprob(output_logprobs: torch.Tensor, d: types.Datum) -> torch.Tensor:
    return (output_logprobs * d.loss_fn_inputs["weights"].to_torch()).sum()


def sampling(sampler: tinker.SamplingClient, tokenizer) -> dict:
    top = sampler.sample(
        PROMPT, 1, types.SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result()
    n = len(PROMPT_TOKENS)
    top1 = [row[0][0] for row in top.topk_prompt_logprobs[1:]]
    # row i scores prompt position i + 1: the actual token, the model's favourite, nothing
    asked = torch.tensor([[PROMPT_TOKENS[i + 1], top1[i], -1] for i in range(n - 1)], dtype=torch.int64)
    dense = sampler.sample(
        PROMPT, 1, types.SamplingParams(max_tokens=1), target_prompt_logprobs=types.TensorData.from_torch(asked)
    ).result()
    sparse_asked = torch.full((n - 1, 8), -1, dtype=torch.int64)  # mostly -1: the SDK sends it as CSR
    sparse_asked[:, 0] = asked[:, 0]
    sparse = sampler.sample(
        PROMPT,
        1,
        types.SamplingParams(max_tokens=1),
        target_prompt_logprobs=types.TensorData.from_torch_sparse(sparse_asked, pad_value=-1),
    ).result()
    free = types.SamplingParams(max_tokens=6, seed=7, temperature=1.0)
    drawn = sampler.sample(PROMPT, 3, free).result()
    again = sampler.sample(PROMPT, 3, free).result()
    first = drawn.sequences[0].tokens
    stop_token = first[2]
    by_token = sampler.sample(PROMPT, 1, types.SamplingParams(max_tokens=6, seed=7, stop=[stop_token])).result()
    no_stops = sampler.sample(PROMPT, 1, types.SamplingParams(max_tokens=6, seed=7, stop=[])).result()
    stop_string = tokenizer.decode(first[1:3])
    by_string = sampler.sample(PROMPT, 1, types.SamplingParams(max_tokens=6, seed=7, stop=[stop_string])).result()
    warm = types.SamplingParams(max_tokens=5, seed=9, temperature=0.7, stop=[])
    with_topk = sampler.sample(PROMPT, 1, warm, topk_sample_logprobs=3).result().sequences[0]
    # the reference: the prompt scorer's top-3 at each position of prompt + the sampled tokens
    rescored = sampler.sample(
        types.ModelInput.from_ints(PROMPT_TOKENS + with_topk.tokens),
        1,
        types.SamplingParams(max_tokens=1),
        topk_prompt_logprobs=3,
    ).result()
    return {
        "prompt_logprobs": top.prompt_logprobs,
        "topk_prompt_logprobs": top.topk_prompt_logprobs,
        "asked": asked.tolist(),
        "dense_target": dense.target_prompt_logprobs.to_torch().tolist(),
        "sparse_asked_sent_as_csr": types.TensorData.from_torch_sparse(sparse_asked, -1).sparse_crow_indices
        is not None,
        "sparse_target": sparse.target_prompt_logprobs.to_torch().tolist(),
        "drawn": [s.tokens for s in drawn.sequences],
        "drawn_logprobs": [s.logprobs for s in drawn.sequences],
        "again": [s.tokens for s in again.sequences],
        "stop_token": stop_token,
        "by_token": by_token.sequences[0].tokens,
        "by_token_reason": by_token.sequences[0].stop_reason,
        "no_stops": no_stops.sequences[0].tokens,
        "no_stops_reason": no_stops.sequences[0].stop_reason,
        "stop_string": stop_string,
        "by_string": by_string.sequences[0].tokens,
        "by_string_text": tokenizer.decode(by_string.sequences[0].tokens),
        "by_string_reason": by_string.sequences[0].stop_reason,
        "topk_sampled": with_topk.topk_logprobs,
        "topk_sampled_tokens": with_topk.tokens,
        "topk_rescored": rescored.topk_prompt_logprobs[len(PROMPT_TOKENS) :],
        "plain_topk": drawn.sequences[0].topk_logprobs,
    }


def dpo(service: tinker.ServiceClient, training: tinker.TrainingClient) -> dict:
    """One DPO step (Rafailov et al.): loss = -log sigmoid(beta * ((pc - rc) - (pr - rr))), with the
    reference logprobs rc, rr from a frozen sampler of the starting weights."""
    reference = training.save_weights_and_get_sampling_client().result()
    pair = [completion_datum(CHOSEN), completion_datum(REJECTED)]

    def reference_logprob(completion: list[int]) -> float:
        scored = reference.compute_logprobs(types.ModelInput.from_ints(PROMPT_TOKENS + completion)).result()
        return float(sum(scored[len(PROMPT_TOKENS) :]))

    ref_chosen, ref_rejected = reference_logprob(CHOSEN), reference_logprob(REJECTED)

    def dpo_loss(data, logprobs_list):
        chosen, rejected = (sequence_logprob(lp, d) for lp, d in zip(logprobs_list, data))
        margin = BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))
        loss = -torch.nn.functional.logsigmoid(margin)
        return loss, {"dpo/margin:mean": margin.item(), "dpo/chosen:mean": chosen.item()}

    step = training.forward_backward_custom(pair, dpo_loss).result()
    training.optim_step(types.AdamParams(learning_rate=2e-2)).result()
    after = training.forward(pair, "cross_entropy").result()
    after_chosen, after_rejected = (
        float(sequence_logprob(out["logprobs"].to_torch(), d)) for out, d in zip(after.loss_fn_outputs, pair)
    )
    return {
        "ref_chosen": ref_chosen,
        "ref_rejected": ref_rejected,
        "step_metrics": step.metrics,
        "margin_after": BETA * ((after_chosen - ref_chosen) - (after_rejected - ref_rejected)),
        "after_chosen": after_chosen,
        "chosen_tokens": PROMPT_TOKENS + CHOSEN,
        "prompt_length": len(PROMPT_TOKENS),
    }


def download(rest: tinker.RestClient, tinker_path: str, directory: Path) -> list[str]:
    urls = rest.get_external_weights_urls(tinker_path).result()
    directory.mkdir(parents=True, exist_ok=True)
    for name, url in urls.urls.items():
        with urllib.request.urlopen(url, timeout=60) as response:  # a plain GET, no Tinker headers
            (directory / name).write_bytes(response.read())
    return sorted(urls.urls)


def main(out_dir: Path) -> dict:
    service = tinker.ServiceClient()
    training = service.create_lora_training_client(base_model="tiny-llama", rank=8, seed=2).result()
    warmup = datum(PROMPT_TOKENS + CHOSEN, [1.0] * (len(PROMPT_TOKENS) + len(CHOSEN)))
    for _ in range(2):
        training.forward_backward([warmup], "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=1e-2))
    forward = training.forward([datum(PROMPT_TOKENS, [1.0] * len(PROMPT_TOKENS))], "cross_entropy").result()
    sampler = training.save_weights_and_get_sampling_client().result()
    report = {
        "forward_logprobs": forward.loss_fn_outputs[0]["logprobs"].tolist(),
        **sampling(sampler, training.get_tokenizer()),
    }
    report["dpo"] = dpo(service, training)
    exported = training.save_weights_external("for-peft").result().path
    state = training.save_state("for-cli").result().path
    rest = service.create_rest_client()
    report["files"] = download(rest, exported, out_dir / "external")
    report.update(model_id=training.model_id, external_path=exported, state_path=state, out_dir=str(out_dir))
    service.close("success").result()
    return report


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))

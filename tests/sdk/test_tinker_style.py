"""Code written for the `tinker` SDK runs by changing the import: keyword names, numpy inputs,
plain `await` on futures, ephemeral samplers, string stops."""

from __future__ import annotations

import asyncio

import numpy as np

import lorasmith as tinker
from lorasmith import types

from .reference import SEQUENCE


def test_a_tinker_style_rl_step(live_server_embedded):
    async def main():
        service_client = tinker.ServiceClient(
            base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key
        )
        training_client = await service_client.create_lora_training_client_async(base_model="tiny-llama", rank=8)
        tokenizer = training_client.get_tokenizer()
        sampling_client = training_client.save_weights_and_get_sampling_client(name="policy")
        prompt = types.ModelInput.from_ints(tokens=SEQUENCE[:5])
        result = await sampling_client.sample_async(
            prompt=prompt, num_samples=2, sampling_params=types.SamplingParams(max_tokens=4, stop=["\n"], seed=3)
        )
        data = []
        for sequence, advantage in zip(result.sequences, (1.0, -1.0)):
            tokens = prompt.to_ints() + sequence.tokens
            n = len(tokens) - 1
            data.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(tokens[:-1]),
                    loss_fn_inputs={
                        "target_tokens": np.array(tokens[1:]),
                        "logprobs": np.array([0.0] * (n - len(sequence.tokens)) + sequence.logprobs),
                        "advantages": np.array([0.0] * (n - len(sequence.tokens)) + [advantage] * len(sequence.tokens)),
                    },
                )
            )
        fwd_bwd = await training_client.forward_backward(data, loss_fn="importance_sampling")
        optim = await training_client.optim_step(types.AdamParams(learning_rate=1e-3))
        service_client.close()
        return tokenizer, fwd_bwd, optim

    tokenizer, fwd_bwd, optim = asyncio.run(main())
    assert tokenizer.decode([SEQUENCE[1]])
    assert len(fwd_bwd.loss_fn_outputs) == 2 and "loss:sum" in fwd_bwd.metrics
    assert isinstance(optim, types.OptimStepResponse)

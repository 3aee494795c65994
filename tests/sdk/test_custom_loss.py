"""forward_backward_custom with a DPO-style loss moves the adapter exactly as computing that loss
directly in a PEFT model does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorasmith import AdamParams, Datum, ModelInput

from .reference import SEQUENCE, adapter_tensors, peft_model, target_logprobs

CHOSEN = SEQUENCE[:12]
REJECTED = SEQUENCE[:5] + [700, 701, 702, 703, 704, 705, 706]
REF_CHOSEN, REF_REJECTED, BETA = -70.0, -75.0, 0.1
# eps = 1 turns Adam's first step into ~lr * g / (|g| + 1): sensitive to the gradient's scale,
# which a sign-like step (eps ~ 0) would hide
ADAM = AdamParams(learning_rate=0.05, eps=1.0)


def dpo(chosen_lp: torch.Tensor, rejected_lp: torch.Tensor) -> torch.Tensor:
    margin = (chosen_lp.sum() - REF_CHOSEN) - (rejected_lp.sum() - REF_REJECTED)
    return -F.logsigmoid(BETA * margin)


def test_custom_dpo_gradient_matches_peft(live_server_embedded, service, tmp_path):
    warm_up = service.create_lora_training_client("tiny-llama", rank=4, seed=21)
    rest = service.create_rest_client()
    warm = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})
    warm_up.forward_backward([warm]).result()
    warm_up.optim_step(AdamParams(learning_rate=1e-2)).result()  # B non-zero: every tensor gets a gradient
    # weights only: fresh AdamW moments, like the reference optimizer below
    training = service.create_training_client_from_state(warm_up.save_state("warm").result().path)
    before = rest.download_checkpoint(
        training.save_weights_for_sampler("before").result().path, tmp_path / "before", progress=False
    )

    data = [
        Datum(model_input=ModelInput.from_ints(s[:-1]), loss_fn_inputs={"target_tokens": s[1:]})
        for s in (CHOSEN, REJECTED)
    ]
    out = training.forward_backward_custom(data, lambda d, lps: (dpo(lps[0], lps[1]), {"pairs:sum": 1.0})).result()
    training.optim_step(ADAM).result()
    after = adapter_tensors(
        rest.download_checkpoint(
            training.save_weights_for_sampler("after").result().path, tmp_path / "after", progress=False
        )
    )

    reference = peft_model(live_server_embedded.data_dir, before, trainable=True)
    loss = dpo(target_logprobs(reference, CHOSEN), target_logprobs(reference, REJECTED))
    assert out.metrics["loss:sum"] == float(loss.detach()) or abs(out.metrics["loss:sum"] - float(loss)) < 1e-5
    assert out.metrics["pairs:sum"] == 1.0 and "surrogate_loss:sum" in out.metrics
    params = [p for p in reference.parameters() if p.requires_grad]
    loss.backward()
    optimizer = torch.optim.AdamW(
        params, lr=ADAM.learning_rate, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps, weight_decay=0.0
    )
    optimizer.step()
    expected = {n.replace(".default", ""): p.detach() for n, p in reference.named_parameters() if p.requires_grad}
    assert expected.keys() == after.keys()
    moved = 0
    for name, tensor in expected.items():
        torch.testing.assert_close(after[name], tensor, rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(tensor, adapter_tensors(before)[name]))
    assert moved == len(expected)

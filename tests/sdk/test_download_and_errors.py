"""Downloads load in `peft` with the service's numbers; every error class surfaces typed."""

from __future__ import annotations

import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput

from .reference import SEQUENCE, peft_model, target_logprobs


def test_downloaded_sampler_checkpoint_matches_compute_logprobs(live_server_embedded, service, tmp_path):
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=5)
    datum = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})
    for _ in range(3):
        training.forward_backward([datum]).result()
        training.optim_step(AdamParams(learning_rate=1e-2)).result()
    path = training.save_weights_for_sampler("dl").result().path
    directory = service.create_rest_client().download_checkpoint(path, tmp_path / "adapter", progress=False)
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    served = service.create_sampling_client(model_path=path).compute_logprobs(ModelInput.from_ints(SEQUENCE)).result()
    local = target_logprobs(peft_model(live_server_embedded.data_dir, directory), SEQUENCE)
    assert served[0] is None
    assert served[1:] == pytest.approx(local.tolist(), abs=1e-4)


def test_errors_are_typed_with_the_server_message(live_server_embedded, service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=1)
    datum = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})
    with pytest.raises(lorasmith.BadRequestError) as bad:
        training.forward_backward([datum], "nope").result()
    assert bad.value.field == "loss_fn" and "unknown loss_fn 'nope'" in str(bad.value)

    other = lorasmith.ServiceClient(
        base_url=live_server_embedded.base_url, api_key=live_server_embedded.make_api_key("erin")
    )
    try:
        with pytest.raises(lorasmith.NotFoundError, match="not found"):
            other.create_rest_client().get_training_run(training.model_id).result()
    finally:
        other.close()

    with pytest.raises(lorasmith.AuthenticationError, match="invalid or revoked API key"):
        lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key="tml-wrong").session_id

    doomed = service.create_lora_training_client(
        "tiny-llama", rank=4, seed=1, user_metadata={"force_runner_failure": "yes"}
    )
    with pytest.raises(lorasmith.RequestFailedError) as failed:
        doomed.forward_backward([datum]).result()
    assert failed.value.category == "server" and "forced runner failure" in failed.value.message

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    unreachable = lorasmith.ServiceClient(base_url=f"http://127.0.0.1:{dead_port}", api_key="tml-x", max_retries=1)
    with pytest.raises(lorasmith.APIConnectionError, match="cannot reach the Lorasmith server"):
        unreachable.session_id

    with pytest.raises(lorasmith.LorasmithError, match="API key"):
        lorasmith.ServiceClient(base_url="http://127.0.0.1:1", api_key="sk-not-tinker")

"""Code written for Tinker runs unchanged against Lorasmith (issue 12): the official `tinker`
0.38.0 client, sync and async, on tiny-llama — pipelined training, forward, client-side custom
loss, save/restore with optimizer, ephemeral samplers, prompt logprobs, the REST listings and
errors — lands on the adapter our own SDK produces, and reads through protobuf exactly what a
JSON client reads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import lorasmith
from api.tinker_proto import file_descriptor
from gpu_runner import describe_base_model
from lorasmith import AdamParams, Datum, ModelInput

from ..platform.flow import LR, SEQUENCE
from ..platform.wire import Wire, datum_json
from .conftest import run_tinker

STEPS = 5  # the script's own constants (SEQUENCE, LR, STEPS, rank 8, seed 1) match these


@pytest.fixture(scope="module")
def reports(tinker_python, live_server_embedded) -> dict:
    """Each flow's report, run once per module (a run is ~25 s: one SDK start, ~20 round trips)."""
    ran: dict[str, dict] = {}

    def report(mode: str) -> dict:
        if mode not in ran:
            ran[mode] = run_tinker(tinker_python, live_server_embedded, "training_flow.py", mode)
        return ran[mode]

    return report


@pytest.fixture(params=["sync", "async"])
def report(request, reports) -> dict:
    return reports(request.param)


@pytest.fixture(scope="module")
def ours(live_server_embedded, tmp_path_factory) -> dict:
    """The same 5 steps through our own SDK: its losses and its exported adapter."""
    service = lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key)
    try:
        training = service.create_lora_training_client("tiny-llama", rank=8, seed=1)
        datum = Datum(
            model_input=ModelInput.from_ints(SEQUENCE[:-1]),
            loss_fn_inputs={"target_tokens": SEQUENCE[1:], "weights": [1.0] * (len(SEQUENCE) - 1)},
        )
        steps = [
            (training.forward_backward([datum], "cross_entropy"), training.optim_step(AdamParams(learning_rate=LR)))
            for _ in range(STEPS)
        ]
        losses = [fwd_bwd.result().metrics["loss:sum"] for fwd_bwd, _ in steps]
        path = training.save_weights_external("ours").result()["path"]
        return {"losses": losses, "adapter": _download(service, path, tmp_path_factory.mktemp("ours"))}
    finally:
        service.close()


def _download(service, tinker_path: str, directory) -> dict[str, torch.Tensor]:
    downloaded = service.create_rest_client().download_checkpoint(tinker_path, directory, progress=False)
    return load_file(str(downloaded / "adapter_model.safetensors"))


def test_our_message_schema_is_the_one_the_tinker_package_ships(tinker_python, live_server_embedded):
    theirs = run_tinker(tinker_python, live_server_embedded, "descriptor.py", timeout=120)
    assert bytes.fromhex(theirs) == file_descriptor().SerializeToString()


def test_five_pipelined_steps_land_on_the_adapter_our_sdk_produces(report, ours, live_server_embedded, tmp_path):
    assert report["losses"] == pytest.approx(ours["losses"], rel=1e-5)
    assert report["losses"][-1] < report["losses"][0] and all(g is not None for g in report["grad_norms"])
    with lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key) as s:
        theirs = _download(s, report["external_path"], tmp_path / "theirs")
    assert theirs.keys() == ours["adapter"].keys()
    for name, tensor in ours["adapter"].items():
        torch.testing.assert_close(theirs[name], tensor, rtol=1e-5, atol=1e-7)


def test_forward_restore_and_sampler_agree_on_logprobs(report):
    forward = report["forward_logprobs"]
    assert len(forward) == len(SEQUENCE) - 1
    assert report["forward_metrics"]["loss:sum"] == pytest.approx(-sum(forward), rel=1e-5)
    # restored with its optimizer from save_state: the same weights
    assert report["restored_model_id"] != report["model_id"]
    assert report["restored_logprobs"] == pytest.approx(forward, abs=1e-6)
    # the sampler scores prompt position i+1 as the trainer scores target i; position 0 is unscored
    for key in ("prompt_logprobs", "computed_logprobs"):
        assert report[key][0] is None
        assert report[key][1:] == pytest.approx(forward, abs=1e-3)
    assert [len(tokens) for tokens in report["sample_tokens"]] == [4, 4]
    assert set(report["sample_stop_reasons"]) <= {"length", "stop"}


def test_a_client_side_custom_loss_runs_on_the_two_phase_protocol(report):
    metrics = report["custom_metrics"]
    nll = -sum(report["forward_logprobs"])
    assert metrics["loss:sum"] == pytest.approx(nll, rel=1e-5)  # the custom loss's value
    assert metrics["custom/nll:sum"] == pytest.approx(nll, rel=1e-5)
    assert metrics["surrogate_loss:sum"] == pytest.approx(nll, rel=1e-5)  # the server's weighted cross_entropy


def test_the_rest_client_lists_runs_and_checkpoints(report):
    assert {report["model_id"], report["restored_model_id"]} <= set(report["runs"])
    assert set(report["checkpoints"]) == {"weights/ckpt-5", "external_weights/after-5"}
    assert report["state_path"] == f"tinker://{report['model_id']}/weights/ckpt-5"


def test_a_json_client_of_the_same_model_reads_the_same_results(report, live_server_embedded):
    wire = Wire(live_server_embedded.client())
    body = {"model_id": report["model_id"], "data": [datum_json(SEQUENCE)], "loss_fn": "cross_entropy"}
    # the SDK's own forward, read again as JSON (a repeated seq_id answers the original future)
    again = wire.result(wire.post("forward", {**body, "seq_id": report["forward_seq"]}))
    assert again["loss_fn_outputs"][0]["logprobs"]["data"] == report["forward_logprobs"]
    assert again["metrics"] == report["forward_metrics"]
    # and a fresh JSON forward on the model the SDK left behind
    fresh = wire.result(wire.post("forward", {**body, "seq_id": report["final_seq"] + 1}))
    assert fresh["loss_fn_outputs"][0]["logprobs"]["data"] == pytest.approx(report["forward_logprobs"], abs=1e-6)


def test_errors_surface_as_the_sdk_types_with_our_message(reports):
    report = reports("sync")
    bad = report["bad_request"]
    assert (bad["type"], bad["status"]) == ("BadRequestError", 400)
    assert "model_input[1] = 5000 is outside the vocabulary" in bad["message"]
    assert "data[0].model_input" in bad["message"]
    failed = report["failed"]
    assert failed["type"] == "RequestFailedError" and failed["category"] == "server"
    assert "forced runner failure" in failed["message"]
    unsupported = report["unsupported"]
    assert unsupported["type"] == "BadRequestError"
    assert (
        "'stable_reinforce' is not supported here" in unsupported["message"]
        and "use importance_sampling" in unsupported["message"]
    )
    # the refused request used up its seq: the client's next request ran
    assert report["after_error_logprobs"] == pytest.approx(report["forward_logprobs"], abs=1e-6)


def test_gspo_through_the_sdk_scores_the_sequence_ratio(reports):
    """The paper's sequence objective, from the same weights' forward logprobs: ratio
    s = exp(mean(p - q)) over the completion, loss = -m * min(s A, clip(s) A) with A = 1."""
    report = reports("sync")
    p = torch.tensor(report["forward_logprobs"], dtype=torch.float64)[5:]
    s = torch.exp((p + 2.5).mean())
    expected = -len(p) * min(float(s), float(torch.clamp(s, 0.9, 1.1)))
    assert report["gspo_metrics"]["loss:sum"] == pytest.approx(expected, rel=1e-4)


def test_get_tokenizer_loads_the_served_tokenizer_offline(reports, live_server_embedded):
    expected = AutoTokenizer.from_pretrained(describe_base_model("tiny-llama", live_server_embedded.data_dir).model_dir)
    assert reports("sync")["tokenized"] == expected.encode("the cat sat on the mat")

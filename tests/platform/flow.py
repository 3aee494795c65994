"""TINKER_WIRE.md §12's minimal sequence in JSON, shared by the embedded and Redis e2e tests."""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ExportPeft, ForwardBackward, LoraSpec, OptimStep

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3, 334, 87, 485, 88, 203, 41, 77]
STEPS = 10
LR = 1e-2


def engine_losses(data_dir: Path, steps: int = STEPS, export_to: Path | None = None) -> list[float]:
    """The same training run in-process: what the service must reproduce (optionally exporting
    the final adapter as a PEFT directory)."""
    engine = Engine("tiny-llama", data_dir=data_dir)
    engine.create_adapter("reference", LoraSpec(rank=8, seed=1))
    datum = Datum(
        SEQUENCE[:-1], {"target_tokens": torch.tensor(SEQUENCE[1:]), "weights": torch.ones(len(SEQUENCE) - 1)}
    )
    losses = []
    for _ in range(steps):
        fb, _ = engine.run_cycle(
            [ForwardBackward("reference", [datum]), OptimStep("reference", AdamParams(learning_rate=LR))]
        )
        losses.append(fb.output.metrics["loss:sum"])
    if export_to is not None:
        engine.run_cycle([ExportPeft("reference", export_to)])
    return losses


def minimal_flow(server, tmp_path: Path) -> dict:
    wire = Wire(server.client())
    assert isinstance(wire.post("client/config", {"sdk_version": "test"}), dict)
    session = wire.session()
    model_id = wire.model(session)
    info = wire.post("get_info", {"model_id": model_id})
    assert info["model_data"]["model_name"] == "tiny-llama" and info["lora_rank"] == 8
    losses, seq = [], 1
    for _ in range(STEPS):
        fb = wire.forward_backward(model_id, seq, [datum_json(SEQUENCE)])
        opt = wire.optim_step(model_id, seq + 1, LR)
        seq += 2
        out = wire.result(fb)
        assert len(out["loss_fn_outputs"][0]["logprobs"]["data"]) == len(SEQUENCE) - 1
        losses.append(out["metrics"]["loss:sum"])
        assert "grad_norm:mean" in wire.result(opt)["metrics"]
    saved = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": seq, "path": "s1"}))
    assert saved["path"] == f"tinker://{model_id}/sampler_weights/s1"
    sampler = wire.post(
        "create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0, "model_path": saved["path"]}
    )["sampling_session_id"]
    handle = wire.post(
        "asample",
        {
            "sampling_session_id": sampler,
            "seq_id": 0,
            "num_samples": 2,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": SEQUENCE[:6]}]},
            "sampling_params": {"max_tokens": 4, "temperature": 0.0},
            "prompt_logprobs": True,
        },
    )
    assert len(handle["sample_sequence_ids"]) == 2
    sample = wire.result(handle)
    assert [len(s["tokens"]) for s in sample["sequences"]] == [4, 4] and sample["prompt_logprobs"][0] is None
    external = wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": seq + 1, "path": "e1"}))
    assert external["path"] == f"tinker://{model_id}/external_weights/e1" and external["size_bytes"] > 0
    urls = wire.get(f"training_runs/{model_id}/checkpoints/external_weights/e1/external_weights_urls")
    download = tmp_path / "adapter"
    download.mkdir()
    for name, url in urls["urls"].items():
        response = httpx.get(url)  # no API key: the signature is the credential
        assert response.status_code == 200
        (download / name).write_bytes(response.content)
    return {"losses": losses, "download": download, "sample": sample, "model_id": model_id, "session": session}


def peft_logprobs(data_dir: Path, adapter_dir: Path, tokens: list[int]) -> list[float]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(data_dir / "models" / "tiny-llama", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0], -1)
    return logprobs[:-1].gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1).tolist()

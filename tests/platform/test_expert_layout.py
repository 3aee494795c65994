"""`lora_config.expert_layout` (MoE LoRA factors) is stored on the run, reaches the engine's LoraSpec,
and an unknown layout is a 400 naming the field (README "Mixture-of-experts LoRA")."""

from __future__ import annotations

from training.execution.plan import adapter_spec
from training.models import TrainingRun


def _create(api, session: str, seq: int, lora: dict):
    body = {"session_id": session, "model_seq_id": seq, "base_model": "tiny-llama", "lora_config": lora}
    return api.send("create_model", body)


def test_expert_layout_is_stored_and_defaults_to_shared_outer(api):
    session = api.session()
    assert _create(api, session, 0, {"rank": 4, "seed": 1}).status_code == 200
    assert _create(api, session, 1, {"rank": 4, "seed": 1, "expert_layout": "per_expert"}).status_code == 200
    runs = {run.id.rsplit(":", 1)[-1]: run for run in TrainingRun.objects.filter(session_id=session)}
    assert runs["0"].expert_layout == "shared_outer" and runs["1"].expert_layout == "per_expert"
    assert adapter_spec(runs["1"]).expert_layout == "per_expert"


def test_an_unknown_expert_layout_is_a_400_naming_it(api):
    response = _create(api, api.session(), 0, {"rank": 4, "expert_layout": "interleaved"})
    assert response.status_code == 400
    assert response.json()["field"] == "lora_config.expert_layout"

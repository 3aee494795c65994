"""A base model whose architecture the engine cannot wrap is refused at create_model with a 400 naming
`base_model`, the architecture and what is missing, never a runner failure later."""

from __future__ import annotations

from transformers import NemotronHConfig

from training import base_models


def test_an_architecture_the_engine_cannot_wrap_is_a_400_at_create_model(api, tmp_path, monkeypatch):
    config = NemotronHConfig(  # ungated experts (up_proj + down_proj): no gate_up_proj to put LoRA on
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        layers_block_type=["moe", "attention"],
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_num_heads=4,
        mamba_head_dim=8,
        ssm_state_size=8,
        n_groups=1,
    )
    config.save_pretrained(tmp_path / "nemotron-h")  # the config is all the door reads
    served = [*base_models.served_models(), str(tmp_path / "nemotron-h")]
    monkeypatch.setattr(base_models, "served_models", lambda: served)
    body = {
        "session_id": api.session(),
        "model_seq_id": 0,
        "base_model": str(tmp_path / "nemotron-h"),
        "lora_config": {"rank": 4},
    }
    response = api.send("create_model", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["field"] == "base_model" and "NemotronHForCausalLM" in str(answer)

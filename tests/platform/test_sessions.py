"""Sessions, capabilities and the OpenAPI schema."""
from __future__ import annotations

from .wire import Wire


def test_session_lifecycle(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    assert wire.post("session_heartbeat", {"session_id": session}) == {"type": "session_heartbeat"}
    wire.post(f"sessions/{session}/finish", {"reason": {"type": "success"}, "detail": None})
    assert wire.client.post("session_heartbeat", json={"session_id": session}).status_code == 410
    refused = wire.client.post("create_model", json={"session_id": session, "model_seq_id": 0, "base_model": "tiny-llama"})
    assert refused.status_code == 400 and "finished" in refused.json()["error"]


def test_capabilities_and_config(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    models = wire.get("get_server_capabilities")["supported_models"]
    assert {"model_name": "tiny-llama", "max_context_length": 512}.items() <= models[0].items()
    assert wire.post("client/config", {"sdk_version": "0.38.0"})["pjwt_auth_enabled"] is False
    tokenizer = wire.get("base_models/tiny-llama/tokenizer")["files"]
    assert "tokenizer.json" in tokenizer


def test_openapi_schema_lists_the_api(live_server_embedded):
    import httpx

    schema = httpx.get(f"{live_server_embedded.base_url}/api/schema?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/forward_backward" in paths and "/api/v1/create_model" in paths

"""Sessions, capabilities and the OpenAPI schema."""

from __future__ import annotations

from .wire import Wire


def test_session_lifecycle(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    assert wire.post("session_heartbeat", {"session_id": session}) == {"type": "session_heartbeat"}
    wire.post(f"sessions/{session}/finish", {"reason": {"type": "success"}, "detail": None})
    assert wire.client.post("session_heartbeat", json={"session_id": session}).status_code == 410
    refused = wire.client.post(
        "create_model", json={"session_id": session, "model_seq_id": 0, "base_model": "tiny-llama"}
    )
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
    document = schema.json()
    paths, components = document["paths"], document["components"]
    assert {
        "/api/v1/forward_backward",
        "/api/v1/create_model",
        "/api/v1/asample",
        "/api/v1/retrieve_future",
        "/api/v1/training_runs/{run_id}",
    } <= set(paths)
    body = paths["/api/v1/forward_backward"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    forward_backward = components["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"model_id", "seq_id", "data", "loss_fn"} <= set(forward_backward["properties"])
    assert components["schemas"]["Datum"]["properties"]["loss_fn_inputs"]["additionalProperties"]
    assert "429" in paths["/api/v1/forward_backward"]["post"]["responses"]
    assert components["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_sessions_list_and_detail(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    model_id = wire.model(session, 0)
    sampler = wire.post(
        "create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0, "base_model": "tiny-llama"}
    )["sampling_session_id"]
    assert wire.get("sessions?limit=1") == {"sessions": [session]}
    detail = wire.get(f"sessions/{session}")
    assert detail["training_run_ids"] == [model_id] and detail["sampler_ids"] == [sampler]
    bob = Wire(live_server_embedded.client(live_server_embedded.make_api_key("bob-sessions")))
    assert session not in bob.get("sessions")["sessions"]
    assert bob.client.get(f"sessions/{session}").status_code == 404
    named = wire.post("create_session", {"display_name": "nightly sweep", "project_id": "p7"})["session_id"]
    assert {k: wire.get(f"sessions/{named}")[k] for k in ("display_name", "project_id")} == {
        "display_name": "nightly sweep",
        "project_id": "p7",
    }
    refused = wire.client.post("create_session", json={"display_name": 5})
    assert refused.status_code == 400 and refused.json()["field"] == "display_name"
    # tinker-cookbook names a run after its dataset and model paths: hundreds of characters in a deep checkout
    cookbook_name = "/check/work/main/.venv-tinker/lib/python3.11/site-packages/" * 12 + "-8rank-0.001lr"
    long_named = wire.post("create_session", {"display_name": cookbook_name})["session_id"]
    assert wire.get(f"sessions/{long_named}")["display_name"] == cookbook_name
    too_long = wire.client.post("create_session", json={"project_id": "p" * 2001})
    assert too_long.status_code == 400 and too_long.json()["field"] == "project_id"


def test_cancel_future_leaves_training_and_finished_work_alone(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), 0)
    step = wire.optim_step(model_id, 1)
    assert wire.post("cancel_future", {"request_id": step["request_id"]})["cancelled"] is False
    assert "metrics" in wire.result(step)
    assert wire.client.post("cancel_future", json={"request_id": "nope"}).status_code == 404
    assert wire.client.post("cancel_future", json={}).json()["field"] == "request_id"

"""The OpenAPI schema (/api/schema) tells the truth: JSON request bodies only, and every documented
200 answer is exactly what the endpoint returns. Off the happy path the API answers JSON too: 404
for unmatched /api/ routes, 405 with `Allow`, and 401 before a body is even looked at."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.services import issue_api_key
from training.models import Checkpoint, TrainingRun

from .wire import Wire, datum_json

METHODS = ("get", "post", "put", "patch", "delete")


def openapi_document() -> dict:
    response = APIClient().get("/api/schema", {"format": "json"})
    assert response.status_code == 200, response.content
    return json.loads(response.content)


def operations(document: dict) -> list[tuple[str, str, dict]]:
    """(METHOD, path template, operation) of every /api/v1 operation."""
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method in METHODS
    ]


def strict_schema(node: Any, components: dict) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema, $refs resolved, `nullable` spelled out, and objects
    closed: an answer may hold only the documented properties (unless additionalProperties says)."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return strict_schema(components[node["$ref"].rsplit("/", 1)[1]], components)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_schema(field, components) for name, field in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = strict_schema(value, components)
        elif key in ("allOf", "oneOf", "anyOf"):
            out[key] = [strict_schema(option, components) for option in value]
        elif key in ("type", "required", "enum", "minimum", "maximum", "pattern", "minItems", "maxItems"):
            out[key] = value
    if node.get("type") == "object" and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def documented_answer(document: dict, method: str, path: str) -> tuple[str, dict | None]:
    """(status, JSON Schema of the body) of an operation's success answer."""
    responses = document["paths"][path][method.lower()]["responses"]
    status = next(code for code in responses if code.startswith("2"))
    content = responses[status].get("content")
    if content is None:
        return status, None
    return status, strict_schema(content["application/json"]["schema"], document["components"]["schemas"])


def make_checkpoint(run: TrainingRun, kind: str, name: str, root: Path) -> Checkpoint:
    directory = root / kind / name
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    (directory / "adapter_config.json").write_text("{}")
    return Checkpoint.objects.create(
        training_run=run, owner=run.owner, checkpoint_type=kind, name=name, directory=str(directory)
    )


@pytest.fixture
def short_polls(settings):
    """retrieve_future answers a pending future at once (try_again) instead of holding it 25 s."""
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, long_poll_seconds=0.0)


# ---- the document -------------------------------------------------------------------------------


def test_schema_generates_without_warnings_and_validates(tmp_path):
    target = tmp_path / "schema.json"
    call_command("spectacular", "--fail-on-warn", "--validate", "--format", "openapi-json", "--file", str(target))
    document = json.loads(target.read_text())
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), "operationIds are unique without numbered suffixes"


def test_request_bodies_are_json_only(db):
    document = openapi_document()
    bodies = {(m, p): set(op["requestBody"]["content"]) for m, p, op in operations(document) if "requestBody" in op}
    assert bodies, "the POST endpoints document their bodies"
    assert {media for media in bodies.values() if media != {"application/json"}} == set()


def test_every_answer_is_described(db):
    """Only retrieve_future's result is free-form (its shape depends on the operation); every other
    operation documents a component with its exact fields (or 204, no body)."""
    free_form = []
    for method, path, operation in operations(openapi_document()):
        success = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert len(success) == 1, (method, path, success)
        ((code, response),) = success.items()
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if code == "204":
            assert schema is None
        elif "$ref" not in schema and "oneOf" not in schema:
            free_form.append(path)
        for error in ("400", "401", "404"):
            assert error in operation["responses"], (method, path, error)
    assert free_form == ["/api/v1/retrieve_future"]


# ---- JSON off the happy path --------------------------------------------------------------------


def _assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert isinstance(body["error"], str) and body["detail"] == body["error"], body
    return body


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/v1/nope"),
        ("post", "/api/v1/nope"),
        ("delete", "/api/v1/nope/deeper/still"),
        ("get", "/api/v1/"),
        ("get", "/api/v1"),
        ("get", "/api/v2/healthz"),
        ("get", "/api/v1/create_session/"),
        ("get", "/api/v1/sessions/a/b"),
        ("get", "/api/v1/sessions/a%00b"),  # no NUL reaches a query (PostgreSQL would fail: a 500)
        ("get", "/api/v1/training_runs/x/checkpoints/not_a_segment/name"),
    ],
)
def test_unmatched_api_routes_answer_json_404(api, method, path):
    for client in (api.client.client, APIClient()):  # with a key and without
        body = _assert_json_error(getattr(client, method)(path), 404)
        assert body["field"] == "path"


def test_pages_outside_the_api_keep_djangos_404(db):
    response = APIClient().get("/no/such/page")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_wrong_method_answers_json_405_with_allow(api):
    document = openapi_document()
    for path, item in document["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        documented = {m.upper() for m in item if m in METHODS}
        wrong = next(m for m in ("PATCH", "PUT", "GET", "POST") if m not in documented)
        concrete = path.replace("{checkpoint_id}", "weights/x").replace("{", "").replace("}", "")
        response = api.client.client.generic(wrong, concrete, "{}", content_type="application/json")
        _assert_json_error(response, 405)
        allowed = {m.strip() for m in response["Allow"].split(",")}
        assert documented <= allowed, (path, response["Allow"])


@pytest.mark.parametrize("key", [None, "tml-not-a-real-key", "garbage"])
@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"a": NaN}', b"[" * 5000, b"--x\r\n"])
def test_unauthenticated_bad_body_gets_401(db, key, body):
    """The key is checked before the body is parsed, on every endpoint that needs one."""
    client = APIClient()
    if key:
        client.credentials(HTTP_X_API_KEY=key)
    checked = 0
    for method, path, operation in operations(openapi_document()):
        if {} in operation.get("security", [{}]):
            continue  # public: client/config, client/dynamic_config, healthz
        concrete = path.replace("{checkpoint_id}", "weights/x").replace("{", "").replace("}", "")
        for content_type in ("application/json", "multipart/form-data; boundary=x"):
            response = client.generic(method, concrete, body, content_type=content_type)
            _assert_json_error(response, 401)
            checked += 1
    assert checked > 50


def test_an_oversized_body_is_a_json_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64
    big = json.dumps({"request_id": "x" * 100, "tags": ["x" * 100]})
    for path in ("/api/v1/create_session", "/api/v1/retrieve_future"):
        _assert_json_error(api.client.client.post(path, big, content_type="application/json"), 413)


def test_retrieve_future_checks_the_key_before_reading_the_body(db, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64
    big = json.dumps({"request_id": "x" * 100})
    _assert_json_error(APIClient().post("/api/v1/retrieve_future", big, content_type="application/json"), 401)


def test_too_many_query_parameters_is_a_json_400(api):
    query = "&".join(["limit=1"] * 1200)  # over DATA_UPLOAD_MAX_NUMBER_FIELDS
    _assert_json_error(api.client.client.get(f"/api/v1/training_runs?{query}"), 400)


# ---- documented answers = actual answers --------------------------------------------------------


class Recorder:
    """Calls endpoints by their documented path template and checks each answer against its
    documented schema; remembers which operations it checked."""

    def __init__(self, client: APIClient, document: dict):
        self.client = client
        self.document = document
        self.checked: set[tuple[str, str]] = set()

    def __call__(self, method: str, template: str, body: Any = None, **params: str) -> Any:
        path = template.format(**params)
        data = json.dumps(body if body is not None else {})
        response = self.client.generic(method, path, data, content_type="application/json")
        status, schema = documented_answer(self.document, method, template)
        assert str(response.status_code) == status, (method, path, response.status_code, response.content[:500])
        self.checked.add((method, template))
        if schema is None:
            assert response.content == b""
            return None
        answer = json.loads(response.content)
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(answer)]
        assert not errors, (method, template, answer, errors)
        return answer


def test_actual_answers_match_the_documented_ones(api, tmp_path, short_polls):
    document = openapi_document()
    call = Recorder(api.client.client, document)
    v1 = "/api/v1/"
    call("POST", v1 + "client/config", {"sdk_version": "0.38.0"})
    call("POST", v1 + "client/dynamic_config")
    call("GET", v1 + "healthz")
    call("GET", v1 + "get_server_capabilities")
    call("POST", v1 + "telemetry", {"events": []})
    session = call("POST", v1 + "create_session", {"tags": ["t"], "user_metadata": {"k": "v"}})["session_id"]
    call("POST", v1 + "session_heartbeat", {"session_id": session})
    call("GET", v1 + "sessions")
    model_id = call(
        "POST", v1 + "create_model", {"session_id": session, "model_seq_id": 0, "base_model": "tiny-llama"}
    )["model_id"]
    call("POST", v1 + "get_info", {"model_id": model_id})
    call("POST", v1 + "forward_backward", Wire.forward_backward_body(model_id, 1, [datum_json([3, 320, 265, 203])]))
    call("POST", v1 + "forward", Wire.forward_backward_body(model_id, 2, [datum_json([3, 320, 265, 203])]))
    call("POST", v1 + "optim_step", {"model_id": model_id, "seq_id": 3, "adam_params": {"learning_rate": 1e-3}})
    call("POST", v1 + "save_weights", {"model_id": model_id, "seq_id": 4, "path": "w1"})
    call("POST", v1 + "save_weights_for_sampler", {"model_id": model_id, "seq_id": 5, "path": "s1"})
    handle = call("POST", v1 + "save_weights_external", {"model_id": model_id, "seq_id": 6, "path": "e1"})
    call("POST", v1 + "retrieve_future", {"request_id": handle["request_id"]})

    run = TrainingRun.objects.get(id=model_id)
    training = make_checkpoint(run, "training", "w0", tmp_path)
    sampler_checkpoint = make_checkpoint(run, "sampler", "s0", tmp_path)
    external = make_checkpoint(run, "external", "e0", tmp_path)
    call("POST", v1 + "load_weights", {"path": training.tinker_path, "session_id": session, "model_seq_id": 1})
    call("GET", v1 + "sessions/{session_id}", session_id=session)
    sampler = call(
        "POST",
        v1 + "create_sampling_session",
        {"session_id": session, "sampling_session_seq_id": 0, "model_path": sampler_checkpoint.tinker_path},
    )["sampling_session_id"]
    call("GET", v1 + "samplers/{sampler_id}", sampler_id=sampler)
    sample = call("POST", v1 + "asample", Wire.sample_body(sampler))
    call("POST", v1 + "cancel_future", {"request_id": sample["request_id"]})

    call("GET", v1 + "training_runs")
    call("GET", v1 + "training_runs/{run_id}", run_id=model_id)
    call("GET", v1 + "training_runs/{run_id}/checkpoints", run_id=model_id)
    call("POST", v1 + "training_runs/{run_id}/metrics", {"step": 1, "metrics": {"heldout/nll": 2.0}}, run_id=model_id)
    call("GET", v1 + "checkpoints")
    one = {"run_id": model_id, "checkpoint_id": sampler_checkpoint.checkpoint_id}
    checkpoint = v1 + "training_runs/{run_id}/checkpoints/{checkpoint_id}"
    call("POST", checkpoint + "/publish", **one)
    call("DELETE", checkpoint + "/publish", **one)
    call("PUT", checkpoint + "/ttl", {"ttl_seconds": 7200}, **one)
    call("PUT", checkpoint + "/ttl", {"ttl_seconds": None}, **one)
    call("GET", checkpoint + "/external_weights_urls", **one)
    call("GET", checkpoint + "/archive", **one)
    call("POST", v1 + "weights_info", {"tinker_path": external.tinker_path})
    call("GET", v1 + "base_models/{name}/tokenizer", name="tiny-llama")
    call("GET", v1 + "usage")
    call("DELETE", checkpoint, run_id=model_id, checkpoint_id=external.checkpoint_id)
    call("POST", v1 + "sessions/{session_id}/finish", {"reason": {"type": "success"}}, session_id=session)

    everything = {(method, path) for method, path, _ in operations(document)}
    assert everything - call.checked == set(), "every documented operation is checked here"


def test_a_real_user_key_reaches_the_views(db):
    """The 401 checks above are not vacuous: the same bad body with a good key is a 400."""
    from accounts.services import ensure_user

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=issue_api_key(ensure_user("someone"), "t"))
    _assert_json_error(client.post("/api/v1/create_session", b"{not json", content_type="application/json"), 400)
    _assert_json_error(client.post("/api/v1/retrieve_future", b"{not json", content_type="application/json"), 400)

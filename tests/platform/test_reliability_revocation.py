"""Nothing outlives a revocation (issue 19, holes 5, 6 and 7): a key revoked by `manage.py api_keys
--revoke` closes its open WebSocket in embedded mode (the command's own in-memory layer reaches no
socket) and with Redis; unpublishing a checkpoint ends other users' samplers on it; /admin/login/
has the dashboard's login throttle."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from accounts.services import ensure_user

from .wire import Wire, prompt_json


@pytest.fixture(scope="module", params=["embedded", "postgres_redis"])
def server(request):
    return request.getfixturevalue("live_server_embedded" if request.param == "embedded" else "live_server_redis")


@pytest.mark.slow  # ~20 s a deployment: the management command runs in its own process
def test_revoking_by_the_management_command_closes_an_open_socket(server):
    key = server.make_api_key("carol")
    url = server.base_url.replace("http", "ws") + "/ws/v1/events"
    with connect(url, additional_headers={"X-API-Key": key}, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": []}))
        server._manage("api_keys", "carol", "--revoke", key[:12])
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # nothing more arrives for this key: the socket closes
                ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_unpublishing_ends_other_users_samplers(server):
    owner = Wire(server.client())
    model = owner.model(owner.session(), seed=6)
    saved = owner.result(owner.post("save_weights_for_sampler", {"model_id": model, "seq_id": 1, "path": "shared"}))
    publish = f"training_runs/{model}/checkpoints/sampler_weights/shared/publish"
    assert owner.post(publish, {})["public"] is True
    other = Wire(server.client(server.make_api_key("dave")))
    sampler = other.sampler(other.session(), model_path=saved["path"])
    body = {**Wire.sample_body(sampler, 1, max_tokens=2), "prompt": prompt_json([3, 320, 265])}
    assert "sequences" in other.result(other.post("asample", body), timeout=60)
    with server.client() as client:
        assert client.delete(publish).status_code == 200
    refused = other.send("asample", {**body, "seq_id": 2})
    assert refused.status_code in (404, 410), refused.text
    assert refused.json()["field"] == "sampling_session_id" and "no longer published" in refused.json()["error"]
    own = owner.sampler(owner.session(), model_path=saved["path"])  # the owner still samples it
    assert owner.send("asample", {**body, "sampling_session_id": own}).status_code == 200


@pytest.mark.django_db
def test_the_admin_login_is_throttled(client, settings):
    cache.clear()
    settings.LORASMITH_LOGIN_FAILURES_ALLOWED = 5
    admin = ensure_user("root")
    admin.is_staff = admin.is_superuser = True
    admin.set_password("right-password")
    admin.save()
    for _ in range(5):
        wrong = client.post("/admin/login/", {"username": "root", "password": "wrong"}, REMOTE_ADDR="10.1.0.1")
        assert wrong.status_code == 200
    right = client.post("/admin/login/", {"username": "root", "password": "right-password"}, REMOTE_ADDR="10.1.0.2")
    assert right.status_code == 200 and "Too many failed attempts" in right.content.decode()
    assert "_auth_user_id" not in client.session
    assert get_user_model().objects.get(username="root").last_login is None

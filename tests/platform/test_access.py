"""A user sees only their own runs, futures, checkpoints and download links (others' are 404),
and signed URLs refuse tampering and expiry."""

from __future__ import annotations

import time

import httpx
import pytest
from django.core import signing

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


@pytest.fixture(scope="module")
def alices(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    model_id = wire.model(session, seed=8)
    handle = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
    export = wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 2, "path": "x1"}))
    urls = wire.get(f"training_runs/{model_id}/checkpoints/external_weights/x1/external_weights_urls")["urls"]
    return {"session": session, "model_id": model_id, "handle": handle, "path": export["path"], "urls": urls}


def test_other_users_get_404_for_everything(live_server_embedded, alices):
    bob = live_server_embedded.client(live_server_embedded.make_api_key("bob"))
    model_id = alices["model_id"]
    checkpoint = f"training_runs/{model_id}/checkpoints/external_weights/x1"
    attempts = [
        bob.get(f"training_runs/{model_id}"),
        bob.get(f"training_runs/{model_id}/checkpoints"),
        bob.post("get_info", json={"model_id": model_id}),
        bob.post("forward_backward", json={"model_id": model_id, "seq_id": 3, "data": [datum_json(SEQUENCE)]}),
        bob.post("retrieve_future", json={"request_id": alices["handle"]["request_id"]}),
        bob.get(f"{checkpoint}/external_weights_urls"),
        bob.get(f"{checkpoint}/archive"),
        bob.delete(checkpoint),
        bob.post("weights_info", json={"tinker_path": alices["path"]}),
        bob.post("session_heartbeat", json={"session_id": alices["session"]}),
    ]
    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert all(r.json()["error"] for r in attempts)
    assert bob.get("training_runs").json()["training_runs"] == []


def test_signed_urls_need_no_key_but_refuse_tampering_and_expiry(live_server_embedded, alices):
    url = alices["urls"]["adapter_config.json"]
    assert httpx.get(url).status_code == 200
    token = url.split("/files/")[1].split("/")[0]
    tampered = url.replace(token, token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb"))
    assert httpx.get(tampered).status_code == 403
    server_key = (live_server_embedded.data_dir / "secret_key").read_text().strip()  # the server made its own
    claim = signing.loads(token, key=server_key, salt="lorasmith.files")
    expired = signing.dumps(
        {"p": claim["p"], "e": int(time.time()) - 1}, key=server_key, salt="lorasmith.files", compress=True
    )
    assert httpx.get(url.replace(token, expired)).status_code == 403
    resumed = httpx.get(url, headers={"Range": "bytes=10-"})
    assert resumed.status_code == 206 and resumed.content == httpx.get(url).content[10:]


def test_published_checkpoints_become_readable(live_server_embedded, alices):
    alice = Wire(live_server_embedded.client())
    bob = live_server_embedded.client(live_server_embedded.make_api_key("bob2"))
    checkpoint = f"training_runs/{alices['model_id']}/checkpoints/external_weights/x1"
    alice.post(f"{checkpoint}/publish", {})
    assert bob.get(f"{checkpoint}/external_weights_urls").status_code == 200
    assert bob.delete(checkpoint).status_code == 404  # reading is not owning
    assert alice.client.delete(f"{checkpoint}/publish").status_code == 200
    assert bob.get(f"{checkpoint}/external_weights_urls").status_code == 404

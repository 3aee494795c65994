"""Revoking a key: a confirmation page, then POST; the API refuses the key at once and the SDK
WebSockets opened with it close; another user's key is a 404."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from accounts.models import ApiKey
from accounts.services import issue_api_key
from lorasmith_server.asgi import router


def _key(user, name="k"):
    secret = issue_api_key(user, name)
    return secret, ApiKey.objects.get(user=user, name=name)


def test_get_asks_for_confirmation_and_changes_nothing(browser, alice):
    _, key = _key(alice)
    page = browser.get(f"/keys/{key.pk}/revoke/")
    assert page.status_code == 200 and "Revoke this key" in page.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None


def test_post_revokes_and_the_api_refuses_the_key(browser, alice):
    secret, key = _key(alice)
    api = Client()
    assert api.get("/api/v1/training_runs", HTTP_X_API_KEY=secret).status_code == 200
    answer = browser.post(f"/keys/{key.pk}/revoke/")
    assert answer["Location"] == "/keys/"
    assert api.get("/api/v1/training_runs", HTTP_X_API_KEY=secret).status_code == 401
    assert "is revoked" in browser.get("/keys/").content.decode()


def test_another_users_key_is_404(browser, bob):
    _, key = _key(bob)
    assert browser.get(f"/keys/{key.pk}/revoke/").status_code == 404
    assert browser.post(f"/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_a_revoked_key_is_404(browser, alice):
    _, key = _key(alice)
    browser.post(f"/keys/{key.pk}/revoke/")
    assert browser.get(f"/keys/{key.pk}/revoke/").status_code == 404


def test_revoking_closes_the_keys_open_websockets_only(browser, alice):
    revoked, revoked_key = _key(alice, "revoked")
    kept, _ = _key(alice, "kept")

    async def scenario():
        sockets = [
            WebsocketCommunicator(router, "/ws/v1/events", headers=[(b"x-api-key", secret.encode())])
            for secret in (revoked, kept)
        ]
        for socket in sockets:
            assert (await socket.connect())[0]
        await database_sync_to_async(browser.post)(f"/keys/{revoked_key.pk}/revoke/")
        closed = await sockets[0].receive_output(timeout=5)
        still_open = await sockets[1].receive_nothing(timeout=0.5)
        await sockets[1].disconnect()
        refused = WebsocketCommunicator(router, "/ws/v1/events", headers=[(b"x-api-key", revoked.encode())])
        again, _ = await refused.connect()
        return closed, still_open, again

    closed, still_open, again = async_to_sync(scenario)()
    assert closed == {"type": "websocket.close", "code": 4401}
    assert still_open and not again

"""The dashboard's assets are served by the platform's own ASGI app (what `manage.py serve` runs),
with no collectstatic step and no proxy."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator

from lorasmith_server.asgi import router


async def _request(path: str) -> dict:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [], "http_version": "1.1"}
    app = ApplicationCommunicator(router, scope)
    await app.send_input({"type": "http.request", "body": b""})
    response = await app.receive_output(5)
    response["body"] = b""
    while True:
        chunk = await app.receive_output(5)
        response["body"] += chunk.get("body", b"")
        if not chunk.get("more_body"):
            return response


def _get(path: str) -> dict:
    return async_to_sync(_request)(path)


def test_dashboard_assets_are_served(db):
    scripts = ("run_metrics", "chart", "usage_chart", "playground", "copy")
    for path, kind in (
        ("/static/css/lorasmith.css", b"text/css"),
        *((f"/static/js/{name}.js", b"javascript") for name in scripts),
    ):
        response = _get(path)
        assert response["status"] == 200, path
        assert kind in dict(response["headers"])[b"Content-Type"]


def test_admin_assets_are_served_too(db):
    assert _get("/static/admin/css/base.css")["status"] == 200


def test_a_missing_asset_is_404(db):
    assert _get("/static/js/nope.js")["status"] == 404

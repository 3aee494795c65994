"""SDK tests run against the platform's live embedded server (real ASGI server + runner)."""

from __future__ import annotations

import pytest

import lorasmith


@pytest.fixture
def service(live_server_embedded):
    client = lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key)
    yield client
    client.close()

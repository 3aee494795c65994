"""The recipes run against one live embedded server (the session's `live_server_embedded`), with
small configs and fixed seeds; `recipe_flags` are what every recipe's config needs to reach it."""

from __future__ import annotations

from pathlib import Path

import pytest

import lorasmith


@pytest.fixture
def recipe_flags(live_server_embedded, tmp_path: Path) -> dict:
    return {
        "base_url": live_server_embedded.base_url,
        "api_key": live_server_embedded.api_key,
        "log_dir": str(tmp_path / "run"),
        "show_progress": False,
        "seed": 0,
    }


@pytest.fixture
def service(live_server_embedded):
    with lorasmith.ServiceClient(base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key) as s:
        yield s

"""Where a client's server and API key come from: the explicit argument, else the environment
(LORASMITH_* first, then Tinker's TINKER_* names). Shared by ServiceClient and RestClient; it
builds the Transport and must not import any client."""

from __future__ import annotations

import os
from typing import Any

from ..errors import LorasmithError
from .transport import Transport

BASE_URL_VARIABLES = ("LORASMITH_BASE_URL", "TINKER_BASE_URL")
API_KEY_VARIABLES = ("LORASMITH_API_KEY", "TINKER_API_KEY")


def setting(explicit: str | None, *names: str) -> str | None:
    """`explicit` if given, else the first of the environment variables `names` that is set."""
    if explicit:
        return explicit
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def make_transport(base_url: str | None, api_key: str | None, **options: Any) -> Transport:
    """A Transport to the configured server; `options` go to Transport (use_websocket, max_retries, ...)."""
    base_url = setting(base_url, *BASE_URL_VARIABLES)
    api_key = setting(api_key, *API_KEY_VARIABLES)
    if not base_url:
        raise LorasmithError("no server: pass base_url= or set LORASMITH_BASE_URL")
    if not api_key or not api_key.startswith("tml-"):
        raise LorasmithError("no valid API key: pass api_key= or set LORASMITH_API_KEY (keys start with 'tml-')")
    return Transport(base_url, api_key, **options)

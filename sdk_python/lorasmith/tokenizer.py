"""Tokenizers by the name the server gives: files it serves (built-in/local models) or a hub id."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from ._internal import background
from ._internal.download import download


def cache_dir() -> Path:
    return Path(os.environ.get("LORASMITH_CACHE", Path.home() / ".cache" / "lorasmith"))


def load_tokenizer(transport, name: str):
    from transformers import AutoTokenizer

    answer = background.run(transport.request("GET", f"base_models/{quote(name, safe='')}/tokenizer"))
    if "hub_id" in answer:
        return AutoTokenizer.from_pretrained(answer["hub_id"])
    safe_host = re.sub(r"[^A-Za-z0-9]", "_", transport.base_url)
    target = cache_dir() / "tokenizers" / safe_host / re.sub(r"[^A-Za-z0-9._-]", "_", name)
    for filename, url in answer["files"].items():
        download(url, target / filename)
    return AutoTokenizer.from_pretrained(str(target))

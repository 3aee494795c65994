"""The runner process's resident engines: one per base model, created on first use (after any
fork, inside the worker) and kept for the life of the process."""
from __future__ import annotations

import threading

from django.conf import settings

from gpu_runner import Engine

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(base_model: str) -> Engine:
    with _lock:
        if base_model not in _engines:
            _engines[base_model] = Engine(base_model, data_dir=settings.DATA_DIR)
        return _engines[base_model]

"""Dramatiq middleware: a plain `manage.py rundramatiq` worker recovers like `manage.py runner`.

When a worker boots, cycles a dead runner left `running` on its queues go back to the queue and
dispatch starts again (DESIGN §6). Workers started by `training.worker.start_worker` recover
themselves and are skipped here. Run one runner per base model: its adapters live in its engine.
"""

from __future__ import annotations

import logging

import dramatiq

log = logging.getLogger(__name__)


class RecoverOnBoot(dramatiq.Middleware):
    def after_worker_boot(self, broker, worker):
        if getattr(worker, "lorasmith_managed", False):
            return
        from . import dispatch
        from .base_models import queue_name, served_models
        from .worker import recover_interrupted

        queues = getattr(worker, "consumer_whitelist", None)  # None: the worker consumes every queue
        models = [m for m in served_models() if queues is None or queue_name(m) in queues]
        if not models:
            return
        try:
            recover_interrupted(models)
            for model in models:
                dispatch.dispatch(model)
        except Exception:
            log.exception("recovery on worker boot failed for %s", models)

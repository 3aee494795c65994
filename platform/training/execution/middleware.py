"""Dramatiq middleware: a plain `manage.py rundramatiq` worker recovers like `manage.py runner`.

When a worker boots, cycles a dead runner left `running` on its queues go back to the queue and
dispatch starts again (DESIGN §6). Workers started by `execution.worker.start_worker` recover
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
        # imported here: django_dramatiq builds this middleware while Django's app registry is
        # still loading, before any model can be imported
        from .. import dispatch
        from ..base_models import queue_name, served_models

        queues = getattr(worker, "consumer_whitelist", None)  # None: the worker consumes every queue
        models = [m for m in served_models() if queues is None or queue_name(m) in queues]
        if not models:
            return
        try:
            dispatch.recover(models)
        except Exception:
            log.exception("recovery on worker boot failed for %s", models)

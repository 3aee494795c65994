"""Dramatiq middleware: a plain `manage.py rundramatiq` worker is a runner like `manage.py runner`.

When a worker told `--queues runner.<model>` boots, it registers one runner per such base model on
that shared queue (run one such worker per base model: the queue is not its own), starts its
heartbeat, and recovers: cycles a dead runner left `running` go back to the queue and dispatch
starts again (DESIGN §6). On shutdown it retires its runners. Workers started by
`execution.worker.start_worker` do all this themselves and are skipped here.
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
        from .. import dispatch, runners
        from ..base_models import queue_name, served_models
        from ..models import Runner
        from .worker import start_reporting_alive

        queues = getattr(worker, "consumer_whitelist", None)  # None: the worker consumes every queue
        models = [m for m in served_models() if queues is None or queue_name(m) in queues]
        if not models:
            return
        try:
            for runner_id in (
                Runner.objects.live().filter(queue__in=[queue_name(m) for m in models]).values_list("id", flat=True)
            ):  # a worker before this one on the same queue (killed, or this one restarted)
                dispatch.retire(runner_id, reason="replaced on its queue")
            worker.lorasmith_runner_ids = [runners.register(m, queue=queue_name(m)).id for m in models]
            worker.lorasmith_stop_reporting = start_reporting_alive(worker.lorasmith_runner_ids)
            dispatch.recover(models)
        except Exception:
            log.exception("recovery on worker boot failed for %s", models)

    def after_worker_shutdown(self, broker, worker):
        runner_ids = getattr(worker, "lorasmith_runner_ids", None)
        if not runner_ids or getattr(worker, "lorasmith_managed", False):
            return
        from .worker import retire_all, snapshot_all

        worker.lorasmith_stop_reporting.set()
        snapshot_all(runner_ids)
        retire_all(runner_ids)

"""Starting a runner: a Dramatiq worker consuming the queues of the base models it serves.

One worker thread: the engine is one resident model per GPU, and cycles of a base model never
overlap anyway. Operations left `running` by a runner that died are put back first (DESIGN §6).
"""

from __future__ import annotations

import logging
import threading

import dramatiq
from django.db import DatabaseError, close_old_connections

from .. import dispatch
from ..base_models import queue_name
from . import actors  # noqa: F401 - registers the cycle actor with the broker
from .engines import record_heartbeat, report_alive

log = logging.getLogger(__name__)

ALIVE_EVERY_SECONDS = 60.0  # the overview marks a runner quiet after 10 minutes without a report


class RunnerWorker(dramatiq.Worker):
    lorasmith_managed = True  # recovers itself in start_worker; RecoverOnBoot leaves it alone

    def start(self) -> None:
        super().start()
        self._stop_reporting = threading.Event()
        threading.Thread(
            target=keep_reporting_alive, args=(self._stop_reporting,), name="runner-alive", daemon=True
        ).start()

    def stop(self, timeout: int = 600_000) -> None:
        self._stop_reporting.set()
        super().stop(timeout)


def keep_reporting_alive(stop: threading.Event, every_seconds: float | None = None) -> None:
    """Renew the runner's heartbeat every `every_seconds` until `stop` is set, so that on the
    overview "quiet" means a runner that stopped reporting, not one with nothing to do."""
    while not stop.wait(every_seconds or ALIVE_EVERY_SECONDS):
        try:
            report_alive()
        except DatabaseError as error:  # a busy database: the next report comes soon enough
            log.warning("could not renew the runner heartbeat: %s", error)
        finally:
            close_old_connections()


def start_worker(base_models: list[str]) -> dramatiq.Worker:
    broker = dramatiq.get_broker()
    queues = {queue_name(m) for m in base_models}
    for queue in queues:
        broker.declare_queue(queue)
    worker = RunnerWorker(broker, queues=queues, worker_threads=1)
    worker.start()
    dispatch.recover(base_models)
    for base_model in base_models:  # the overview lists this runner from the start, not after its first cycle
        record_heartbeat(base_model)
    return worker

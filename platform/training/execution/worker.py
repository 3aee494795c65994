"""Starting a runner: a Dramatiq worker consuming the queues of the base models it serves.

One worker thread: the engine is one resident model per GPU, and cycles of a base model never
overlap anyway. Operations left `running` by a runner that died are put back first (DESIGN §6).
"""

from __future__ import annotations

import dramatiq

from .. import dispatch
from ..base_models import queue_name
from . import actors  # noqa: F401 - registers the cycle actor with the broker
from .engines import record_heartbeat


class RunnerWorker(dramatiq.Worker):
    lorasmith_managed = True  # recovers itself in start_worker; RecoverOnBoot leaves it alone


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

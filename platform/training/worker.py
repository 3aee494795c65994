"""Starting a runner: a Dramatiq worker consuming the queues of the base models it serves.

One worker thread: the engine is one resident model per GPU, and cycles of a base model never
overlap anyway. Operations left `running` by a runner that died are put back first (DESIGN §6).
"""

from __future__ import annotations

import dramatiq
from django.db import transaction

from . import dispatch
from .base_models import queue_name
from .models import Operation


def recover_interrupted(base_models: list[str]) -> None:
    with transaction.atomic():
        cycles = set(
            Operation.objects.filter(base_model__in=base_models, status=Operation.Status.RUNNING).values_list(
                "cycle_id", flat=True
            )
        )
    for cycle_id in cycles:
        dispatch.requeue(cycle_id)
    for base_model in base_models:
        dispatch.release_slot(base_model)


def start_worker(base_models: list[str]) -> dramatiq.Worker:
    from . import actors  # noqa: F401 - registers the actor with the broker

    broker = dramatiq.get_broker()
    queues = {queue_name(m) for m in base_models}
    for queue in queues:
        broker.declare_queue(queue)
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=1)
    worker.lorasmith_managed = True  # recovers below; RecoverOnBoot leaves it alone
    worker.start()
    recover_interrupted(base_models)
    for base_model in base_models:
        dispatch.dispatch(base_model)
    return worker

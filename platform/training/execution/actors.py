"""Dramatiq actors: thin shells over `execution.cycle`. Dispatch sends cycles by actor name, each
to the queue of the runner that holds its runs."""

import dramatiq

from .. import dispatch
from ..base_models import queue_name, served_models
from .cycle import execute_cycle as run_cycle


@dramatiq.actor(actor_name=dispatch.CYCLE_ACTOR, max_retries=0, time_limit=3_600_000, queue_name="runner.default")
def execute_cycle(runner_id: str, epoch: int, cycle_id: str, op_ids: list[str]) -> None:
    run_cycle(runner_id, epoch, cycle_id, op_ids)


# `manage.py runner` declares its own queue (`runner.<model>.<id>`). A plain
# `manage.py rundramatiq --queues runner.<model>` registers one runner on the base model's shared
# queue (`middleware.RecoverOnBoot`); a worker only consumes queues its broker has declared.
for _model in served_models():
    dramatiq.get_broker().declare_queue(queue_name(_model))

"""Dramatiq actors: thin shells over `execution.cycle`. Dispatch sends cycles by actor name."""

import dramatiq

from .. import dispatch
from ..base_models import queue_name, served_models
from .cycle import execute_cycle as run_cycle


@dramatiq.actor(actor_name=dispatch.CYCLE_ACTOR, max_retries=0, time_limit=3_600_000, queue_name="runner.default")
def execute_cycle(base_model: str, cycle_id: str, op_ids: list[str]) -> None:
    run_cycle(base_model, cycle_id, op_ids)


# Cycles travel on one queue per base model (dispatch puts each message there). A worker only
# consumes queues its broker has declared, so declare them here: then a plain
# `manage.py rundramatiq --queues runner.<model>` serves them, not only `manage.py runner`.
for _model in served_models():
    dramatiq.get_broker().declare_queue(queue_name(_model))

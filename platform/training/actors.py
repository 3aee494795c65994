"""Dramatiq actors: thin shells over `training.runner`."""

import dramatiq

from . import runner
from .base_models import queue_name, served_models


@dramatiq.actor(max_retries=0, time_limit=3_600_000, queue_name="runner.default")
def execute_cycle(base_model: str, cycle_id: str, op_ids: list[str]) -> None:
    runner.execute_cycle(base_model, cycle_id, op_ids)


# Cycles travel on one queue per base model (dispatch copies each message there). A worker only
# consumes queues its broker has declared, so declare them here: then a plain
# `manage.py rundramatiq --queues runner.<model>` serves them, not only `manage.py runner`.
for _model in served_models():
    dramatiq.get_broker().declare_queue(queue_name(_model))

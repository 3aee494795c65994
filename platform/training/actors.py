"""Dramatiq actors: thin shells over `training.runner`."""
import dramatiq

from . import runner


@dramatiq.actor(max_retries=0, time_limit=3_600_000, queue_name="runner.default")
def execute_cycle(base_model: str, cycle_id: str, op_ids: list[str]) -> None:
    runner.execute_cycle(base_model, cycle_id, op_ids)

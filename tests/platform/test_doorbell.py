"""The Redis broker's doorbell, against the real Redis: an idle consumer waiting far longer than
the test allows is woken by the message's arrival, never misses one sent before it waited, and
the bell stays one item however many messages ring it."""

from __future__ import annotations

import threading
import uuid

import pytest
from dramatiq.message import Message

from tests.conftest import REDIS_TEST_URL, _redis_ok, _require
from training.execution.doorbell import DoorbellRedisBroker

WAIT_MS = 60_000  # the consumer's idle wait: a test that relied on it running out would time out


@pytest.fixture
def broker():
    _require("Redis", _redis_ok())
    broker = DoorbellRedisBroker(url=REDIS_TEST_URL, namespace=f"doorbell-test-{uuid.uuid4().hex[:8]}")
    broker.declare_queue("cycles")
    yield broker
    broker.flush_all()
    broker.client.delete(broker.doorbell("cycles"))
    broker.close()


def message(n: int) -> Message:
    return Message(queue_name="cycles", actor_name="execute_cycle", args=(n,), kwargs={}, options={})


def next_within(consumer, seconds: float):
    """`next(consumer)` on a thread; fails the test if it is still waiting after `seconds`."""
    got: list = []
    thread = threading.Thread(target=lambda: got.append(next(consumer)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the consumer was still waiting after {seconds} s"
    return got[0]


def test_an_idle_consumer_is_woken_by_the_message_not_by_its_wait_running_out(broker):
    consumer = broker.consume("cycles", prefetch=1, timeout=WAIT_MS)
    threading.Timer(0.3, lambda: broker.enqueue(message(1))).start()
    woken = next_within(consumer, 20)  # the wait ends when the bell rings, with nothing yet in hand
    got = woken or next_within(consumer, 5)
    assert got is not None and got.args == (1,)
    consumer.ack(got)
    consumer.close()


def test_a_message_sent_before_the_wait_is_fetched_without_waiting(broker):
    broker.enqueue(message(1))
    broker.client.delete(broker.doorbell("cycles"))  # its bell was answered elsewhere: no wake is left
    consumer = broker.consume("cycles", prefetch=1, timeout=WAIT_MS)
    got = next_within(consumer, 5)
    assert got is not None and got.args == (1,)
    consumer.ack(got)
    consumer.close()


def test_the_bell_holds_one_ring_however_many_messages_ring_it(broker):
    for n in range(5):
        broker.enqueue(message(n))
    assert broker.client.llen(broker.doorbell("cycles")) == 1
    assert 0 < broker.client.ttl(broker.doorbell("cycles")) <= 60
    consumer = broker.consume("cycles", prefetch=5, timeout=WAIT_MS)
    got = [next_within(consumer, 5) for _ in range(5)]
    assert sorted(m.args[0] for m in got) == list(range(5))
    for m in got:
        consumer.ack(m)
    consumer.close()

"""Dramatiq's Redis broker, with a doorbell: an idle consumer waits for the next message instead of
polling for it.

Dramatiq's Redis consumer polls its queue, backing off up to the worker's timeout when it finds
nothing. A quiet runner then picked up its next cycle message up to that long after dispatch sent
it (2 to 12 ms of a 40 ms forward round trip, at a 20 ms cap), and a lower cap costs every idle
runner hundreds of Redis calls a second. Here sending a message also rings its queue's doorbell (a
Redis list of at most one item), and a consumer that finds its queue empty waits on the bell with
BLPOP: it fetches the message as soon as it is sent, and an idle one makes one call per timeout.
The queue stays the truth: the bell only wakes, and a wake that finds nothing waits again.
"""

from __future__ import annotations

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

BELL_TTL_SECONDS = 60  # a bell nobody answers (its runner is gone) does not stay in Redis


class DoorbellRedisBroker(RedisBroker):
    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return DoorbellConsumer

    def doorbell(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.doorbell"

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        sent = super().enqueue(message, delay=delay)
        if delay is None:  # a delayed message goes to its delay queue, whose consumer polls as before
            bell = self.doorbell(sent.queue_name)
            ring = self.client.pipeline(transaction=False)  # one round trip
            ring.lpush(bell, 1)
            ring.ltrim(bell, 0, 0)
            ring.expire(bell, BELL_TTL_SECONDS)
            ring.execute()
        return sent


class DoorbellConsumer(_RedisConsumer):
    """Dramatiq's consumer, but waiting on the bell where it would sleep. It fetches before it
    waits, so a message sent before the bell was answered is never missed."""

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # as dramatiq's own consumer: skip a lost entry
                        continue
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                    if self.message_cache:
                        continue
                # nothing to fetch (or no room to): wait for the bell; the worker handles its acks
                # and checks for shutdown between calls, so the wait is bounded by its timeout
                self.broker.client.blpop([self.broker.doorbell(self.queue_name)], timeout=self.timeout / 1000)
                return None
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None

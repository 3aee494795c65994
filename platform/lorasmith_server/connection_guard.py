"""Two guards on the ASGI server's (daphne's) connections that Twisted alone lacks.

- A deadline for a request's headers and body: Twisted's own timer is an idle timer, reset by
  every byte, so a client sending one header byte every 20 s holds its connection for ever. Here
  a request must have arrived whole within LORASMITH_REQUEST_DEADLINE_SECONDS of its first byte
  (or of the connection opening), or the connection is dropped. Responses, long-polls and
  WebSockets (once upgraded) are not limited by it: only reading a request is.
- A cap on the connections open at once from one client address
  (LORASMITH_MAX_CONNECTIONS_PER_ADDRESS; 0 = none), so one client cannot take every file
  descriptor; one more is closed as soon as it is accepted. Behind a reverse proxy every client
  shares the proxy's address: set it to 0 there and let the proxy limit per client.

`manage.py serve` installs both around daphne's HTTP factory (`install`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import daphne.server
from twisted.internet import reactor
from twisted.protocols import policies
from twisted.web import http


class GuardedProtocol(policies.ProtocolWrapper):
    factory: GuardedFactory

    def __init__(self, factory: Any, wrapped: Any):
        super().__init__(factory, wrapped)
        self.deadline: Any = None
        self.address = ""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self._start_deadline()  # a connection that sends nothing at all is reading its first request

    def dataReceived(self, data: bytes) -> None:
        if self.deadline is None and self._reading_request():
            self._start_deadline()
        super().dataReceived(data)
        if self.deadline is not None and not self._reading_request():
            self._stop_deadline()  # the request arrived whole (or the socket is a WebSocket now)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _reading_request(self) -> bool:
        """Whether the connection is part-way through receiving an HTTP request."""
        channel = getattr(self.wrappedProtocol, "_channel", self.wrappedProtocol)
        return isinstance(channel, http.HTTPChannel) and not channel._handlingRequest

    def _start_deadline(self) -> None:
        seconds = self.factory.request_deadline_seconds
        if seconds and self.deadline is None:
            self.deadline = cast(Any, reactor).callLater(seconds, self._too_slow)

    def _stop_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if self._reading_request() and self.transport is not None:
            cast(Any, self.transport).abortConnection()


class GuardedFactory(policies.WrappingFactory):
    protocol = GuardedProtocol

    def __init__(self, wrapped: Any, request_deadline_seconds: float, max_connections_per_address: int):
        super().__init__(wrapped)
        self.request_deadline_seconds = request_deadline_seconds
        self.max_connections_per_address = max_connections_per_address
        self.open_per_address: Counter[str] = Counter()

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "")
        if self.max_connections_per_address and self.open_per_address[host] >= self.max_connections_per_address:
            return None  # Twisted closes the connection at once
        protocol: Any = super().buildProtocol(addr)
        if protocol is not None:
            protocol.address = host
            self.open_per_address[host] += 1
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        host = getattr(protocol, "address", "")
        self.open_per_address[host] -= 1
        if self.open_per_address[host] <= 0:
            del self.open_per_address[host]
        super().unregisterProtocol(protocol)


def install(request_deadline_seconds: float, max_connections_per_address: int) -> None:
    """Make daphne's Server wrap its HTTP factory in the guards (daphne builds the factory inside
    `Server.run`, so the name it builds it by is replaced)."""
    original = getattr(daphne.server.HTTPFactory, "unguarded", daphne.server.HTTPFactory)

    def guarded(server: Any) -> GuardedFactory:
        return GuardedFactory(original(server), request_deadline_seconds, max_connections_per_address)

    setattr(guarded, "unguarded", original)  # noqa: B010 - a function attribute, read back above
    setattr(daphne.server, "HTTPFactory", guarded)  # noqa: B010 - daphne builds its factory by this name

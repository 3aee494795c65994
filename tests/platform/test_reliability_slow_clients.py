"""Slow and greedy clients cannot hold the server (issue 19, hole 4): a request must arrive whole
within LORASMITH_REQUEST_DEADLINE_SECONDS of its first byte (a client sending a header byte every
so often is dropped, however often it sends), and one address holds at most
LORASMITH_MAX_CONNECTIONS_PER_ADDRESS connections at once; others are served meanwhile."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest

from ..conftest import embedded_server

DEADLINE_SECONDS = 2
PER_ADDRESS = 6
SLOW_REQUEST = b"GET /api/v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    env = {
        "LORASMITH_REQUEST_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        "LORASMITH_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    }
    with embedded_server(tmp_path_factory.mktemp("guarded"), extra_env=env) as server:
        yield server


def _closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def _healthz(server) -> int:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        return client.get("/api/v1/healthz").status_code


@pytest.mark.slow  # its own guarded server, ~30 s to start and drip headers
def test_a_client_sending_a_header_byte_at_a_time_is_dropped_while_others_are_served(guarded_server):
    slow = socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10)
    sent, dropped = 0, False
    try:
        # one byte every half second: 10x the deadline in all, each byte well within any idle timer
        while sent < len(SLOW_REQUEST) and not dropped:
            try:
                slow.sendall(SLOW_REQUEST[sent : sent + 1])
            except ConnectionError:
                dropped = True
                break
            sent += 1
            time.sleep(DEADLINE_SECONDS / 4)
            dropped = _closed_by_server(slow)
            if sent == 10:
                assert _healthz(guarded_server) == 200  # served while the slow client dribbles
    finally:
        slow.close()
    assert dropped and sent < len(SLOW_REQUEST)


def test_one_address_holds_at_most_its_share_of_connections(guarded_server):
    held = [socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10) for _ in range(PER_ADDRESS)]
    try:
        extra = socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10)
        extra.settimeout(10)
        try:
            refused = extra.recv(1) == b""
        except ConnectionError:
            refused = True
        extra.close()
        assert refused
    finally:
        for sock in held:
            sock.close()
    # the held ones closed (and silent ones are dropped by the deadline anyway): served again
    deadline = time.monotonic() + 30
    while _closed_count_pending(guarded_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _healthz(guarded_server) == 200


def _closed_count_pending(server) -> bool:
    """Whether the server still refuses this address (its count not yet back under the cap)."""
    try:
        return _healthz(server) != 200
    except httpx.TransportError:
        return True

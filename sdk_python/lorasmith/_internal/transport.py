"""The one transport under every client: HTTP (retries, backoff, error mapping) and WebSocket
push for futures, with `retrieve_future` long-polling as the fallback that gives the same answer.

Runs only on the background loop (see `background`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as connect_websocket

from ..errors import APIConnectionError, APITimeoutError, LorasmithError, RequestFailedError, error_for_status

log = logging.getLogger("lorasmith")
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
SDK_VERSION = "lorasmith-0.1.0"
OUTAGE_SECONDS = 300.0  # how long a pending future keeps polling through server/network errors
RECONNECT_SECONDS = 30.0  # after the WebSocket drops, futures poll; a new one is tried after this


class Transport:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        use_websocket: bool = True,
        max_retries: int = 5,
        timeout: float = 60.0,
        rate_limit_patience: float = 300.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.http_transport = http_transport  # e.g. httpx.MockTransport in tests, or a proxy
        self.api_key = api_key
        self.max_retries = max_retries
        self.rate_limit_patience = rate_limit_patience  # 429s are retried this long, as Tinker's SDK does
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self.events = EventStream(self) if use_websocket else None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=f"{self.base_url}/api/v1",
                timeout=self.timeout,
                headers={"X-API-Key": self.api_key, "User-Agent": SDK_VERSION},
                transport=self.http_transport,
            )
        return self._http

    async def request(
        self, method: str, path: str, body: dict | None = None, params: dict | None = None, retry: bool = True
    ) -> Any:
        """JSON in, JSON out; 408/429/5xx and connection errors are retried with backoff (a retried
        submit carries the same seq_id, so the server de-duplicates it). A 429 means a quota is
        full and nothing was stored: it is retried, at the server's Retry-After, for up to
        `rate_limit_patience` seconds whatever `max_retries` says."""
        attempts = self.max_retries + 1 if retry else 1
        attempt, limited_since = 0, None
        while True:
            try:
                response = await self.http.request(method, path, json=body, params=params)
            except httpx.TransportError as error:
                attempt += 1
                if attempt >= attempts:
                    kind = APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
                    raise kind(
                        f"cannot reach the Lorasmith server at {self.base_url} ({type(error).__name__}: {error}); "
                        "is it running, and is LORASMITH_BASE_URL right?"
                    ) from error
                await asyncio.sleep(_backoff(attempt - 1))
                continue
            if response.status_code == 429 and retry:
                now = asyncio.get_running_loop().time()
                if limited_since is None:
                    limited_since = now
                    log.warning("%s: %s; retrying for up to %.0f s", path, _error(response), self.rate_limit_patience)
                if now - limited_since < self.rate_limit_patience:
                    await asyncio.sleep(_retry_after(response) or _backoff(min(attempt, 5)))
                    continue
            elif response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                await asyncio.sleep(_retry_after(response) or _backoff(attempt))
                attempt += 1
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response.json() if response.content else None

    async def wait_result(self, request_id: str) -> dict:
        """The finished future's body: from the WebSocket push when it works, else by polling."""
        if self.events is not None:
            try:
                return _raise_if_failed(await self.events.wait(request_id), request_id)
            except EventStreamLost:
                log.info("WebSocket unavailable; polling for %s", request_id)
        return _raise_if_failed(await self.poll(request_id), request_id)

    async def poll(self, request_id: str) -> dict:
        """Long-poll until done (no HTTP-layer retries: this loop is the retry). 408 means "still
        pending"; an accepted request is durable on the server, so server and network errors are
        waited out with backoff for up to OUTAGE_SECONDS rather than failing the future."""
        outage_since: float | None = None
        failures = 0
        while True:
            try:
                answer = await self.request(
                    "POST", "retrieve_future", {"request_id": request_id, "allow_metadata_only": False}, retry=False
                )
            except LorasmithError as error:
                status = getattr(error, "status_code", None)
                if status == 408:
                    continue
                if not isinstance(error, APIConnectionError) and status not in RETRY_STATUSES:
                    raise
                now = asyncio.get_running_loop().time()
                outage_since = outage_since or now
                if now - outage_since > OUTAGE_SECONDS:
                    raise
                await asyncio.sleep(getattr(error, "retry_after", None) or _backoff(min(failures, 5)))
                failures += 1
                continue
            outage_since, failures = None, 0
            if answer.get("type") != "try_again":
                return answer

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        if self._http is not None:
            await self._http.aclose()


class EventStreamLost(Exception):
    """The WebSocket is down; callers fall back to polling."""


class EventStream:
    """One WebSocket per transport; futures wait on it and fail over to polling when it drops. A
    dropped or refused socket is tried again RECONNECT_SECONDS later."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.waiters: dict[str, asyncio.Future] = {}
        self.run_queues: dict[str, list[asyncio.Queue]] = {}  # model_id -> live metrics subscribers
        self.socket: ClientConnection | None = None
        self.reader: asyncio.Task | None = None
        self.broken_at: float | None = None
        self._connecting = asyncio.Lock()

    async def wait(self, request_id: str) -> dict:
        socket = await self._connect()
        waiter = self.waiters.get(request_id) or asyncio.get_running_loop().create_future()
        self.waiters[request_id] = waiter
        try:
            await socket.send(json.dumps({"type": "subscribe_futures", "request_ids": [request_id]}))
        except Exception as error:
            self._lost(socket)
            raise EventStreamLost() from error
        return await waiter

    async def subscribe_run(self, model_id: str) -> asyncio.Queue:
        """A queue of the model's metrics pushes ({"step", "metrics"}); None marks the socket's end."""
        socket = await self._connect()
        queue: asyncio.Queue = asyncio.Queue()
        self.run_queues.setdefault(model_id, []).append(queue)
        await socket.send(json.dumps({"type": "subscribe_run", "model_id": model_id}))
        return queue

    async def _connect(self):
        async with self._connecting:
            now = asyncio.get_running_loop().time()
            if self.broken_at is not None and now - self.broken_at < RECONNECT_SECONDS:
                raise EventStreamLost()
            if self.socket is not None:
                return self.socket
            url = self.transport.base_url.replace("http://", "ws://").replace("https://", "wss://") + "/ws/v1/events"
            try:
                socket = await connect_websocket(
                    url, additional_headers={"X-API-Key": self.transport.api_key}, open_timeout=10
                )
            except Exception as error:
                self.broken_at = now
                raise EventStreamLost() from error
            self.socket, self.broken_at = socket, None
            self.reader = asyncio.ensure_future(self._read(socket))
            return socket

    async def _read(self, socket) -> None:
        try:
            async for raw in socket:
                message = json.loads(raw)
                if message.get("type") == "future":
                    waiter = self.waiters.pop(message["request_id"], None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message["result"])
                elif message.get("type") == "metrics":
                    for queue in self.run_queues.get(message["model_id"], []):
                        queue.put_nowait({"step": message["step"], "metrics": message["metrics"]})
        except Exception:  # noqa: BLE001 - any failure means: fall back to polling
            pass
        self._lost(socket)

    def _lost(self, socket) -> None:
        if socket is not self.socket:
            return  # an older connection, already replaced
        self.socket = None
        self.broken_at = asyncio.get_running_loop().time()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(EventStreamLost())
        self.waiters.clear()
        for queues in self.run_queues.values():
            for queue in queues:
                queue.put_nowait(None)
        self.run_queues.clear()

    async def close(self) -> None:
        """Also used by tests to cut the connection: pending futures then resolve by polling."""
        socket = self.socket
        if socket is not None:
            await socket.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
        self._lost(socket)


def _raise_if_failed(answer: dict, request_id: str) -> dict:
    if "error" in answer and "category" in answer:
        raise RequestFailedError(answer["error"], request_id, answer.get("category", "unknown"))
    return answer


def _error(response: httpx.Response):
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("error") or body.get("detail") or response.text or f"HTTP {response.status_code}"
    error = error_for_status(response.status_code, str(message), body.get("field"))
    error.retry_after = _retry_after(response)
    error.consumed_seq_id = body.get("consumed_seq_id")
    return error


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 10.0) * random.uniform(0.75, 1.25)


def _retry_after(response: httpx.Response) -> float | None:
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = float(response.headers[header]) * scale
        except (KeyError, ValueError):
            continue
        if 0 < value <= 60:
            return value
    return None

"""The one transport under every client: HTTP (retries, backoff, error mapping) and WebSocket
push for futures, with `retrieve_future` long-polling as the fallback that gives the same answer.

Push is an optimisation, the database is the truth. A push message can be lost (a full channel
layer, a failed lookup, a half-open socket), so a future waiting on the socket is never waiting on
the push alone: after PUSH_QUIET_SECONDS without its push, it checks `retrieve_future` itself (an
answer waited on for CHECK_SECONDS at most, at most CHECK_CONCURRENCY at once), then again after
gaps that double up to RECONCILE_MAX_SECONDS, each jittered so many futures never check in step.
A future so resolves at most about RECONCILE_MAX_SECONDS after it finished with no push at all,
and at once when the push arrives. A server `error` frame naming a future means "poll it": it
prompts an early check and never fails the future. A dropped socket fails every waiter over to
long-polling; a new socket is tried RECONNECT_SECONDS later.

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
PUSH_QUIET_SECONDS = 2.0  # no push for a future this long: check retrieve_future for it
RECONCILE_MAX_SECONDS = 4.0  # the gap between a future's checks doubles up to this
CHECK_SECONDS = 1.0  # a check waits this long for retrieve_future's answer (it long-polls), then: pending
CHECK_CONCURRENCY = 16  # checks in flight per transport, so they never crowd out other requests
WAKE_JITTER_SECONDS = 0.5  # a server `error` naming a future prompts its check within this
SEND_SECONDS = 10.0  # a subscribe frame not sent by then means the socket is gone


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
        push_quiet_seconds: float = PUSH_QUIET_SECONDS,
        reconcile_max_seconds: float = RECONCILE_MAX_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ):
        self.base_url = base_url.rstrip("/")
        self.http_transport = http_transport  # e.g. httpx.MockTransport in tests, or a proxy
        self.api_key = api_key
        self.max_retries = max_retries
        self.rate_limit_patience = rate_limit_patience  # 429s are retried this long, as Tinker's SDK does
        self.timeout = timeout
        self.push_quiet_seconds = push_quiet_seconds  # see the module docstring; tests shorten these
        self.reconcile_max_seconds = reconcile_max_seconds
        self.check_seconds = check_seconds
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
        """The finished future's body: from the WebSocket push, or from retrieve_future when the
        push is late (checked with backoff) or the socket is down (long-polled)."""
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
    """One WebSocket per transport; futures wait on it, reconcile with retrieve_future when their
    push is late, and fail over to polling when it drops. A dropped or refused socket is tried
    again RECONNECT_SECONDS later."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.waiters: dict[str, asyncio.Future] = {}
        self.wakes: dict[str, asyncio.Future] = {}  # request_id -> set: check it now ("poll it")
        self.run_queues: dict[str, list[asyncio.Queue]] = {}  # model_id -> live metrics subscribers
        self.socket: ClientConnection | None = None
        self.reader: asyncio.Task | None = None
        self.broken_at: float | None = None
        self._connecting = asyncio.Lock()
        self._checks = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def wait(self, request_id: str) -> dict:
        socket = await self._connect()
        waiter = self.waiters.get(request_id)
        if waiter is None:
            waiter = self.waiters[request_id] = asyncio.get_running_loop().create_future()
        try:
            message = json.dumps({"type": "subscribe_futures", "request_ids": [request_id]})
            await asyncio.wait_for(socket.send(message), SEND_SECONDS)
        except Exception as error:
            self._lost(socket)
            raise EventStreamLost() from error
        try:
            return await self._reconciled(request_id, waiter)
        finally:
            if self.waiters.get(request_id) is waiter and waiter.done():
                del self.waiters[request_id]
            if request_id not in self.waiters:
                self.wakes.pop(request_id, None)

    async def _reconciled(self, request_id: str, waiter: asyncio.Future) -> dict:
        """The push for `request_id`, or retrieve_future's answer once it is quiet too long (see
        the module docstring). Raises EventStreamLost when the socket drops meanwhile."""
        loop = asyncio.get_running_loop()
        gap = self.transport.push_quiet_seconds
        while True:
            wake = self.wakes.get(request_id)
            if wake is None:
                wake = self.wakes[request_id] = loop.create_future()
            await asyncio.wait(
                {waiter, wake}, timeout=gap * random.uniform(0.8, 1.2), return_when=asyncio.FIRST_COMPLETED
            )
            if waiter.done():
                return waiter.result()
            if self.wakes.get(request_id) is wake:
                del self.wakes[request_id]  # a wake from now on prompts the next check
            check = asyncio.ensure_future(self._check(request_id))
            try:
                await asyncio.wait({waiter, check}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not check.done():
                    check.cancel()
            if waiter.done():
                return waiter.result()
            try:
                answer = check.result()
            except LorasmithError:  # definitive (e.g. 404), as polling would raise it
                if self.waiters.get(request_id) is waiter:
                    del self.waiters[request_id]
                raise
            if answer is not None:
                self._settle(request_id, answer)
                return answer
            gap = min(gap * 2, self.transport.reconcile_max_seconds)

    async def _check(self, request_id: str) -> dict | None:
        """The finished future's body from retrieve_future, or None while it is pending or the
        server is unreachable or busy (the next check tries again)."""
        body = {"request_id": request_id, "allow_metadata_only": False}
        async with self._checks:
            try:
                answer = await asyncio.wait_for(
                    self.transport.request("POST", "retrieve_future", body, retry=False), self.transport.check_seconds
                )
            except (TimeoutError, ValueError):  # still pending, or a body that is not JSON (a proxy's page)
                return None
            except LorasmithError as error:
                if isinstance(error, APIConnectionError) or getattr(error, "status_code", None) in RETRY_STATUSES:
                    return None
                raise
        return None if answer.get("type") == "try_again" else answer

    def _settle(self, request_id: str, result: dict) -> None:
        waiter = self.waiters.pop(request_id, None)
        self.wakes.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _wake(self, request_id: str) -> None:
        if request_id not in self.waiters:
            return
        wake = self.wakes.get(request_id)
        if wake is None:
            wake = self.wakes[request_id] = asyncio.get_running_loop().create_future()
        if not wake.done():
            wake.set_result(None)

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
                try:
                    self._handle(json.loads(raw))
                except Exception:  # a frame not understood is skipped; checks cover its future
                    log.warning("ignoring a WebSocket frame not understood: %.200r", raw, exc_info=True)
        except Exception:  # noqa: BLE001 - any failure means: fall back to polling
            pass
        self._lost(socket)

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "future":
            self._settle(message["request_id"], message["result"])
        elif kind == "error":
            request_id = message.get("request_id")
            if isinstance(request_id, str) and request_id in self.waiters:  # "poll it"; never a failure
                log.debug("server could not push %s (%s); checking it", request_id, message.get("error"))
                delay = random.uniform(0, WAKE_JITTER_SECONDS)  # many at once: no herd
                asyncio.get_running_loop().call_later(delay, self._wake, request_id)
            else:
                log.warning("WebSocket error from server: %s (field %s)", message.get("error"), message.get("field"))
        elif kind == "metrics":
            for queue in self.run_queues.get(message["model_id"], []):
                queue.put_nowait({"step": message["step"], "metrics": message["metrics"]})

    def _lost(self, socket) -> None:
        if socket is not self.socket:
            return  # an older connection, already replaced
        self.socket = None
        self.broken_at = asyncio.get_running_loop().time()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(EventStreamLost())
        self.waiters.clear()
        self.wakes.clear()
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

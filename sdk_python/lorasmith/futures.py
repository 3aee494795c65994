"""Futures returned by every SDK call: `.result(timeout)` blocks, `await fut` works on any loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class APIFuture(Generic[T]):
    def __init__(
        self,
        future: concurrent.futures.Future,
        convert: Callable[[Any], T] | None = None,
        accepted: concurrent.futures.Future | None = None,
    ):
        self._future = future
        self._convert = convert
        self.accepted = accepted  # resolves when the server accepted the request (training requests)

    async def submitted(self) -> APIFuture[T]:
        """This future, once the server has accepted the request: the first await of `*_async`."""
        if self.accepted is not None:
            await asyncio.wrap_future(self.accepted)
        return self

    def result(self, timeout: float | None = None, progress: bool = False) -> T:
        """Block for the value; `progress=True` shows a tqdm bar of the elapsed wait."""
        if progress:
            return wait_all([self], timeout, progress=True, desc="waiting")[0]
        value = self._future.result(timeout)
        return self._convert(value) if self._convert else value

    async def result_async(self, timeout: float | None = None) -> T:
        value = await asyncio.wait_for(asyncio.wrap_future(self._future), timeout)
        return self._convert(value) if self._convert else value

    def __await__(self):
        return self.result_async().__await__()

    def done(self) -> bool:
        return self._future.done()

    def future(self) -> concurrent.futures.Future:
        return self._future


def wait_all(
    futures: Sequence[APIFuture], timeout: float | None = None, progress: bool = True, desc: str = "requests"
) -> list:
    """The results of `futures` in their order, with a tqdm bar counting completions (long waits)."""
    bar = None
    if progress:
        bar = tqdm(total=len(futures), desc=desc, unit="req")
    try:
        for _ in concurrent.futures.as_completed([f.future() for f in futures], timeout):
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [f.result() for f in futures]


class ClientFutureCompat:
    """Tinker's client factories return a future of the client; ours return the client itself,
    which also answers `.result()` and `await` with itself, so both styles of code run."""

    def result(self, timeout: float | None = None):
        """The client itself, as Tinker's future of a client would give it.

        Args:
            timeout: Accepted for Tinker compatibility; nothing is waited for.

        Returns:
            This client.

        Example:
            training = service.create_lora_training_client("tiny-llama").result()
        """
        return self

    def __await__(self):
        async def itself():
            return self

        return itself().__await__()

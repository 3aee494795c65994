"""ServiceClient: the entry point. Holds the session (created lazily, heartbeat in the background)
and makes training, sampling and REST clients."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any

from ._internal import background
from ._internal.transport import SDK_VERSION, Transport
from .errors import LorasmithError, NotFoundError
from .types import LoraConfig

HEARTBEAT_SECONDS = 10.0
log = logging.getLogger("lorasmith")


def _setting(explicit: str | None, *names: str) -> str | None:
    if explicit:
        return explicit
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


class ServiceClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        use_websocket: bool = True,
        user_metadata: dict | None = None,
        display_name: str | None = None,
        project_id: str | None = None,
        max_retries: int = 5,
        rate_limit_patience: float = 300.0,
        http_transport: Any | None = None,
    ):
        base_url = _setting(base_url, "LORASMITH_BASE_URL", "TINKER_BASE_URL")
        api_key = _setting(api_key, "LORASMITH_API_KEY", "TINKER_API_KEY")
        if not base_url:
            raise LorasmithError("no server: pass base_url= or set LORASMITH_BASE_URL")
        if not api_key or not api_key.startswith("tml-"):
            raise LorasmithError("no valid API key: pass api_key= or set LORASMITH_API_KEY (keys start with 'tml-')")
        self.transport = Transport(
            base_url,
            api_key,
            use_websocket=use_websocket,
            max_retries=max_retries,
            rate_limit_patience=rate_limit_patience,
            http_transport=http_transport,
        )
        self.user_metadata = user_metadata or {}
        self.session_extras = {k: v for k, v in (("display_name", display_name), ("project_id", project_id)) if v}
        self._session_id: str | None = None
        self.client_config: dict = {}  # the server's answer to client/config (chunk limits, flags)
        self._session_lock = threading.Lock()
        self._model_seq = itertools.count()
        self._sampler_seq = itertools.count()
        self._heartbeat: Any | None = None
        self._closed = False

    # ---- session ---------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        with self._session_lock:
            if self._closed:
                raise LorasmithError("this ServiceClient is closed; make a new one")
            if self._session_id is None:
                self.client_config = (
                    background.run(self.transport.request("POST", "client/config", {"sdk_version": SDK_VERSION})) or {}
                )
                answer = background.run(
                    self.transport.request(
                        "POST",
                        "create_session",
                        {
                            "tags": [],
                            "user_metadata": self.user_metadata,
                            "sdk_version": SDK_VERSION,
                            "type": "create_session",
                            **self.session_extras,
                        },
                    )
                )
                self._session_id = answer["session_id"]
                for level, key in (
                    (logging.INFO, "info_message"),
                    (logging.WARNING, "warning_message"),
                    (logging.ERROR, "error_message"),
                ):
                    if answer.get(key):
                        log.log(level, "server: %s", answer[key])
                self._heartbeat = background.submit(self._beat())
            return self._session_id

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.transport.request(
                    "POST",
                    "session_heartbeat",
                    {"session_id": self._session_id, "type": "session_heartbeat"},
                    retry=False,
                )
            except NotFoundError:
                return  # 410/404: the session is over
            except LorasmithError:
                continue

    def close(self, status: str = "success", detail: str | None = None) -> None:
        """Finish the session (`status`: success | errored | interrupted). Idempotent; a server that
        cannot be reached is logged, not raised, so leaving a `with` block never hides your error."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            if self._session_id is not None:
                background.run(
                    self.transport.request(
                        "POST", f"sessions/{self._session_id}/finish", {"reason": {"type": status}, "detail": detail}
                    )
                )
        except LorasmithError as error:
            log.warning("could not finish session %s: %s", self._session_id, error)
        finally:
            background.run(self.transport.close())

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, exc_type, exc, _) -> None:
        if exc_type is None:
            self.close("success")
        else:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "errored", detail=repr(exc))

    # ---- factories -------------------------------------------------------------------------

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict | None = None,
    ):
        from .training import TrainingClient

        config = LoraConfig(
            rank=rank, seed=seed, train_mlp=train_mlp, train_attn=train_attn, train_unembed=train_unembed
        )
        body = {
            "session_id": self.session_id,
            "model_seq_id": next(self._model_seq),
            "base_model": base_model,
            "lora_config": config.model_dump(exclude_none=True),
            "optimizer_config": {"type": "adamw"},
            "user_metadata": user_metadata or {},
            "type": "create_model",
        }

        async def create():
            handle = await self.transport.request("POST", "create_model", body)
            result = await self.transport.wait_result(handle["request_id"])
            return await TrainingClient.connect(self, result["model_id"])

        return background.run(create())

    def create_training_client_from_state(self, path: str, user_metadata: dict | None = None):
        return self._load(path, optimizer=False, user_metadata=user_metadata)

    def create_training_client_from_state_with_optimizer(self, path: str, user_metadata: dict | None = None):
        return self._load(path, optimizer=True, user_metadata=user_metadata)

    def _load(self, path: str, optimizer: bool, user_metadata: dict | None):
        from .training import TrainingClient

        session = self.session_id
        seq = next(self._model_seq)
        body = {
            "session_id": session,
            "model_seq_id": seq,
            "path": path,
            "optimizer": optimizer,
            "user_metadata": user_metadata or {},
            "type": "load_weights",
        }

        async def load():
            handle = await self.transport.request("POST", "load_weights", body)
            await self.transport.wait_result(handle["request_id"])
            return await TrainingClient.connect(self, f"{session}:train:{seq}", next_seq=1)

        return background.run(load())

    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ):
        """`retry_config` and `record_stability_info` are accepted for Tinker compatibility; this
        SDK's retries are set on the ServiceClient (`max_retries`, `rate_limit_patience`)."""
        from .sampling import SamplingClient

        if not model_path and not base_model:
            raise LorasmithError("create_sampling_client needs model_path or base_model")
        body = {
            "session_id": self.session_id,
            "sampling_session_seq_id": next(self._sampler_seq),
            "type": "create_sampling_session",
        }
        body.update({"model_path": model_path} if model_path else {"base_model": base_model})
        answer = background.run(self.transport.request("POST", "create_sampling_session", body))
        return SamplingClient.for_session(self, answer["sampling_session_id"])

    def next_sampler_seq(self) -> int:
        return next(self._sampler_seq)

    def create_rest_client(self):
        from .rest import RestClient

        return RestClient(transport=self.transport)

    def get_server_capabilities(self) -> dict:
        return background.run(self.transport.request("GET", "get_server_capabilities"))

    # ---- async twins (the creators block on several round trips, so they run in a worker thread)

    async def create_lora_training_client_async(self, base_model: str, **kwargs):
        return await asyncio.to_thread(self.create_lora_training_client, base_model, **kwargs)

    async def create_training_client_from_state_async(self, path: str, user_metadata: dict | None = None):
        return await asyncio.to_thread(self.create_training_client_from_state, path, user_metadata)

    async def create_training_client_from_state_with_optimizer_async(
        self, path: str, user_metadata: dict | None = None
    ):
        return await asyncio.to_thread(self.create_training_client_from_state_with_optimizer, path, user_metadata)

    async def create_sampling_client_async(
        self, model_path: str | None = None, base_model: str | None = None, **options
    ):
        return await asyncio.to_thread(self.create_sampling_client, model_path, base_model, **options)

    async def get_server_capabilities_async(self) -> dict:
        return await asyncio.to_thread(self.get_server_capabilities)

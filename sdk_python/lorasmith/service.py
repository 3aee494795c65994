"""ServiceClient: the entry point. Holds the session (created lazily, heartbeat in the background)
and makes training, sampling and REST clients."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any

from ._internal import background
from ._internal.config import make_transport
from ._internal.transport import SDK_VERSION
from .errors import LorasmithError, NotFoundError
from .rest import RestClient
from .sampling import SamplingClient
from .training import TrainingClient
from .types import LoraConfig

HEARTBEAT_SECONDS = 10.0
log = logging.getLogger("lorasmith")


class ServiceClient:
    """The entry point: one session on a Lorasmith server, and the factory of the other clients.

    The session is created on first use and kept alive by a background heartbeat; `close()` (or
    leaving a `with` block) finishes it.

    Args:
        base_url: The server, e.g. `"http://127.0.0.1:8000"`; defaults to `LORASMITH_BASE_URL`, then
            `TINKER_BASE_URL`.
        api_key: A key starting with `tml-`; defaults to `LORASMITH_API_KEY`, then `TINKER_API_KEY`.
        use_websocket: Resolve futures from the server's WebSocket push (falling back to polling);
            `False` polls only.
        user_metadata: Stored with the session.
        display_name: The session's name on the dashboard.
        project_id: The project the session belongs to.
        max_retries: Retries of a request on 408/5xx and connection errors.
        rate_limit_patience: Seconds a request refused with 429 (a full quota) is retried.
        http_transport: An `httpx.AsyncBaseTransport` to send requests through (tests, proxies).

    Raises:
        LorasmithError: No server or no valid API key is configured.

    Example:
        with lorasmith.ServiceClient(base_url="http://127.0.0.1:8000", api_key="tml-...") as service:
            training = service.create_lora_training_client("tiny-llama", rank=16)
    """

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
        self.transport = make_transport(
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
        """The server's id of this client's session, created (with the heartbeat) on first access.

        Returns:
            The session id. Creating it also fetches the server's `client/config` into
            `client_config` and logs the server's info/warning/error messages.

        Raises:
            LorasmithError: The client is closed, or the server refused the session.

        Example:
            print(service.session_id)
        """
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
        """Finish the session, stop the heartbeat and close the connections. Idempotent.

        A server that cannot be reached is logged, not raised, so leaving a `with` block never
        hides your own error.

        Args:
            status: How the session ended: `"success"`, `"errored"` or `"interrupted"`.
            detail: A note stored with the session's end (e.g. the error's repr).

        Returns:
            None.

        Example:
            service.close("errored", detail="diverged at step 40")
        """
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
    ) -> TrainingClient:
        """Create a new LoRA model on `base_model` and a client to train it. Blocks until it exists.

        Args:
            base_model: The base model's name on the server (see `get_server_capabilities`).
            rank: The LoRA rank.
            seed: Seeds the adapter's initialisation; the server picks one if None.
            train_mlp: Put adapters on the MLP layers.
            train_attn: Put adapters on the attention layers.
            train_unembed: Put an adapter on the unembedding.
            user_metadata: Stored with the training run.

        Returns:
            A TrainingClient of the new model.

        Example:
            training = service.create_lora_training_client("tiny-llama", rank=16)
        """
        config = LoraConfig(
            rank=rank, seed=seed, train_mlp=train_mlp, train_attn=train_attn, train_unembed=train_unembed
        )
        return self._create_model(
            "create_model",
            {
                "base_model": base_model,
                "lora_config": config.model_dump(exclude_none=True),
                "optimizer_config": {"type": "adamw"},
                "user_metadata": user_metadata or {},
                "type": "create_model",
            },
        )

    def create_training_client_from_state(self, path: str, user_metadata: dict | None = None) -> TrainingClient:
        """Create a new model from a training checkpoint's weights (a fresh optimizer). Blocks until loaded.

        Args:
            path: A training checkpoint, `tinker://<run>/weights/<name>` (from `save_state`).
            user_metadata: Stored with the new training run.

        Returns:
            A TrainingClient of the new model.

        Example:
            training = service.create_training_client_from_state(saved.path)
        """
        return self._load(path, optimizer=False, user_metadata=user_metadata)

    def create_training_client_from_state_with_optimizer(
        self, path: str, user_metadata: dict | None = None
    ) -> TrainingClient:
        """Like `create_training_client_from_state`, also restoring the optimizer's state.

        Args:
            path: A training checkpoint, `tinker://<run>/weights/<name>` (from `save_state`).
            user_metadata: Stored with the new training run.

        Returns:
            A TrainingClient of the new model, resuming where the checkpoint's run stopped.

        Example:
            training = service.create_training_client_from_state_with_optimizer(saved.path)
        """
        return self._load(path, optimizer=True, user_metadata=user_metadata)

    def _load(self, path: str, optimizer: bool, user_metadata: dict | None) -> TrainingClient:
        return self._create_model(
            "load_weights",
            {
                "path": path,
                "optimizer": optimizer,
                "user_metadata": user_metadata or {},
                "type": "load_weights",
            },
        )

    def _create_model(self, endpoint: str, body: dict) -> TrainingClient:
        """Submit a model's seq 0 (create or load) and connect to the model id the server answers."""
        body = {"session_id": self.session_id, "model_seq_id": next(self._model_seq), **body}

        async def create() -> TrainingClient:
            handle = await self.transport.request("POST", endpoint, body)
            result = await self.transport.wait_result(handle["request_id"])
            return await TrainingClient.connect(self, result["model_id"])

        return background.run(create())

    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> SamplingClient:
        """Create a sampler on sampler weights or on a base model.

        Args:
            model_path: Sampler weights, `tinker://<run>/sampler_weights/<name>` (from
                `save_weights_for_sampler`); takes precedence over `base_model`.
            base_model: A base model's name, to sample it without an adapter.
            retry_config: Accepted for Tinker compatibility and ignored; retries are set on the
                ServiceClient (`max_retries`, `rate_limit_patience`).
            record_stability_info: Accepted for Tinker compatibility and ignored.

        Returns:
            A SamplingClient.

        Raises:
            LorasmithError: Neither `model_path` nor `base_model` is given.

        Example:
            sampler = service.create_sampling_client(model_path=saved.path)
        """
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
        """Reserve the next sampling-session seq id of this session (used by the other clients).

        Returns:
            A seq id no other sampler of this ServiceClient gets.

        Example:
            seq = service.next_sampler_seq()
        """
        return next(self._sampler_seq)

    def create_rest_client(self) -> RestClient:
        """A RestClient (runs, checkpoints, sessions) sharing this client's connection.

        Returns:
            A RestClient on this ServiceClient's transport.

        Example:
            runs = service.create_rest_client().list_training_runs().result()
        """
        return RestClient(transport=self.transport)

    def get_server_capabilities(self) -> dict:
        """What the server offers, e.g. its base models.

        Returns:
            The server's `get_server_capabilities` answer.

        Example:
            models = service.get_server_capabilities()["supported_models"]
        """
        return background.run(self.transport.request("GET", "get_server_capabilities"))

    # ---- async twins (the creators block on several round trips, so they run in a worker thread)

    async def create_lora_training_client_async(self, base_model: str, **kwargs) -> TrainingClient:
        """Async `create_lora_training_client` (same arguments)."""
        return await asyncio.to_thread(self.create_lora_training_client, base_model, **kwargs)

    async def create_training_client_from_state_async(
        self, path: str, user_metadata: dict | None = None
    ) -> TrainingClient:
        """Async `create_training_client_from_state`."""
        return await asyncio.to_thread(self.create_training_client_from_state, path, user_metadata)

    async def create_training_client_from_state_with_optimizer_async(
        self, path: str, user_metadata: dict | None = None
    ) -> TrainingClient:
        """Async `create_training_client_from_state_with_optimizer`."""
        return await asyncio.to_thread(self.create_training_client_from_state_with_optimizer, path, user_metadata)

    async def create_sampling_client_async(
        self, model_path: str | None = None, base_model: str | None = None, **options
    ) -> SamplingClient:
        """Async `create_sampling_client` (same arguments)."""
        return await asyncio.to_thread(self.create_sampling_client, model_path, base_model, **options)

    async def get_server_capabilities_async(self) -> dict:
        """Async `get_server_capabilities`."""
        return await asyncio.to_thread(self.get_server_capabilities)

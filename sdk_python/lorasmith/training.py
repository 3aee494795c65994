"""TrainingClient: one LoRA model on the server. Every method reserves its seq_id at call time and
returns a future at once; requests of the model are POSTed strictly in seq order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._internal import background
from ._internal.transport import EventStreamLost
from .errors import APIError, LorasmithError
from .futures import APIFuture, ClientFutureCompat
from .sampling import SamplingClient
from .tokenizer import load_tokenizer
from .types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetInfoResponse,
    OptimStepResponse,
    SaveWeightsResponse,
    TensorData,
    reduce_metrics,
)

if TYPE_CHECKING:
    from .service import ServiceClient

T = TypeVar("T")

MAX_CHUNK_DATUMS = 1024
MAX_CHUNK_BYTES = 4_000_000  # of JSON; under a 4 MiB request body limit
# fills a seq reserved but never sent (a custom loss that raised): one token, forward only, zero weight
NO_OP = {
    "data": [
        {
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": [0]}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": [0], "dtype": "int64", "shape": [1]},
                "weights": {"data": [0.0], "dtype": "float32", "shape": [1]},
            },
        }
    ],
    "loss_fn": "cross_entropy",
    "loss_fn_config": None,
    "forward_only": True,
    "type": "forward_backward",
}


class TrainingClient(ClientFutureCompat):
    """One LoRA model on the server. Made by `ServiceClient.create_lora_training_client` or
    `create_training_client_from_state*`.

    Every training method reserves the model's next seq id when called and returns an APIFuture
    at once; the server runs a model's requests in seq order, so calls made one after another
    run one after another without waiting for each result.

    Example:
        training = service.create_lora_training_client("tiny-llama", rank=16)
        fb = training.forward_backward(data, "cross_entropy")
        step = training.optim_step(AdamParams(learning_rate=1e-4))
        print(fb.result().metrics["loss:sum"], step.result().metrics)
    """

    def __init__(self, service: ServiceClient, model_id: str, info: dict, next_seq: int = 1):
        self.service = service
        self.transport = service.transport
        self.model_id = model_id
        self._info = GetInfoResponse(**info)
        self._next_seq = next_seq
        self._first_seq = next_seq
        self._lock = threading.RLock()
        self._accepted: dict[int, asyncio.Event] = {}  # touched only on the background loop
        self._poisoned: str | None = None

    @classmethod
    async def connect(cls, service: ServiceClient, model_id: str, next_seq: int = 1) -> TrainingClient:
        """A client of an existing model, after fetching its info (runs on the SDK's loop).

        Args:
            service: The ServiceClient whose session and connection it uses.
            model_id: The model's id, as the server gave it.
            next_seq: The seq id of the model's next request (seq 0 created or loaded it).

        Returns:
            A TrainingClient of the model.

        Example:
            training = await TrainingClient.connect(service, model_id)
        """
        info = await service.transport.request("POST", "get_info", {"model_id": model_id, "type": "get_info"})
        return cls(service, model_id, info, next_seq)

    # ---- ordering ---------------------------------------------------------------------------

    def _reserve(self, count: int = 1) -> list[int]:
        with self._lock:
            seqs = list(range(self._next_seq, self._next_seq + count))
            self._next_seq += count
            return seqs

    def _event(self, seq: int) -> asyncio.Event:
        return self._accepted.setdefault(seq, asyncio.Event())

    async def _post_in_order(self, seq: int, path: str, body: dict) -> dict:
        """POST once every lower seq of this model has been accepted by the server.

        The server runs a model's requests only without gaps. A request it refuses at the door
        still uses up its seq (the answer says `consumed_seq_id`), so later requests go on; any
        other failure leaves the seq's fate unknown, and the client is poisoned: every later
        request fails at once instead of waiting forever behind a gap."""
        if seq > self._first_seq:
            await self._event(seq - 1).wait()
        try:
            if self._poisoned is not None:
                raise LorasmithError(
                    f"request {seq} of {self.model_id} was not sent: an earlier request of this TrainingClient was "
                    f"not accepted ({self._poisoned}), and the server runs a model's requests only without gaps. "
                    "Continue with a new client (e.g. create_training_client_from_state of your last save_state)."
                )
            return await self._post(seq, path, body)
        except APIError as refused:
            if refused.consumed_seq_id != seq:
                self._poisoned = f"{type(refused).__name__}: {refused}"
            raise
        except BaseException as error:
            if self._poisoned is None:
                self._poisoned = f"{type(error).__name__}: {error}"
            raise
        finally:
            self._event(seq).set()
            self._accepted.pop(seq - 1, None)

    async def _post(self, seq: int, path: str, body: dict) -> dict:
        return await self.transport.request("POST", path, {**body, "model_id": self.model_id, "seq_id": seq})

    def _submit(self, path: str, body: dict[str, Any], convert: Callable[[dict], Any]) -> APIFuture:
        (seq,) = self._reserve()
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        async def go():
            handle = await _accept(accepted, self._post_in_order(seq, path, body))
            return await self.transport.wait_result(handle["request_id"])

        return APIFuture(background.submit(go()), convert, accepted=accepted)

    def _chunks(self, data: list[dict]) -> list[list[dict]]:
        """Split a batch into requests within the server's chunk limits (its client/config may set
        `fwdbwd_max_chunk_len` and `fwdbwd_max_chunk_bytes_count`, as Tinker's does)."""
        config = self.service.client_config
        max_datums = config.get("fwdbwd_max_chunk_len") or MAX_CHUNK_DATUMS
        max_bytes = config.get("fwdbwd_max_chunk_bytes_count") or MAX_CHUNK_BYTES
        chunks: list[list[dict]] = [[]]
        size = 0
        for datum in data:
            datum_size = len(json.dumps(datum))
            if chunks[-1] and (len(chunks[-1]) >= max_datums or size + datum_size > max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(datum)
            size += datum_size
        return chunks

    # ---- primitives -------------------------------------------------------------------------

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Run the model on `data`, compute the loss and accumulate its gradient (for `optim_step`).

        A batch beyond the server's chunk limits is sent as several requests with consecutive
        seq ids; the future combines their outputs and metrics.

        Args:
            data: The examples (Datum objects or dicts of their fields).
            loss_fn: `"cross_entropy"`, `"importance_sampling"`, `"ppo"`, `"cispo"`, `"dro"` or `"gspo"`.
            loss_fn_config: The loss's options, e.g. PPO's clip thresholds.

        Returns:
            A future of the ForwardBackwardOutput: per-datum outputs (e.g. `logprobs`) and metrics.

        Example:
            datum = Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={"target_tokens": tokens[1:]})
            loss = training.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"]
        """
        return self._forward(data, loss_fn, loss_fn_config, forward_only=False)

    def forward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Like `forward_backward` without the gradient: outputs and loss only.

        Args:
            data: The examples (Datum objects or dicts of their fields).
            loss_fn: The loss to report (as for `forward_backward`).
            loss_fn_config: The loss's options.

        Returns:
            A future of the ForwardBackwardOutput.

        Example:
            logprobs = training.forward([datum]).result().loss_fn_outputs[0]["logprobs"].tolist()
        """
        return self._forward(data, loss_fn, loss_fn_config, forward_only=True)

    def _forward(self, data, loss_fn, loss_fn_config, forward_only: bool) -> APIFuture[ForwardBackwardOutput]:
        chunks = self._chunks([_as_datum(d).model_dump(mode="json") for d in data])
        with self._lock:  # the chunks of one call get consecutive seq ids even with other threads calling
            parts = [
                self._submit(
                    "forward_backward",
                    {
                        "data": chunk,
                        "loss_fn": loss_fn,
                        "loss_fn_config": loss_fn_config,
                        "forward_only": forward_only,
                        "type": "forward_backward",
                    },
                    _identity,
                )
                for chunk in chunks
            ]
        if len(parts) == 1:
            return APIFuture(parts[0].future(), ForwardBackwardOutput.model_validate, accepted=parts[0].accepted)

        async def combine():
            outputs = [await asyncio.wrap_future(p.future()) for p in parts]
            return _array_record(outputs, reduce_metrics([o["metrics"] for o in outputs], [len(c) for c in chunks]))

        # accepted once the last chunk is: chunks are POSTed in seq order
        return APIFuture(
            background.submit(combine()), ForwardBackwardOutput.model_validate, accepted=parts[-1].accepted
        )

    def optim_step(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """Apply the accumulated gradient with AdamW and clear it.

        Args:
            optim_params: The AdamW parameters (defaults of AdamParams if None).
            adam_params: The same, by Tinker's keyword.

        Returns:
            A future of the OptimStepResponse (metrics such as the gradient norm).

        Example:
            training.optim_step(AdamParams(learning_rate=1e-4)).result()
        """
        params = (optim_params or adam_params or AdamParams()).model_dump()
        return self._submit(
            "optim_step", {"adam_params": params, "type": "optim_step"}, OptimStepResponse.model_validate
        )

    def save_state(
        self, name: str, ttl_seconds: int | None = None, overwrite: bool = False, user_metadata: dict | None = None
    ) -> APIFuture[SaveWeightsResponse]:
        """Save a training checkpoint (weights and optimizer state), to resume from later.

        Args:
            name: The checkpoint's name within this run.
            ttl_seconds: Seconds until it expires; None keeps it until deleted.
            overwrite: Replace an existing checkpoint of this name.
            user_metadata: Stored with the checkpoint.

        Returns:
            A future whose `path` is `tinker://<run>/weights/<name>`.

        Example:
            path = training.save_state("step-100").result().path
            resumed = service.create_training_client_from_state_with_optimizer(path)
        """
        return self._submit(
            "save_weights",
            {
                "path": name,
                "ttl_seconds": ttl_seconds,
                "overwrite": overwrite,
                "user_metadata": user_metadata or {},
                "type": "save_weights",
            },
            SaveWeightsResponse.model_validate,
        )

    def load_state(self, path: str) -> APIFuture[dict]:
        """Load a training checkpoint's weights into this model, with a fresh optimizer state.

        Args:
            path: A training checkpoint, `tinker://<run>/weights/<name>`.

        Returns:
            A future of the server's answer, `{"path", "model_id", "type": "load_weights"}`.

        Example:
            training.load_state(path).result()
        """
        return self._load(path, optimizer=False)

    def load_state_with_optimizer(self, path: str) -> APIFuture[dict]:
        """Like `load_state`, also loading the checkpoint's optimizer state.

        Args:
            path: A training checkpoint, `tinker://<run>/weights/<name>`.

        Returns:
            A future of the server's answer, `{"path", "model_id", "type": "load_weights"}`.

        Example:
            training.load_state_with_optimizer(path).result()
        """
        return self._load(path, optimizer=True)

    def _load(self, path: str, optimizer: bool) -> APIFuture[dict]:
        return self._submit("load_weights", {"path": path, "optimizer": optimizer, "type": "load_weights"}, _identity)

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict | None = None
    ) -> APIFuture[SaveWeightsResponse]:
        """Save the current weights for sampling (a sampler checkpoint, also downloadable).

        Args:
            name: The checkpoint's name within this run.
            ttl_seconds: Seconds until it expires; None keeps it until deleted.
            user_metadata: Stored with the checkpoint.

        Returns:
            A future whose `path` is `tinker://<run>/sampler_weights/<name>`.

        Example:
            path = training.save_weights_for_sampler("final").result().path
            sampler = service.create_sampling_client(model_path=path)
        """
        return self._submit(
            "save_weights_for_sampler",
            {
                "path": name,
                "ttl_seconds": ttl_seconds,
                "kind": "snapshot",
                "user_metadata": user_metadata or {},
                "type": "save_weights_for_sampler",
            },
            SaveWeightsResponse.model_validate,
        )

    def save_weights_external(
        self, name: str, ttl_seconds: int | None = None, age_encryption_recipients: list[str] | None = None
    ) -> APIFuture[dict]:
        """Export the current weights as a PEFT adapter for use outside the service.

        Args:
            name: The checkpoint's name within this run.
            ttl_seconds: Seconds until it expires; None keeps it until deleted.
            age_encryption_recipients: Sent only when given; a server that cannot encrypt refuses
                the request with a BadRequestError.

        Returns:
            A future of the server's answer, whose `path` is the checkpoint's `tinker://` path.

        Example:
            path = training.save_weights_external("export").result()["path"]
            service.create_rest_client().download_checkpoint(path, "adapter/")
        """
        body: dict[str, Any] = {"path": name, "ttl_seconds": ttl_seconds, "type": "save_weights_external"}
        if age_encryption_recipients:
            body["age_encryption_recipients"] = list(age_encryption_recipients)
        return self._submit("save_weights_external", body, _identity)

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: str = "snapshot",
    ) -> SamplingClient:
        """A sampler on the current weights, without a named checkpoint. Blocks until it exists.

        Args:
            name: Accepted for Tinker compatibility and ignored (as Tinker does).
            retry_config: Accepted for Tinker compatibility and ignored; retries are set on the
                ServiceClient.
            record_stability_info: Accepted for Tinker compatibility and ignored.
            kind: Accepted for Tinker compatibility and ignored.

        Returns:
            A SamplingClient on a snapshot of the weights as of this call's place in the model's order.

        Example:
            sampler = training.save_weights_and_get_sampling_client()
            response = sampler.sample(prompt, num_samples=4).result()
        """
        return self._ephemeral_sampler().result()

    def _ephemeral_sampler(self) -> APIFuture[SamplingClient]:
        body = {
            "sampling_session_seq_id": self.service.next_sampler_seq(),
            "kind": "snapshot",
            "type": "save_weights_for_sampler",
        }
        base_model = self._info.model_data.get("model_name")
        return self._submit(
            "save_weights_for_sampler",
            body,
            lambda answer: SamplingClient.for_session(
                self.service, answer["sampling_session_id"], base_model=base_model
            ),
        )

    def create_sampling_client(
        self, model_path: str, retry_config: Any = None, record_stability_info: bool = False
    ) -> SamplingClient:
        """A sampler on saved sampler weights (as `ServiceClient.create_sampling_client`).

        Args:
            model_path: Sampler weights, `tinker://<run>/sampler_weights/<name>`.
            retry_config: Accepted for Tinker compatibility and ignored.
            record_stability_info: Accepted for Tinker compatibility and ignored.

        Returns:
            A SamplingClient.

        Example:
            sampler = training.create_sampling_client(training.save_weights_for_sampler("s").result().path)
        """
        return self.service.create_sampling_client(model_path=model_path)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: Callable) -> APIFuture[ForwardBackwardOutput]:
        """`forward_backward` with your own torch loss on the logprobs (needs torch).

        A forward pass gives the logprobs; `loss_fn` is applied to them; a cross_entropy pass with
        weights = -dloss/dlogprobs then gives the adapter exactly the custom loss's gradient
        (DESIGN §4, TINKER_WIRE §8.5). Both passes use the same chunks, and all their seq ids are
        reserved now. If `loss_fn` raises, no-op requests fill the unsent seq ids, so the model's
        later requests still run.

        Args:
            data: The examples; each needs `target_tokens` in its `loss_fn_inputs`.
            loss_fn: `loss_fn(data, logprobs) -> (loss, metrics)`, with `logprobs` a list of float
                tensors (one per datum, requiring grad) and `loss` a scalar tensor.

        Returns:
            A future of the ForwardBackwardOutput; its metrics are yours plus `loss:sum` (your loss)
            and `surrogate_loss:sum` (the server's weighted cross-entropy).

        Example:
            def loss_fn(data, logprobs):
                loss = -sum(lp.sum() for lp in logprobs)
                return loss, {"tokens": float(sum(len(lp) for lp in logprobs))}

            training.forward_backward_custom(data, loss_fn).result()
        """
        import torch  # an optional extra, needed only here

        data = [_as_datum(d) for d in data]

        def stripped(d: Datum, weights: TensorData) -> dict:
            return {
                "model_input": d.model_input.model_dump(mode="json"),
                "loss_fn_inputs": {
                    "target_tokens": d.loss_fn_inputs["target_tokens"].model_dump(mode="json"),
                    "weights": weights.model_dump(mode="json"),
                },
            }

        zeros = [
            stripped(d, TensorData.from_numpy(0 * d.loss_fn_inputs["target_tokens"].to_numpy().astype("float32")))
            for d in data
        ]
        chunks = self._chunks(zeros)
        seqs = self._reserve(2 * len(chunks))
        forward_seqs, backward_seqs = seqs[: len(chunks)], seqs[len(chunks) :]
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        posted: set[int] = set()

        async def post_all(seq_ids, chunk_data, forward_only: bool) -> list[dict]:
            handles = []
            for seq, chunk in zip(seq_ids, chunk_data):
                posted.add(seq)
                handles.append(
                    await self._post_in_order(
                        seq,
                        "forward_backward",
                        {
                            "data": chunk,
                            "loss_fn": "cross_entropy",
                            "forward_only": forward_only,
                            "type": "forward_backward",
                        },
                    )
                )
            return handles

        async def results(handles: list[dict]) -> list[dict]:
            return [await self.transport.wait_result(h["request_id"]) for h in handles]

        async def go():
            try:
                handles = await _accept(accepted, post_all(forward_seqs, chunks, True))
                outputs = [o for out in await results(handles) for o in out["loss_fn_outputs"]]
                logprobs = [TensorData(**o["logprobs"]).to_torch().float().requires_grad_(True) for o in outputs]
                loss, metrics = loss_fn(data, logprobs)
                grads = torch.autograd.grad(loss, logprobs, allow_unused=True)
            except BaseException:
                for seq in seqs:  # no-ops fill the reserved seqs not sent: the model's later requests still run
                    if seq not in posted:
                        with contextlib.suppress(LorasmithError):  # if it fails, the client is poisoned
                            await self._post_in_order(seq, "forward_backward", NO_OP)
                raise
            weighted = iter(
                [
                    stripped(d, TensorData.from_torch(-g if g is not None else torch.zeros_like(lp)))
                    for d, g, lp in zip(data, grads, logprobs)
                ]
            )
            backward = await results(
                await post_all(backward_seqs, [[next(weighted) for _ in c] for c in chunks], False)
            )
            server = reduce_metrics([b["metrics"] for b in backward], [len(c) for c in chunks])
            merged = {
                **{k: float(v) for k, v in (metrics or {}).items()},
                "loss:sum": float(loss.detach()),
                "surrogate_loss:sum": server.pop("loss:sum"),
            }
            return _array_record(backward, merged)

        return APIFuture(background.submit(go()), ForwardBackwardOutput.model_validate, accepted=accepted)

    # ---- async twins: the first await returns once the server accepted the request, so a ------
    # ---- request made after it is ordered after it; `await` the returned future for the result --

    async def forward_backward_async(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async `forward_backward`: returns its future once the server accepted the request."""
        return await self.forward_backward(data, loss_fn, loss_fn_config).submitted()

    async def forward_async(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async `forward`: returns its future once the server accepted the request."""
        return await self.forward(data, loss_fn, loss_fn_config).submitted()

    async def forward_backward_custom_async(
        self, data: Sequence[Datum], loss_fn: Callable
    ) -> APIFuture[ForwardBackwardOutput]:
        """Async `forward_backward_custom`: returns its future once the server accepted the forward pass."""
        return await self.forward_backward_custom(data, loss_fn).submitted()

    async def optim_step_async(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """Async `optim_step`: returns its future once the server accepted the request."""
        return await self.optim_step(optim_params, adam_params=adam_params).submitted()

    async def save_state_async(
        self, name: str, ttl_seconds: int | None = None, **options
    ) -> APIFuture[SaveWeightsResponse]:
        """Async `save_state` (same arguments): returns its future once the server accepted the request."""
        return await self.save_state(name, ttl_seconds, **options).submitted()

    async def load_state_async(self, path: str) -> APIFuture[dict]:
        """Async `load_state`: returns its future once the server accepted the request."""
        return await self.load_state(path).submitted()

    async def load_state_with_optimizer_async(self, path: str) -> APIFuture[dict]:
        """Async `load_state_with_optimizer`: returns its future once the server accepted the request."""
        return await self.load_state_with_optimizer(path).submitted()

    async def save_weights_for_sampler_async(
        self, name: str, ttl_seconds: int | None = None, **options
    ) -> APIFuture[SaveWeightsResponse]:
        """Async `save_weights_for_sampler` (same arguments): returns its future once accepted."""
        return await self.save_weights_for_sampler(name, ttl_seconds, **options).submitted()

    async def save_weights_external_async(
        self, name: str, ttl_seconds: int | None = None, **options
    ) -> APIFuture[dict]:
        """Async `save_weights_external` (same arguments): returns its future once accepted."""
        return await self.save_weights_external(name, ttl_seconds, **options).submitted()

    async def save_weights_and_get_sampling_client_async(self, name: str | None = None, **options) -> SamplingClient:
        """Async `save_weights_and_get_sampling_client`: returns the SamplingClient itself."""
        return await self._ephemeral_sampler()

    # ---- live metrics --------------------------------------------------------------------------

    async def subscribe_metrics(self) -> AsyncIterator[dict]:
        """The model's metrics as the server records them, pushed over the WebSocket.

        Subscribed when this returns, so the steps submitted afterwards are all seen. The stream
        ends when the connection drops.

        Returns:
            An async iterator of `{"step": int, "metrics": {name: value}}`.

        Raises:
            LorasmithError: The ServiceClient has `use_websocket=False`, or no WebSocket connects.

        Example:
            points = await training.subscribe_metrics()
            async for point in points:
                print(point["step"], point["metrics"])
        """
        if self.transport.events is None:
            raise LorasmithError("subscribe_metrics needs the WebSocket; this ServiceClient has use_websocket=False")
        try:
            queue = await asyncio.wrap_future(background.submit(self.transport.events.subscribe_run(self.model_id)))
        except EventStreamLost:
            raise LorasmithError(f"cannot stream metrics: no WebSocket to {self.transport.base_url}") from None

        async def points():
            while (point := await asyncio.wrap_future(background.submit(queue.get()))) is not None:
                yield point

        return points()

    # ---- your own metrics ------------------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int) -> APIFuture[dict]:
        """Add what your loop measures (held-out NLL, rewards, accuracy) to the run's metrics, so the
        dashboard charts it beside the server's own `loss:sum` and optimizer metrics. Not ordered
        with training requests and uses no seq_id.

        Args:
            metrics: 1-64 names (letters, digits, `_ . / : -`) to finite numbers.
            step: The x of these points, e.g. the optimizer steps taken so far.

        Returns:
            A future of `{"recorded": n}`.

        Raises:
            BadRequestError: A name or value the server refuses (named in the message).

        Example:
            training.log_metrics({"heldout/nll": 2.31}, step=40).result()
        """
        body = {"step": step, "metrics": dict(metrics)}
        return APIFuture(
            background.submit(self.transport.request("POST", f"training_runs/{self.model_id}/metrics", body))
        )

    # ---- info ------------------------------------------------------------------------------

    def get_info(self) -> GetInfoResponse:
        """The model's info as the server gave it when this client was made.

        Returns:
            The GetInfoResponse (model_id, lora_rank, model_data with the base model's name, ...).

        Example:
            print(training.get_info().lora_rank)
        """
        return self._info

    async def get_info_async(self) -> GetInfoResponse:
        """Async `get_info`."""
        return self._info

    def get_tokenizer(self) -> Any:
        """The base model's tokenizer (needs `transformers`), from the server's files or the hub.

        Returns:
            A `transformers` tokenizer.

        Raises:
            LorasmithError: The server's info names no tokenizer or base model.

        Example:
            tokens = training.get_tokenizer().encode("Hello")
        """
        # the base model first: the server serves tokenizer files by it (tokenizer_id may be a path on the server)
        name = self._info.model_name or self._info.model_data.get("tokenizer_id")
        if not name:
            raise LorasmithError(f"the server's info of {self.model_id} names no tokenizer or base model")
        return load_tokenizer(self.transport, name)

    async def get_tokenizer_async(self) -> Any:
        """Async `get_tokenizer`."""
        return await asyncio.to_thread(self.get_tokenizer)


async def _accept(accepted: concurrent.futures.Future, post: Awaitable[T]) -> T:
    """Await the POST, recording its outcome in `accepted` (what the first await of `*_async` waits for)."""
    try:
        handle = await post
    except BaseException as error:
        accepted.set_exception(error)
        raise
    accepted.set_result(handle)
    return handle


def _as_datum(datum: Datum | dict) -> Datum:
    return datum if isinstance(datum, Datum) else Datum(**datum)


def _array_record(answers: list[dict], metrics: dict[str, float]) -> dict:
    """One forward_backward result of several chunks' answers, in their order."""
    return {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [o for answer in answers for o in answer["loss_fn_outputs"]],
        "metrics": metrics,
    }


def _identity(value: Any) -> Any:
    return value

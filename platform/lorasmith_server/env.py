"""Reading settings from environment variables (as healthchecks' `envint`/`envbool` do): an unset
or empty variable gives the default; a malformed one stops the process with its name in the error."""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise ImproperlyConfigured(f"{name} must be one of {TRUE + FALSE}, got {raw!r}")
    return raw in TRUE


def env_int(name: str, default: int) -> int:
    return int(_number(name, default, int))


def env_optional_int(name: str) -> int | None:
    return env_int(name, 0) if env_str(name) else None


def env_float(name: str, default: float) -> float:
    return float(_number(name, default, float))


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated list; empty items are dropped."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def _number(name: str, default: float, kind: type) -> float:
    raw = env_str(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a {kind.__name__}, got {raw!r}") from None


@dataclass(frozen=True)
class ServiceSettings:
    """Lorasmith's own settings (`settings.LORASMITH`), typed. Tests swap one with
    `dataclasses.replace(settings.LORASMITH, ...)`."""

    base_models: tuple[str, ...]
    long_poll_seconds: float  # how long retrieve_future holds a pending request
    signed_url_seconds: int
    session_timeout_seconds: int  # no heartbeat this long: the session is finished, queued samples cancelled
    max_body_bytes: int
    # what one request may ask for (0 = unlimited): training tokens summed over its datums, and a
    # sample's num_samples x (prompt + max_tokens); beyond, 413 naming the field
    max_request_tokens: int
    max_sample_tokens: int
    # the top-k logprob cells one sample request may ask its result to carry: prompt x
    # topk_prompt_logprobs + num_samples x max_tokens x topk_sample_logprobs (0 = unlimited)
    max_topk_cells: int
    # an open WebSocket re-checks its API key this often (a revocation from a process that does not
    # share the channel layer closes it within this time)
    ws_key_check_seconds: float
    # ephemeral sampler snapshots (save_weights_and_get_sampling_client) kept per training run;
    # older ones are deleted (sampling them answers 410); all go when their session finishes
    ephemeral_samplers_kept: int
    # adapter bytes a runner keeps in (GPU) memory per base model; beyond, the least recently used
    # spill to disk. None: no limit
    adapter_memory_bytes: int | None
    # per-user quotas (0 = unlimited); beyond them requests are answered 429 with Retry-After
    max_active_runs: int
    max_pending_operations: int
    max_pending_bytes: int
    test_hooks: bool  # training.test_hooks' faults and counters
    # client/config asks Tinker's SDK to zstd-compress forward_backward bodies (CPU for bandwidth)
    proto_compress_fwdbwd: bool
    queue_prefix: str  # prefixed to the per-base-model queue names, so deployments can share a broker
    # a runner without a heartbeat this long is declared dead and its runs move to live runners
    runner_dead_after_seconds: float = 30.0
    # a run's adapter + optimizer are snapshotted every this many optimizer steps (0: never), so a
    # takeover replays only the operations after the latest snapshot
    snapshot_every_steps: int = 20
    # the engine's base-weight dtype ("" = bf16 on CUDA, fp32 on CPU) and its micro-batch budget in
    # tokens (None = sized from the device's memory on CUDA, 8192 on CPU)
    engine_dtype: str = ""
    engine_pass_tokens: int | None = None
    # with an object store, the bytes of stored directories a process keeps local copies of (what it
    # saved or fetched); beyond, the least recently used idle copies are deleted (the store keeps them)
    cache_max_bytes: int = 20 << 30

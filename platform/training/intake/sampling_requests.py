"""Sampling requests: samplers (on a base model or a checkpoint's weights) and their samples.
Samples never wait for a seq gap; a queued one can be cancelled."""

from __future__ import annotations

import torch

from accounts.services import key_id_of
from gpu_runner import validate_sample
from gpu_runner.errors import EngineInputError

from .. import access, base_models, dispatch, storage, wire
from ..errors import BadRequest, Gone, NotFound
from ..models import Checkpoint, Operation, SamplingSession
from . import quotas, request_bounds
from .sessions import open_session

# Tinker sample options this server does not implement, with the value that means "off"
UNSUPPORTED_SAMPLE_OPTIONS = {"prompt_alt_tokens_k": 0}
# a weights/ checkpoint is training state (adapter and optimizer, for load_state): refused when the
# sampler is made, rather than accepted and failing every sample later
TRAINING_CHECKPOINT_REFUSED = (
    "model_path {path} is a training checkpoint (weights/…, state for load_state), which a sampler cannot "
    "read; save sampler weights with save_weights_for_sampler(name) and sample from its "
    "tinker://<run>/sampler_weights/<name> path, or use save_weights_and_get_sampling_client()"
)


def create_sampling_session(user, body: dict) -> SamplingSession:
    session = open_session(user, body)
    sampler_id = SamplingSession.make_id(session.id, wire.require(body, "sampling_session_seq_id", int))
    existing = SamplingSession.objects.filter(id=sampler_id, owner=user).first()
    if existing is not None:
        return existing
    model_path = wire.optional(body, "model_path", str, "")
    if model_path:
        path = wire.parse_tinker_path(model_path, field="model_path")
        if path.checkpoint_type == Checkpoint.Type.EXTERNAL:
            raise BadRequest("sample from a sampler_weights checkpoint", field="model_path")
        if path.checkpoint_type == Checkpoint.Type.TRAINING:
            raise BadRequest(TRAINING_CHECKPOINT_REFUSED.format(path=model_path), field="model_path")
        checkpoint = access.readable_checkpoint(user, path.run_id, path.checkpoint_id)
        return SamplingSession.objects.create(
            id=sampler_id,
            session=session,
            owner=user,
            base_model=checkpoint.training_run.base_model,
            model_path=model_path,
            weights_dir=checkpoint.directory,
            source_run=checkpoint.training_run if checkpoint.training_run.owner_id == user.id else None,
        )
    base_model = wire.require(body, "base_model", str)
    base_models.served_info(base_model)
    return SamplingSession.objects.create(id=sampler_id, session=session, owner=user, base_model=base_model)


def submit_sample(user, body: dict) -> Operation:
    sampler = access.sampling_session_of(user, wire.require(body, "sampling_session_id", str))
    seq_id = wire.require(body, "seq_id", int)
    existing = Operation.objects.filter(sampling_session=sampler, seq_id=seq_id).first()
    if existing is not None:
        return existing
    _check_weights_present(sampler)
    _check_still_readable(user, sampler)
    payload = _sample_payload(sampler, body)
    size = quotas.payload_size(payload)
    quotas.check_size(size)
    quotas.check_pending(user, size)
    op = Operation.objects.insert_or_racing(
        Operation.of_sampler(sampler, seq_id, payload, payload_bytes=size, api_key_id=key_id_of(user))
    )
    dispatch.dispatch_placed(sampler.base_model, sampler.runner_id)
    return op


def _sample_payload(sampler: SamplingSession, body: dict) -> dict:
    prompt = wire.model_input_tokens(body.get("prompt"), "prompt")
    num_samples = wire.optional(body, "num_samples", int, 1)
    raw_params = wire.optional(body, "sampling_params", dict, {})
    params = wire.sampling_params(raw_params)
    topk = wire.optional(body, "topk_prompt_logprobs", int, 0)
    targets = _target_prompt_tokens(body.get("target_prompt_logprobs"))
    topk_sampled = wire.optional(body, "topk_sample_logprobs", int, 0)
    try:
        info = base_models.info(sampler.base_model)
        validate_sample(info, prompt, num_samples, params, topk, targets, topk_sampled)
    except EngineInputError as error:
        raise BadRequest(str(error), field=error.field) from None
    request_bounds.check_sample(len(prompt), num_samples, params.max_tokens)
    request_bounds.check_topk(len(prompt), topk, num_samples, params.max_tokens, topk_sampled)
    for option, default in UNSUPPORTED_SAMPLE_OPTIONS.items():
        if body.get(option, default) not in (default, None):
            raise BadRequest(f"{option} is not supported by this server; leave it at {default!r}", field=option)
    last_n = wire.optional(body, "prompt_logprobs_last_n", int, None)
    if last_n is not None and last_n < 0:
        raise BadRequest("prompt_logprobs_last_n must be >= 0", field="prompt_logprobs_last_n")
    return {
        "prompt": prompt,
        "num_samples": num_samples,
        "sampling_params": raw_params,
        "prompt_logprobs": bool(body.get("prompt_logprobs", False)),
        "topk_prompt_logprobs": topk,
        "prompt_logprobs_last_n": last_n,
        "target_prompt_tokens": targets,
        # only when asked, so the payload of an ordinary sample is what it always was
        **({"topk_sample_logprobs": topk_sampled} if topk_sampled else {}),
    }


def _target_prompt_tokens(value: object) -> list[list[int]] | None:
    """The token ids to score at each prompt position: int64 TensorData [len(prompt) - 1, K], dense
    or sparse CSR with -1 in the cells left out."""
    if value is None:
        return None
    field = "target_prompt_logprobs"
    tensor = wire.tensor_data(value, field, pad=-1)
    if tensor.dtype != torch.int64 or tensor.dim() != 2:
        raise BadRequest(f"{field} must be int64 TensorData of shape [len(prompt) - 1, K]", field=field)
    return tensor.tolist()


def _check_weights_present(sampler: SamplingSession) -> None:
    if sampler.released_at is not None or (sampler.weights_dir and not storage.is_kept(sampler.weights_dir)):
        raise Gone(
            f"the weights of sampling session {sampler.id} are no longer kept (a snapshot is dropped once "
            "newer ones of its model replace it or its session ends, a checkpoint when deleted or past its "
            "TTL); sample from a newer sampling client, or keep weights with save_weights_for_sampler(name)",
            field="sampling_session_id",
        )


def _check_still_readable(user, sampler: SamplingSession) -> None:
    """A sampler on another user's checkpoint lasts only while that checkpoint is published:
    unpublishing it ends every such sampler (404 on its next sample), as it ends their access."""
    if not sampler.model_path or sampler.source_run_id is not None:
        return  # a base model, or the user's own checkpoint
    path = wire.parse_tinker_path(sampler.model_path, field="model_path")
    try:
        access.readable_checkpoint(user, path.run_id, path.checkpoint_id)
    except NotFound:
        raise NotFound(
            f"sampling session {sampler.id} reads {sampler.model_path}, which is no longer published or "
            "no longer exists",
            field="sampling_session_id",
        ) from None


def cancel_future(user, request_id: str) -> bool:
    """Cancel a sampling request that has not started (TINKER_WIRE §5.3). Training operations are
    never cancelled: a hole in a model's seq_id chain would hold every later request forever."""
    op = access.operation_of(user, request_id)
    cancelled = Operation.objects.filter(
        pk=op.pk, status=Operation.Status.QUEUED, sampling_session__isnull=False
    ).finish(Operation.Status.CANCELLED, error="cancelled by the client", category="user", known=op)
    return bool(cancelled)

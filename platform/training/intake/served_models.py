"""What an OpenAI-compatible call samples: its `model` resolved (a served base model, a readable
sampler checkpoint by tinker:// path, or one of the caller's sampler checkpoints by name), and the
sampler it goes through. Every call becomes an ordinary sample request of `submit_sample`, so it
is checked, queued, batched, seeded and counted in Usage exactly as the SDK's `sample` is.

The calls of one user share one session (named API_SESSION_NAME, heartbeated by every call) and
one sampler per model in it, created on first use; so the dashboard shows them as one session and
a checkpoint's samples count for its run as the SDK's do."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.db import IntegrityError
from django.utils import timezone

from .. import access, base_models, wire
from ..errors import BadRequest, NotFound
from ..models import Checkpoint, Operation, SamplingSession, Session
from . import sampling_requests, sessions

API_SESSION_NAME = "OpenAI-compatible API"


@dataclass(frozen=True)
class ServedModel:
    """A `model` as resolved for one caller."""

    name: str  # as the caller wrote it
    base_model: str
    model_path: str  # "" for the bare base model


def resolve(user, model: object) -> ServedModel:
    """Raises BadRequest (a training-state path, an ambiguous name) or NotFound (nothing readable
    by that name: another user's private checkpoint is not found, as everywhere in the API)."""
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required: a base model, a tinker://…/sampler_weights/… path or a name", "model")
    if model in base_models.served_models():
        return ServedModel(model, model, "")
    if model.startswith("tinker://"):
        return _by_path(user, model)
    return _by_name(user, model)


def _by_path(user, model: str) -> ServedModel:
    path = wire.parse_tinker_path(model, field="model")
    if path.checkpoint_type != Checkpoint.Type.SAMPLER:
        raise BadRequest(
            f"model {model!r} is a {path.checkpoint_type} checkpoint, not sampler weights: sample "
            f"tinker://{path.run_id}/sampler_weights/<name> instead (saved by save_weights_for_sampler(name))"
            + _sampler_hint(user, path.run_id, path.name),
            field="model",
        )
    checkpoint = access.readable_checkpoint(user, path.run_id, path.checkpoint_id)
    return ServedModel(model, checkpoint.training_run.base_model, checkpoint.tinker_path)


def _sampler_hint(user, run_id: str, name: str) -> str:
    """Names the sampler export of the same name when the caller may read one."""
    found = access.readable_checkpoints(user).unexpired()
    found = found.filter(training_run_id=run_id, checkpoint_type=Checkpoint.Type.SAMPLER, name=name).first()
    return f"; this run has {found.tinker_path}" if found is not None else ""


def _by_name(user, model: str) -> ServedModel:
    found = list(
        Checkpoint.objects.filter(owner=user, checkpoint_type=Checkpoint.Type.SAMPLER, name=model)
        .unexpired()
        .select_related("training_run")[:5]
    )
    if len(found) > 1:
        paths = ", ".join(c.tinker_path for c in found)
        raise BadRequest(
            f"model {model!r} names several of your sampler checkpoints ({paths}); use one's path", "model"
        )
    if not found:
        raise NotFound(
            f"model {model!r} not found: not a served base model ({', '.join(base_models.served_models())}), "
            "nor a sampler checkpoint of yours by that name (GET /oai/api/v1/models lists them)",
            field="model",
        )
    return ServedModel(model, found[0].training_run.base_model, found[0].tinker_path)


def listed_checkpoints(user) -> list[Checkpoint]:
    """The sampler checkpoints GET /models lists for `user`: their own, and others' published ones
    they have sampled (through the SDK or this API)."""
    readable = (
        access.readable_checkpoints(user)
        .unexpired()
        .filter(checkpoint_type=Checkpoint.Type.SAMPLER)
        .select_related("training_run", "owner")
        .order_by("-created_at")
    )
    used = set(SamplingSession.objects.filter(owner=user).exclude(model_path="").values_list("model_path", flat=True))
    used_runs = {path.removeprefix("tinker://").split("/", 1)[0] for path in used}
    others = readable.exclude(owner=user).filter(training_run_id__in=used_runs)
    return list(readable.filter(owner=user)) + [c for c in others if c.tinker_path in used]


def sampler_for(user, served: ServedModel) -> SamplingSession:
    """The caller's sampler of `served` in their API session (made on first use)."""
    session = _api_session(user)
    key = served.model_path or f"base:{served.base_model}"
    seq = int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")  # one stable sampler per model
    sampler_id = SamplingSession.make_id(session.id, seq)
    existing = SamplingSession.objects.filter(id=sampler_id, owner=user).first()
    if existing is not None:
        return existing
    body: dict = {"session_id": session.id, "sampling_session_seq_id": seq}
    body.update({"model_path": served.model_path} if served.model_path else {"base_model": served.base_model})
    try:
        return sampling_requests.create_sampling_session(user, body)
    except IntegrityError:  # a concurrent first call made it
        return SamplingSession.objects.get(id=sampler_id, owner=user)


def _api_session(user) -> Session:
    session = (
        Session.objects.filter(owner=user, display_name=API_SESSION_NAME, finished_reason="")
        .order_by("-created_at")
        .first()
    )
    if session is None:
        return sessions.create_session(user, {"display_name": API_SESSION_NAME})
    Session.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now())
    return session


def submit(
    user, sampler: SamplingSession, prompt: list[int], num_samples: int, params: dict, topk_sample_logprobs: int = 0
) -> Operation:
    """A sample request of `sampler` through the SDK's intake (`params`: Tinker sampling_params;
    `topk_sample_logprobs` as Tinker's, 0 = none)."""
    body = {
        "sampling_session_id": sampler.id,
        "seq_id": secrets.randbits(62),  # samples never wait for a seq gap: any unused seq will do
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
        "num_samples": num_samples,
        "sampling_params": params,
        "topk_sample_logprobs": topk_sample_logprobs,
    }
    return sampling_requests.submit_sample(user, body)

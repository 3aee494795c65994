"""Actions that accept work: validate fully at the door, store it as an Operation, dispatch.

From the moment an Operation row exists the request cannot be lost. A repeated
(model, seq_id) or (sampler, seq_id) returns the original operation (never a 409).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils import timezone

from gpu_runner import validate_forward_backward, validate_sample
from gpu_runner.errors import EngineInputError

from . import access, base_models, dispatch, quotas, wire
from .errors import ApiError, BadRequest, Gone
from .models import Checkpoint, Operation, SamplingSession, Session, TrainingRun

# Tinker sample options this server does not implement, with the value that means "off"
UNSUPPORTED_SAMPLE_OPTIONS = {"topk_sample_logprobs": 0, "prompt_alt_tokens_k": 0, "target_prompt_logprobs": None}
TRAINING_KINDS = (
    "forward_backward",
    "optim_step",
    "save_weights",
    "save_weights_for_sampler",
    "save_weights_external",
    "load_weights",
)


# ---- sessions ---------------------------------------------------------------------------------


def create_session(user, body: dict) -> Session:
    tags = wire.optional(body, "tags", list, [])
    metadata = wire.optional(body, "user_metadata", dict, {})
    display_name = wire.optional(body, "display_name", str, "")
    project_id = wire.optional(body, "project_id", str, "")
    if len(display_name) > 200 or len(project_id) > 200:
        raise BadRequest(
            "display_name and project_id are at most 200 characters",
            field="display_name" if len(display_name) > 200 else "project_id",
        )
    return Session.objects.create(
        id=str(uuid.uuid4()),
        owner=user,
        tags=tags,
        user_metadata=metadata,
        sdk_version=str(body.get("sdk_version", ""))[:40],
        display_name=display_name,
        project_id=project_id,
    )


def heartbeat(user, session_id: str) -> Session:
    session = access.session_of(user, session_id)
    if session.finished_reason:
        raise Gone(f"session {session_id} is finished", field="session_id")
    Session.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now())
    return session


def finish_session(user, session_id: str, body: dict) -> Session:
    session = access.session_of(user, session_id)
    reason = body.get("reason") or {}
    if not session.finished_reason:  # the first finish reason wins
        session.finished_reason = str(reason.get("type", "success"))[:20]
        session.finished_detail = str(body.get("detail") or "")
        session.save(update_fields=["finished_reason", "finished_detail"])
    return session


def _open_session(user, body: dict) -> Session:
    session = access.session_of(user, wire.require(body, "session_id", str))
    if session.finished_reason:
        raise BadRequest(f"session {session.id} is finished; start a new one", field="session_id")
    return session


# ---- training models ----------------------------------------------------------------------------


def create_model(user, body: dict) -> Operation:
    session = _open_session(user, body)
    model_seq_id = wire.require(body, "model_seq_id", int)
    base_model = wire.require(body, "base_model", str)
    base_models.served_info(base_model)
    lora = wire.optional(body, "lora_config", dict, {})
    rank = wire.optional(lora, "rank", int, 32, where="lora_config.")
    if not 1 <= rank <= 1024:
        raise BadRequest("lora_config.rank must be between 1 and 1024", field="lora_config.rank")
    flags = {k: bool(lora.get(k, True)) for k in ("train_attn", "train_mlp", "train_unembed")}
    if not any(flags.values()):
        raise BadRequest("at least one of train_attn, train_mlp, train_unembed must be true", field="lora_config")
    optimizer = wire.optional(body, "optimizer_config", dict, {"type": "adamw"})
    if optimizer.get("type", "adamw") != "adamw":
        raise BadRequest("only the adamw optimizer is supported", field="optimizer_config.type")
    seed = wire.optional(lora, "seed", int, None, where="lora_config.")
    model_id = f"{session.id}:train:{model_seq_id}"

    def make() -> TrainingRun:
        return TrainingRun.objects.create(
            id=model_id,
            session=session,
            owner=user,
            base_model=base_model,
            rank=rank,
            seed=seed if seed is not None else secrets.randbits(62),
            user_metadata=body.get("user_metadata") or {},
            **flags,
        )

    return _first_operation(user, model_id, make, "create_model", {"model_id": model_id})


def _first_operation(user, model_id: str, make_run: Callable[[], TrainingRun], kind: str, payload: dict) -> Operation:
    """Seq 0 of a new model; a repeated create returns the original future."""
    existing = Operation.objects.filter(training_run_id=model_id, seq_id=0, owner=user).first()
    if existing is not None:
        return existing
    if TrainingRun.objects.filter(id=model_id).exists():
        raise BadRequest(f"model {model_id} already exists", field="model_seq_id")
    quotas.check_active_runs(user)
    size = quotas.payload_size(payload)
    quotas.check_pending(user, size)
    try:
        with transaction.atomic():
            run = make_run()
            op = Operation.objects.create(
                id=_request_id(),
                owner=user,
                kind=kind,
                base_model=run.base_model,
                training_run=run,
                seq_id=0,
                payload=payload,
                payload_bytes=size,
            )
    except IntegrityError:
        return Operation.objects.get(training_run_id=model_id, seq_id=0)
    dispatch.dispatch(run.base_model)
    return op


def _readable_training_checkpoint(user, body: dict) -> Checkpoint:
    run_id, segment, name = wire.parse_tinker_path(wire.require(body, "path", str))
    if segment != "weights":
        raise BadRequest("load_weights needs a training checkpoint (tinker://.../weights/<name>)", field="path")
    return access.readable_checkpoint(user, run_id, f"{segment}/{name}")


def _load_payload(checkpoint: Checkpoint, body: dict) -> dict:
    return {"path": body["path"], "directory": checkpoint.directory, "optimizer": bool(body.get("optimizer", False))}


def load_weights(user, body: dict) -> Operation:
    if "model_id" in body:  # legacy: load into an existing model at its seq_id
        return submit_training(
            user,
            "load_weights",
            body,
            build_payload=lambda run: _load_payload(_readable_training_checkpoint(user, body), body),
        )
    checkpoint = _readable_training_checkpoint(user, body)
    payload = _load_payload(checkpoint, body)
    session = _open_session(user, body)
    model_seq_id = wire.require(body, "model_seq_id", int)
    source = checkpoint.training_run
    model_id = f"{session.id}:train:{model_seq_id}"

    def make() -> TrainingRun:
        return TrainingRun.objects.create(
            id=model_id,
            session=session,
            owner=user,
            base_model=source.base_model,
            rank=source.rank,
            alpha=source.alpha,
            seed=source.seed,
            train_attn=source.train_attn,
            train_mlp=source.train_mlp,
            train_unembed=source.train_unembed,
            user_metadata=body.get("user_metadata") or {},
        )

    return _first_operation(user, model_id, make, "load_weights", {**payload, "model_id": model_id})


def submit_training(
    user, kind: str, body: dict, build_payload: Callable[[TrainingRun], dict] | None = None
) -> Operation:
    """Store a training request under its seq_id.

    A request refused at the door still uses up its seq_id (a REJECTED row), as Tinker's SDK has
    already moved on to the next seq: otherwise every later request of the model would wait
    forever for the gap. Its repeat gets the same refusal."""
    run = access.training_run_of(user, wire.require(body, "model_id", str))
    seq_id = wire.require(body, "seq_id", int)
    if seq_id < 1:
        raise BadRequest("seq_id must be >= 1 (0 is the model's creation)", field="seq_id")
    existing = Operation.objects.filter(training_run=run, seq_id=seq_id).first()
    if existing is not None:
        return _repeat(existing)
    try:
        payload = build_payload(run) if build_payload else _training_payload(run, kind, body)
        size = quotas.payload_size(payload)
        quotas.check_size(size)
    except ApiError as refusal:
        _hold_seq(user, kind, run, seq_id, refusal)
        raise
    quotas.check_pending(user, size, run, seq_id)  # over quota: nothing stored, the same seq may come again
    op = _store(
        Operation(
            id=_request_id(),
            owner=user,
            kind=kind,
            base_model=run.base_model,
            training_run=run,
            seq_id=seq_id,
            payload=payload,
            payload_bytes=size,
        )
    )
    if op.status == Operation.Status.REJECTED:
        return _repeat(op)
    dispatch.dispatch(run.base_model)
    return op


def _store(op: Operation) -> Operation:
    """Insert `op`; if a racing request took its (run, seq_id) first, that one wins."""
    try:
        with transaction.atomic():
            op.save(force_insert=True)
            return op
    except IntegrityError:
        return Operation.objects.get(training_run=op.training_run, seq_id=op.seq_id)


def _hold_seq(user, kind: str, run: TrainingRun, seq_id: int, refusal: ApiError) -> None:
    held = _store(
        Operation(
            id=_request_id(),
            owner=user,
            kind=kind,
            base_model=run.base_model,
            training_run=run,
            seq_id=seq_id,
            payload={"rejected": {"status": refusal.status, "field": refusal.field}},
            status=Operation.Status.REJECTED,
            error=refusal.message,
            error_category="user",
            finished_at=timezone.now(),
        )
    )
    if held.status == Operation.Status.REJECTED:
        refusal.consumed_seq_id = seq_id
        dispatch.dispatch(run.base_model)  # requests already waiting behind this seq can go now


def _repeat(existing: Operation) -> Operation:
    """A repeated seq_id gets what the first request got: its future, or its refusal."""
    if existing.status != Operation.Status.REJECTED:
        return existing
    refusal = ApiError(existing.error, field=existing.payload["rejected"]["field"])
    refusal.status = existing.payload["rejected"]["status"]
    refusal.consumed_seq_id = existing.seq_id
    raise refusal


def _training_payload(run: TrainingRun, kind: str, body: dict) -> dict:
    if kind == "forward_backward":
        return _forward_backward_payload(run, body)
    if kind == "optim_step":
        if body.get("optimizer_params") is not None:
            raise BadRequest("only AdamW is supported here: send adam_params", field="optimizer_params")
        wire.adam_params(body)
        return {"adam_params": body.get("adam_params") or {}}
    if kind == "save_weights_external" and body.get("age_encryption_recipients"):
        raise BadRequest(
            "age encryption of external weights is not supported by this server", field="age_encryption_recipients"
        )
    name = None if kind == "save_weights_for_sampler" and not body.get("path") else wire.checkpoint_name(body)
    ttl = wire.optional(body, "ttl_seconds", int, None)
    if ttl is not None and not 3600 <= ttl <= 10 * 365 * 86400:
        raise BadRequest("ttl_seconds must be between 3600 and 10 years", field="ttl_seconds")
    if name is not None:
        segment = {
            "save_weights": "training",
            "save_weights_for_sampler": "sampler",
            "save_weights_external": "external",
        }[kind]
        if Checkpoint.objects.filter(training_run=run, checkpoint_type=segment, name=name).exists() and not body.get(
            "overwrite"
        ):
            raise BadRequest(f"checkpoint {name!r} already exists for this model", field="path")
    return {
        "name": name,
        "ttl_seconds": ttl,
        "overwrite": bool(body.get("overwrite", False)),
        "sampling_session_seq_id": body.get("sampling_session_seq_id"),
        "user_metadata": wire.optional(body, "user_metadata", dict, {}),
    }


def _forward_backward_payload(run: TrainingRun, body: dict) -> dict:
    data_json = wire.require(body, "data", list)
    loss_fn = wire.optional(body, "loss_fn", str, "cross_entropy")
    config = wire.loss_config(body)
    data = [wire.datum(d, i) for i, d in enumerate(data_json)]
    try:
        validate_forward_backward(base_models.info(run.base_model), data, loss_fn, config)
    except EngineInputError as error:
        raise BadRequest(str(error), field=_engine_field(error)) from None
    return {
        "data": data_json,
        "loss_fn": loss_fn,
        "loss_fn_config": config,
        "forward_only": bool(body.get("forward_only", False)),
    }


def _engine_field(error: EngineInputError) -> str:
    return f"data[{error.datum}].{error.field}" if error.datum is not None else error.field


# ---- sampling ----------------------------------------------------------------------------------


def create_sampling_session(user, body: dict) -> SamplingSession:
    session = _open_session(user, body)
    seq = wire.require(body, "sampling_session_seq_id", int)
    sampler_id = f"{session.id}:sample:{seq}"
    existing = SamplingSession.objects.filter(id=sampler_id, owner=user).first()
    if existing is not None:
        return existing
    model_path = body.get("model_path")
    if model_path:
        run_id, segment, name = wire.parse_tinker_path(model_path, field="model_path")
        if segment == "external_weights":
            raise BadRequest("sample from a sampler_weights or weights checkpoint", field="model_path")
        checkpoint = access.readable_checkpoint(user, run_id, f"{segment}/{name}")
        return SamplingSession.objects.create(
            id=sampler_id,
            session=session,
            owner=user,
            base_model=checkpoint.training_run.base_model,
            model_path=model_path,
            weights_dir=checkpoint.directory,
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
    prompt = wire.model_input_tokens(body.get("prompt"), "prompt")
    num_samples = wire.optional(body, "num_samples", int, 1)
    params = wire.sampling_params(body.get("sampling_params") or {})
    topk = wire.optional(body, "topk_prompt_logprobs", int, 0)
    try:
        validate_sample(base_models.info(sampler.base_model), prompt, num_samples, params, topk)
    except EngineInputError as error:
        raise BadRequest(str(error), field=error.field) from None
    for option, default in UNSUPPORTED_SAMPLE_OPTIONS.items():
        if body.get(option, default) not in (default, None):
            raise BadRequest(f"{option} is not supported by this server; leave it at {default!r}", field=option)
    last_n = wire.optional(body, "prompt_logprobs_last_n", int, None)
    if last_n is not None and last_n < 0:
        raise BadRequest("prompt_logprobs_last_n must be >= 0", field="prompt_logprobs_last_n")
    payload = {
        "prompt": prompt,
        "num_samples": num_samples,
        "sampling_params": body.get("sampling_params") or {},
        "prompt_logprobs": bool(body.get("prompt_logprobs", False)),
        "topk_prompt_logprobs": topk,
        "prompt_logprobs_last_n": last_n,
    }
    size = quotas.payload_size(payload)
    quotas.check_size(size)
    quotas.check_pending(user, size)
    try:
        with transaction.atomic():
            op = Operation.objects.create(
                id=_request_id(),
                owner=user,
                kind="sample",
                base_model=sampler.base_model,
                sampling_session=sampler,
                seq_id=seq_id,
                payload=payload,
                payload_bytes=size,
            )
    except IntegrityError:
        return Operation.objects.get(sampling_session=sampler, seq_id=seq_id)
    dispatch.dispatch(sampler.base_model)
    return op


def _check_weights_present(sampler: SamplingSession) -> None:
    if sampler.released_at is not None or (sampler.weights_dir and not Path(sampler.weights_dir).is_dir()):
        raise Gone(
            f"the weights of sampling session {sampler.id} are no longer kept (a snapshot is dropped once "
            "newer ones of its model replace it or its session ends, a checkpoint when deleted or past its "
            "TTL); sample from a newer sampling client, or keep weights with save_weights_for_sampler(name)",
            field="sampling_session_id",
        )


def cancel_future(user, request_id: str) -> bool:
    """Cancel a sampling request that has not started (TINKER_WIRE §5.3). Training operations are
    never cancelled: a hole in a model's seq_id chain would hold every later request forever."""
    op = access.operation_of(user, request_id)
    cancelled = Operation.objects.filter(
        pk=op.pk, status=Operation.Status.QUEUED, sampling_session__isnull=False
    ).update(
        status=Operation.Status.CANCELLED,
        error="cancelled by the client",
        error_category="user",
        finished_at=timezone.now(),
    )
    if cancelled:
        from . import events

        events.future_finished(user.id, op.id)
    return bool(cancelled)


def sample_sequence_ids(op: Operation) -> list[str]:
    return [f"{op.id}:{i}" for i in range(op.payload.get("num_samples", 1))]


def _request_id() -> str:
    return uuid.uuid4().hex

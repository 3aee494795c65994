"""Training requests: create a model (fresh or from a checkpoint), then its seq_id-ordered
operations (forward_backward, optim_step, saves, loads).

A training request refused at the door still uses up its seq_id (a REJECTED row): Tinker's SDK
has already moved on to the next seq, and every later request of the model would otherwise wait
forever for the gap. Its repeat gets the same refusal.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from accounts.services import key_id_of
from gpu_runner import validate_forward_backward
from gpu_runner.errors import EngineInputError
from gpu_runner.types import LoraSpec

from .. import access, base_models, dispatch, wire
from ..errors import ApiError, BadRequest
from ..models import Checkpoint, Operation, TrainingRun
from . import quotas, request_bounds
from .sessions import open_session

Kind = Operation.Kind


def create_model(user, body: dict) -> Operation:
    session = open_session(user, body)
    model_seq_id = wire.require(body, "model_seq_id", int)
    base_model = wire.require(body, "base_model", str)
    base_models.served_info(base_model)
    lora = wire.optional(body, "lora_config", dict, {})
    flags = {k: bool(lora.get(k, True)) for k in ("train_attn", "train_mlp", "train_unembed")}
    spec = _lora_spec(
        rank=wire.optional(lora, "rank", int, 32, where="lora_config."),
        seed=wire.optional(lora, "seed", int, None, where="lora_config."),
        expert_layout=wire.optional(lora, "expert_layout", str, "shared_outer", where="lora_config."),
        **flags,
    )
    optimizer = wire.optional(body, "optimizer_config", dict, {"type": "adamw"})
    if optimizer.get("type", "adamw") != "adamw":
        raise BadRequest("only the adamw optimizer is supported", field="optimizer_config.type")
    run = TrainingRun(
        id=TrainingRun.make_id(session.id, model_seq_id),
        session=session,
        owner=user,
        base_model=base_model,
        rank=spec.rank,
        alpha=spec.alpha,
        seed=spec.seed if spec.seed is not None else secrets.randbits(62),
        expert_layout=spec.expert_layout,
        user_metadata=wire.user_metadata(body),
        **flags,
    )
    return _first_operation(user, run, Kind.CREATE_MODEL, {"model_id": run.id})


def _lora_spec(**fields) -> LoraSpec:
    try:
        return LoraSpec(**fields)
    except EngineInputError as error:
        raise BadRequest(str(error), field=error.field) from None


def load_weights(user, body: dict) -> Operation:
    """Create a model from a training checkpoint, or (legacy, with `model_id`) load one into an
    existing model at its seq_id."""
    if "model_id" in body:
        return submit_training(
            user,
            Kind.LOAD_WEIGHTS,
            body,
            build_payload=lambda run: _load_payload(_training_checkpoint(user, body), body),
        )
    checkpoint = _training_checkpoint(user, body)
    session = open_session(user, body)
    model_seq_id = wire.require(body, "model_seq_id", int)
    source = checkpoint.training_run
    run = TrainingRun(
        id=TrainingRun.make_id(session.id, model_seq_id),
        session=session,
        owner=user,
        base_model=source.base_model,
        **source.lora_config(),
        user_metadata=wire.user_metadata(body),
    )
    return _first_operation(user, run, Kind.LOAD_WEIGHTS, {**_load_payload(checkpoint, body), "model_id": run.id})


def _training_checkpoint(user, body: dict) -> Checkpoint:
    path = wire.parse_tinker_path(wire.require(body, "path", str))
    if path.checkpoint_type != Checkpoint.Type.TRAINING:
        raise BadRequest("load_weights needs a training checkpoint (tinker://.../weights/<name>)", field="path")
    return access.readable_checkpoint(user, path.run_id, path.checkpoint_id)


def _load_payload(checkpoint: Checkpoint, body: dict) -> dict:
    return {"path": body["path"], "directory": checkpoint.directory, "optimizer": bool(body.get("optimizer", False))}


def _first_operation(user, run: TrainingRun, kind: str, payload: dict) -> Operation:
    """Seq 0 of a new model, stored with it; a repeated create returns the original future."""
    existing = Operation.objects.filter(training_run_id=run.id, seq_id=0, owner=user).first()
    if existing is not None:
        return existing
    if TrainingRun.objects.filter(id=run.id).exists():
        raise BadRequest(f"model {run.id} already exists", field="model_seq_id")
    quotas.check_active_runs(user)
    size = quotas.payload_size(payload)
    quotas.check_pending(user, size)
    op = Operation.objects.insert_or_racing(
        Operation.of_run(run, kind, 0, payload, payload_bytes=size, api_key_id=key_id_of(user)),
        run,
    )
    dispatch.dispatch(run.base_model)
    return op


def submit_training(
    user, kind: str, body: dict, build_payload: Callable[[TrainingRun], dict] | None = None
) -> Operation:
    """Store a training request of `kind` under its seq_id (see the module docstring)."""
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
    except (ValueError, TypeError, OverflowError, KeyError) as error:  # malformed in a way no check named
        unreadable = BadRequest(f"the request could not be read: {type(error).__name__}: {error}", field="body")
        _hold_seq(user, kind, run, seq_id, unreadable)
        raise unreadable from None
    quotas.check_pending(user, size, run, seq_id)  # over quota: nothing stored, the same seq may come again
    op = Operation.objects.insert_or_racing(
        Operation.of_run(run, kind, seq_id, payload, payload_bytes=size, api_key_id=key_id_of(user))
    )
    if op.status == Operation.Status.REJECTED:
        return _repeat(op)
    dispatch.dispatch_placed(run.base_model, run.runner_id)
    return op


def submit_at_door(user, kind: str, read: Callable[[], dict], claim: Callable[[], tuple[str, int] | None]) -> Operation:
    """A training request as it arrives: `read` decodes its body, `claim` reads only the
    (model_id, seq_id) it names. A body refused before it could be read (over the body limit, a
    zstd body decompressing past it, one decoding past the bound, not JSON or protobuf at all) still
    uses up the seq_id it claims, as any other refusal does: Tinker's SDK retries none of them, and
    the model's later requests would otherwise wait for the gap for ever."""
    try:
        body = read()
    except ApiError as refusal:
        claimed = claim()
        if claimed is not None:
            refuse_unreadable(user, kind, *claimed, refusal)
        raise
    return submit_training(user, kind, body)


def refuse_unreadable(user, kind: str, model_id: str, seq_id: int, refusal: ApiError) -> None:
    """A training request whose body could not be read at all still uses up the seq_id it
    claims, if that seq of the user's model is free, so the model is not wedged behind the gap."""
    run = TrainingRun.objects.filter(id=model_id, owner=user).first()
    if run is not None and not Operation.objects.filter(training_run=run, seq_id=seq_id).exists():
        _hold_seq(user, kind, run, seq_id, refusal)


def _hold_seq(user, kind: str, run: TrainingRun, seq_id: int, refusal: ApiError) -> None:
    held = Operation.objects.insert_or_racing(
        Operation.of_run(
            run,
            kind,
            seq_id,
            {"rejected": {"status": refusal.status, "field": refusal.field}},
            # born finished, and pushed to no one: no future of it was ever handed out
            **Operation.finished_fields(Operation.Status.REJECTED, error=refusal.message, category="user"),
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
    if kind == Kind.FORWARD_BACKWARD:
        return _forward_backward_payload(run, body)
    if kind == Kind.OPTIM_STEP:
        if body.get("optimizer_params") is not None:
            raise BadRequest("only AdamW is supported here: send adam_params", field="optimizer_params")
        wire.adam_params(body)
        return {"adam_params": body.get("adam_params") or {}}
    return _save_payload(run, kind, body)


def _save_payload(run: TrainingRun, kind: str, body: dict) -> dict:
    if kind == Kind.SAVE_WEIGHTS_EXTERNAL and body.get("age_encryption_recipients"):
        raise BadRequest(
            "age encryption of external weights is not supported by this server", field="age_encryption_recipients"
        )
    name = None if kind == Kind.SAVE_WEIGHTS_FOR_SAMPLER and not body.get("path") else wire.checkpoint_name(body)
    ttl = wire.optional(body, "ttl_seconds", int, None)
    Checkpoint.expiry(ttl)  # checks the range now, so a bad TTL is refused at the door
    overwrite = bool(body.get("overwrite", False))
    if (
        name is not None
        and not overwrite
        and Checkpoint.objects.filter(training_run=run, checkpoint_type=Checkpoint.SAVED_BY[kind], name=name).exists()
    ):
        raise BadRequest(f"checkpoint {name!r} already exists for this model", field="path")
    return {
        "name": name,
        "ttl_seconds": ttl,
        "overwrite": overwrite,
        "sampling_session_seq_id": wire.optional(body, "sampling_session_seq_id", int, None),
        "user_metadata": wire.user_metadata(body),
    }


def _forward_backward_payload(run: TrainingRun, body: dict) -> dict:
    data_json = wire.require(body, "data", list)
    loss_fn = wire.optional(body, "loss_fn", str, "cross_entropy")
    config = wire.loss_config(body)
    request_bounds.check_training(*request_bounds.json_training_cost(data_json))  # before any tensor is built
    data = [wire.datum(d, i) for i, d in enumerate(data_json)]
    try:
        validate_forward_backward(base_models.info(run.base_model), data, loss_fn, config)
    except EngineInputError as error:
        field = f"data[{error.datum}].{error.field}" if error.datum is not None else error.field
        raise BadRequest(str(error), field=field) from None
    return {
        "data": data_json,
        "loss_fn": loss_fn,
        "loss_fn_config": config,
        "forward_only": bool(body.get("forward_only", False)),
    }

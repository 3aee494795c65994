"""The /api/v1 endpoints (TINKER_WIRE.md §3-§7). Views parse and authorise; actions decide.

Bodies are JSON, except that forward_backward (and forward) also take Tinker's protobuf form,
decoded into the same JSON-shaped body so intake checks both alike."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from training import access, base_models, download_names, run_metrics, storage, wire
from training.errors import BadRequest, UnsupportedMediaType
from training.intake import sampling_requests, sessions, training_requests
from training.models import Checkpoint, Session, TrainingRun
from training.upkeep import retention

from . import request_json, request_proto, schema, serializers
from .tinker_proto import CONTENT_TYPE as PROTOBUF


def is_protobuf(request) -> bool:
    return request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower() == PROTOBUF


def body_of(request) -> dict:
    if is_protobuf(request):
        raise UnsupportedMediaType(
            f"{request.path} takes a JSON body; only forward_backward and forward take {PROTOBUF}",
            field="Content-Type",
        )
    return request_json.parse_object(request_json.read_body(request))


def _training_body(request, kind: str) -> dict:
    if kind == "forward_backward" and is_protobuf(request):
        return request_proto.forward_backward_body(
            request_json.read_body(request), request.headers.get("Content-Encoding", "")
        )
    return body_of(request)


def _claimed_sequence(request, kind: str) -> tuple[str, int] | None:
    stream = request_json.body_stream(request)
    if kind == "forward_backward" and is_protobuf(request):
        return request_proto.claimed_sequence(stream, request.headers.get("Content-Encoding", ""))
    return request_json.claimed_sequence(stream)


# ---- service / session ------------------------------------------------------------------------


@schema.free_form()
@api_view(["POST"])
@permission_classes([AllowAny])
def client_config(request):
    return Response(
        {
            "pjwt_auth_enabled": False,
            "proto_compress_fwdbwd": settings.LORASMITH.proto_compress_fwdbwd,
            "parallel_fwdbwd_chunks": True,
            "sample_use_retrieve_futures": False,
            "custom_loss_server_side": False,
        }
    )


@schema.free_form()
@api_view(["POST"])
@permission_classes([AllowAny])
def client_dynamic_config(request):
    return Response({"refresh_interval_sec": 300, "sample_cancel_enabled": False, "sample_cancel_max_batch_size": 64})


@schema.free_form()
@api_view(["GET"])
@permission_classes([AllowAny])
def healthz(request):
    # the pid lets a supervisor (or a test) tell this server from another one holding the port
    return Response({"status": "ok", "pid": os.getpid()})


@schema.free_form()
@api_view(["GET"])
def server_capabilities(request):
    models = []
    for name in base_models.served_models():
        info = base_models.info(name)
        models.append(
            {
                "model_name": name,
                "max_context_length": info.max_context,
                "trainable": True,
                "sampleable": True,
                "arch": info.arch,
            }
        )
    return Response({"supported_models": models})


@schema.accepts(schema.CreateSession, summary="Start a session (heartbeat it; finish it when done)")
@api_view(["POST"])
def create_session(request):
    session = sessions.create_session(request.user, body_of(request))
    return Response({"session_id": session.id, "type": "create_session"})


@schema.free_form()
@api_view(["POST"])
def session_heartbeat(request):
    sessions.heartbeat(request.user, wire.require(body_of(request), "session_id", str))
    return Response({"type": "session_heartbeat"})


@schema.free_form()
@api_view(["POST"])
def finish_session(request, session_id: str):
    sessions.finish_session(request.user, session_id, body_of(request))
    return Response({"session_id": session_id})


@schema.free_form()
@api_view(["POST"])
def telemetry(request):
    return Response({"status": "accepted"})


# ---- training ---------------------------------------------------------------------------------


@schema.accepts(schema.CreateModel, summary="Create a LoRA training model: a future of its model_id")
@api_view(["POST"])
def create_model(request):
    op = training_requests.create_model(request.user, body_of(request))
    return Response(serializers.future_handle(op))


@schema.free_form()
@api_view(["POST"])
def get_info(request):
    run = access.training_run_of(request.user, wire.require(body_of(request), "model_id", str))
    info = base_models.info(run.base_model)
    return Response(
        {
            "model_id": run.id,
            "model_name": run.base_model,
            "is_lora": True,
            "lora_rank": run.rank,
            "model_data": {
                "arch": info.arch,
                "model_name": run.base_model,
                "tokenizer_id": base_models.tokenizer_id(run.base_model),
            },
            "optimizer_config": {"type": "adamw"},
            "type": "get_info",
        }
    )


def _training_view(kind: str, request_schema, summary: str, forced: dict | None = None):
    @schema.accepts(request_schema, summary=summary)
    @api_view(["POST"])
    def view(request):
        op = training_requests.submit_at_door(
            request.user,
            kind,
            read=lambda: {**_training_body(request, kind), **(forced or {})},
            claim=lambda: _claimed_sequence(request, kind),
        )
        return Response(serializers.future_handle(op))

    view.cls.__name__ = f"{kind.title().replace('_', '')}View"
    return view


forward_backward = _training_view(
    "forward_backward",
    schema.ForwardBackward,
    "Forward and backward pass with a loss; gradients accumulate until optim_step",
)
forward = _training_view(
    "forward_backward", schema.ForwardBackward, "Forward pass only (no gradients)", {"forward_only": True}
)
optim_step = _training_view("optim_step", schema.OptimStep, "One AdamW step on the accumulated gradients")
save_weights = _training_view(
    "save_weights", schema.SaveWeights, "Save adapter and optimizer state (tinker://.../weights/)"
)
save_weights_for_sampler = _training_view(
    "save_weights_for_sampler",
    schema.SaveWeights,
    "Export sampler weights (named, or ephemeral with a sampling session)",
)
save_weights_external = _training_view(
    "save_weights_external", schema.SaveWeights, "Export a PEFT adapter for download (external_weights_urls, archive)"
)


@schema.accepts(schema.LoadWeights, summary="Load a training checkpoint (create-via-load, or into a model)")
@api_view(["POST"])
def load_weights(request):
    op = training_requests.load_weights(request.user, body_of(request))
    return Response(serializers.future_handle(op))


# ---- sampling ---------------------------------------------------------------------------------


@schema.accepts(schema.CreateSamplingSession, summary="A sampler on a base model or sampler weights")
@api_view(["POST"])
def create_sampling_session(request):
    sampler = sampling_requests.create_sampling_session(request.user, body_of(request))
    return Response({"sampling_session_id": sampler.id, "type": "create_sampling_session"})


@schema.free_form()
@api_view(["GET"])
def get_sampler(request, sampler_id: str):
    sampler = access.sampling_session_of(request.user, sampler_id)
    return Response(
        {"sampler_id": sampler.id, "base_model": sampler.base_model, "model_path": sampler.model_path or None}
    )


@schema.accepts(schema.Sample, schema.SampleHandle, summary="Sample completions: a future of a SampleResponse")
@api_view(["POST"])
def asample(request):
    op = sampling_requests.submit_sample(request.user, body_of(request))
    return Response(serializers.future_handle(op, sample_sequence_ids=op.sample_sequence_ids()))


# ---- runs and checkpoints ---------------------------------------------------------------------


def _page(request, default_limit: int) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", default_limit))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise BadRequest("limit and offset must be integers", field="limit") from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise BadRequest("limit must be 1-1000 and offset >= 0", field="limit")
    return limit, offset


def _paginated(request, key: str, queryset, serialize, default_limit: int) -> Response:
    """One page of `queryset` under `key`, with the cursor the Tinker REST client reads."""
    limit, offset = _page(request, default_limit)
    return Response(
        {
            key: [serialize(item) for item in queryset[offset : offset + limit]],
            "cursor": {"offset": offset, "limit": limit, "total_count": queryset.count()},
        }
    )


@schema.free_form()
@api_view(["GET"])
def list_sessions(request):
    limit, offset = _page(request, 20)
    found = Session.objects.filter(owner=request.user).order_by("-created_at")
    return Response({"sessions": list(found.values_list("id", flat=True)[offset : offset + limit])})


@schema.free_form()
@api_view(["GET"])
def session_detail(request, session_id: str):
    session = access.session_of(request.user, session_id)
    return Response(
        {
            "session_id": session.id,
            "training_run_ids": list(session.training_runs.order_by("created_at").values_list("id", flat=True)),
            "sampler_ids": list(session.sampling_sessions.order_by("created_at").values_list("id", flat=True)),
            "user_metadata": session.user_metadata or None,
            "tags": session.tags,
            "display_name": session.display_name or None,
            "project_id": session.project_id or None,
            "finished_reason": session.finished_reason or None,
        }
    )


@schema.free_form()
@api_view(["POST"])
def cancel_future(request):
    request_id = wire.require(body_of(request), "request_id", str)
    return Response({"request_id": request_id, "cancelled": sampling_requests.cancel_future(request.user, request_id)})


@schema.free_form()
@api_view(["GET"])
def training_runs(request):
    runs = TrainingRun.objects.with_latest_checkpoints().filter(owner=request.user).order_by("-created_at")
    return _paginated(request, "training_runs", runs, serializers.training_run, 20)


@schema.free_form()
@api_view(["GET"])
def training_run(request, run_id: str):
    return Response(serializers.training_run(access.training_run_of(request.user, run_id)))


@schema.free_form()
@api_view(["GET"])
def run_checkpoints(request, run_id: str):
    run = access.training_run_of(request.user, run_id)
    checkpoints = run.checkpoints.unexpired().order_by("-created_at")
    return Response({"checkpoints": [serializers.checkpoint(c) for c in checkpoints]})


@schema.free_form()
@api_view(["GET"])
def user_checkpoints(request):
    checkpoints = Checkpoint.objects.filter(owner=request.user).unexpired().order_by("-created_at")
    return _paginated(request, "checkpoints", checkpoints, serializers.checkpoint, 100)


@schema.free_form()
@api_view(["DELETE"])
def delete_checkpoint(request, run_id: str, checkpoint_id: str):
    retention.delete_checkpoint(access.owned_checkpoint(request.user, run_id, checkpoint_id))
    return Response(status=204)


@schema.free_form()
@api_view(["POST", "DELETE"])
def publish_checkpoint(request, run_id: str, checkpoint_id: str):
    checkpoint = access.owned_checkpoint(request.user, run_id, checkpoint_id)
    checkpoint.publish(request.method == "POST")
    return Response(serializers.checkpoint(checkpoint))


@schema.free_form(summary="Add your loop's own metrics (held-out NLL, rewards) to a run's chart")
@api_view(["POST"])
def run_user_metrics(request, run_id: str):
    recorded = run_metrics.record_user_metrics(request.user, run_id, body_of(request))
    return Response({"recorded": recorded})


@schema.free_form()
@api_view(["PUT"])
def checkpoint_ttl(request, run_id: str, checkpoint_id: str):
    checkpoint = access.owned_checkpoint(request.user, run_id, checkpoint_id)
    body = body_of(request)
    checkpoint.set_ttl(wire.optional(body, "ttl_seconds", int, None))
    return Response(serializers.checkpoint(checkpoint))


@schema.free_form()
@api_view(["GET"])
def external_weights_urls(request, run_id: str, checkpoint_id: str):
    checkpoint = access.downloadable_checkpoint(request.user, run_id, checkpoint_id)
    urls, expires = {}, None
    for file in storage.checkpoint_files(checkpoint.directory):
        urls[Path(file).name], expires = storage.download_url(request, file)
    return Response({"urls": urls, "expires": expires.isoformat() if expires else None})


@schema.free_form()
@api_view(["GET"])
def checkpoint_archive(request, run_id: str, checkpoint_id: str):
    checkpoint = access.downloadable_checkpoint(request.user, run_id, checkpoint_id)
    url, expires = storage.download_url(
        request, storage.archive_of(checkpoint.directory), filename=download_names.archive_name(checkpoint)
    )
    return Response({"url": url, "expires": expires.isoformat()})


@schema.free_form()
@api_view(["POST"])
def weights_info(request):
    path = wire.parse_tinker_path(wire.require(body_of(request), "tinker_path", str), "tinker_path")
    checkpoint = access.readable_checkpoint(request.user, path.run_id, path.checkpoint_id)
    run = checkpoint.training_run
    return Response(
        {
            "base_model": run.base_model,
            "is_lora": True,
            "lora_rank": run.rank,
            "train_unembed": run.train_unembed,
            "train_mlp": run.train_mlp,
            "train_attn": run.train_attn,
            "optimizer_config": {"type": "adamw"},
        }
    )


@schema.free_form()
@api_view(["GET"])
def tokenizer_files(request, name: str):
    info = base_models.served_info(name, field="name")
    directory = Path(info.model_dir)
    if not directory.is_dir():
        return Response({"hub_id": info.model_dir})
    return Response(
        {"files": {file.name: storage.signed_url(request, file)[0] for file in storage.tokenizer_files(directory)}}
    )

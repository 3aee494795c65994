"""OpenAPI descriptions of the JSON bodies (drf-spectacular), for documentation only.

Validation lives in `training.wire`/`training.intake` (one place, messages naming the field);
these serializers only describe the shapes of TINKER_WIRE.md's JSON forms to the schema.
Request bodies are JSON (the one parser), except that forward_backward and forward also take
Tinker's protobuf form (api/request_proto.py, not described here); each view's documented 200
answer has exactly the fields `api.views` returns (`ANSWERS`), checked by test_api_schema.py.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers as s


class AutoSchema(openapi.AutoSchema):
    def get_operation_id(self) -> str:
        """`v1_<path with its parameters>_<action>`: the default drops path parameters, so that
        `sessions` and `sessions/{session_id}` collided (and got numbered)."""
        tokens = [token.strip("{}").replace("-", "_") for token in self.path.removeprefix("/api/").split("/") if token]
        return "_".join([*tokens, self.method_mapping[self.method.lower()]])


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-API-Key"}


class TensorData(s.Serializer):
    data = s.ListField(child=s.FloatField(), help_text="flat values, row-major")  # type: ignore[assignment]  # the wire's name shadows Serializer.data
    dtype = s.ChoiceField(choices=["int64", "float32"])
    shape = s.ListField(child=s.IntegerField(), required=False)
    sparse_crow_indices = s.ListField(child=s.IntegerField(), required=False, help_text="CSR row offsets (2-D only)")
    sparse_col_indices = s.ListField(child=s.IntegerField(), required=False, help_text="CSR column of each value")


class EncodedTextChunk(s.Serializer):
    type = s.CharField(default="encoded_text")
    tokens = s.ListField(child=s.IntegerField())


class ModelInput(s.Serializer):
    chunks = EncodedTextChunk(many=True)


class Datum(s.Serializer):
    model_input = ModelInput()
    loss_fn_inputs = s.DictField(child=TensorData(), help_text="e.g. target_tokens, weights, logprobs, advantages")


class FutureHandle(s.Serializer):
    request_id = s.CharField()
    model_id = s.CharField(required=False)


class ErrorBody(s.Serializer):
    error = s.CharField()
    detail = s.CharField()
    field = s.CharField(required=False, help_text="the request field at fault")
    consumed_seq_id = s.IntegerField(required=False, help_text="a refused training request still used this seq_id")
    retry_after_seconds = s.FloatField(required=False, help_text="429: when to send the same request again")


class CreateSession(s.Serializer):
    tags = s.ListField(child=s.CharField(), required=False)
    user_metadata = s.DictField(required=False)
    sdk_version = s.CharField(required=False)
    display_name = s.CharField(required=False)
    project_id = s.CharField(required=False)


class LoraConfig(s.Serializer):
    rank = s.IntegerField(default=32, min_value=1, max_value=1024)
    seed = s.IntegerField(required=False)
    train_attn = s.BooleanField(default=True)
    train_mlp = s.BooleanField(default=True)
    train_unembed = s.BooleanField(default=True)
    expert_layout = s.ChoiceField(
        choices=["shared_outer", "per_expert"],
        default="shared_outer",
        help_text="MoE models: one A shared by all experts on gate/up's input and one B on down's output "
        "(Tinker's), or every expert its own factors",
    )


class CreateModel(s.Serializer):
    session_id = s.CharField()
    model_seq_id = s.IntegerField()
    base_model = s.CharField()
    lora_config = LoraConfig(required=False)
    user_metadata = s.DictField(required=False)


class ForwardBackward(s.Serializer):
    model_id = s.CharField()
    seq_id = s.IntegerField(min_value=1)
    data = Datum(many=True)  # type: ignore[assignment]  # the wire's name shadows Serializer.data
    loss_fn = s.ChoiceField(
        choices=["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo"], default="cross_entropy"
    )
    loss_fn_config = s.DictField(child=s.FloatField(), required=False)
    forward_only = s.BooleanField(default=False)


class AdamParams(s.Serializer):
    learning_rate = s.FloatField(default=1e-4)
    beta1 = s.FloatField(default=0.9)
    beta2 = s.FloatField(default=0.95)
    eps = s.FloatField(default=1e-12)
    weight_decay = s.FloatField(default=0.0)
    grad_clip_norm = s.FloatField(default=0.0)


class OptimStep(s.Serializer):
    model_id = s.CharField()
    seq_id = s.IntegerField(min_value=1)
    adam_params = AdamParams()


class SaveWeights(s.Serializer):
    model_id = s.CharField()
    seq_id = s.IntegerField(min_value=1)
    path = s.CharField(required=False, help_text="checkpoint name; omitted on save_weights_for_sampler = ephemeral")
    ttl_seconds = s.IntegerField(required=False)
    overwrite = s.BooleanField(default=False)
    sampling_session_seq_id = s.IntegerField(required=False)
    user_metadata = s.DictField(required=False)


class LoadWeights(s.Serializer):
    path = s.CharField(help_text="tinker://<model_id>/weights/<name>")
    optimizer = s.BooleanField(default=False)
    session_id = s.CharField(required=False, help_text="with model_seq_id: create a model from the checkpoint")
    model_seq_id = s.IntegerField(required=False)
    model_id = s.CharField(required=False, help_text="legacy: load into this model at seq_id")
    seq_id = s.IntegerField(required=False)


class SamplingParams(s.Serializer):
    max_tokens = s.IntegerField(default=16)
    temperature = s.FloatField(default=1.0)
    top_k = s.IntegerField(default=-1)
    top_p = s.FloatField(default=1.0)
    seed = s.IntegerField(required=False)
    stop = s.JSONField(required=False, help_text="a string, a list of strings or a list of token ids")


class Sample(s.Serializer):
    sampling_session_id = s.CharField()
    seq_id = s.IntegerField()
    prompt = ModelInput()
    num_samples = s.IntegerField(default=1)
    sampling_params = SamplingParams()
    prompt_logprobs = s.BooleanField(default=False)
    topk_prompt_logprobs = s.IntegerField(default=0)
    topk_sample_logprobs = s.IntegerField(
        default=0,
        help_text="K (0-100): each sequence's topk_logprobs, per sampled position the K most likely "
        "[token, logprob] under the model's distribution before temperature/top_k/top_p",
    )
    prompt_logprobs_last_n = s.IntegerField(required=False)
    target_prompt_logprobs = TensorData(
        required=False,
        help_text="int64 [len(prompt) - 1, K]: row i asks the logprobs of its token ids at prompt position "
        "i + 1 (-1: none); answered as float32 of the same shape",
    )


class SampleHandle(FutureHandle):
    sample_sequence_ids = s.ListField(child=s.CharField())


class CreateSamplingSession(s.Serializer):
    session_id = s.CharField()
    sampling_session_seq_id = s.IntegerField()
    base_model = s.CharField(required=False)
    model_path = s.CharField(required=False, help_text="tinker://.../sampler_weights/<name>")


# ---- answers (api.views returns exactly these fields) -----------------------------------------


class CreateSessionAnswer(s.Serializer):
    session_id = s.CharField()
    type = s.ChoiceField(choices=["create_session"])


class CreateSamplingSessionAnswer(s.Serializer):
    sampling_session_id = s.CharField()
    type = s.ChoiceField(choices=["create_sampling_session"])


class ClientConfig(s.Serializer):
    pjwt_auth_enabled = s.BooleanField()
    proto_compress_fwdbwd = s.BooleanField()
    parallel_fwdbwd_chunks = s.BooleanField()
    sample_use_retrieve_futures = s.BooleanField()
    custom_loss_server_side = s.BooleanField()


class ClientDynamicConfig(s.Serializer):
    refresh_interval_sec = s.IntegerField()
    sample_cancel_enabled = s.BooleanField()
    sample_cancel_max_batch_size = s.IntegerField()


class Health(s.Serializer):
    status = s.ChoiceField(choices=["ok"])
    pid = s.IntegerField(help_text="the server process, to tell this server from another on the port")


class SupportedModel(s.Serializer):
    model_name = s.CharField()
    max_context_length = s.IntegerField()
    trainable = s.BooleanField()
    sampleable = s.BooleanField()
    arch = s.CharField()


class ServerCapabilities(s.Serializer):
    supported_models = SupportedModel(many=True)


class SessionHeartbeat(s.Serializer):
    session_id = s.CharField()


class SessionHeartbeatAnswer(s.Serializer):
    type = s.ChoiceField(choices=["session_heartbeat"])


class FinishSession(s.Serializer):
    reason = s.DictField(required=False, help_text="{type: success|error|...}; the first finish wins")
    detail = s.CharField(required=False)


class FinishSessionAnswer(s.Serializer):
    session_id = s.CharField()


class TelemetryAnswer(s.Serializer):
    status = s.ChoiceField(choices=["accepted"])


class GetInfo(s.Serializer):
    model_id = s.CharField()


class ModelData(s.Serializer):
    arch = s.CharField()
    model_name = s.CharField()
    tokenizer_id = s.CharField()


class OptimizerConfig(s.Serializer):
    type = s.ChoiceField(choices=["adamw"])


class ModelInfo(s.Serializer):
    model_id = s.CharField()
    model_name = s.CharField()
    is_lora = s.BooleanField()
    lora_rank = s.IntegerField()
    model_data = ModelData()
    optimizer_config = OptimizerConfig()
    type = s.ChoiceField(choices=["get_info"])


class Sampler(s.Serializer):
    sampler_id = s.CharField()
    base_model = s.CharField()
    model_path = s.CharField(allow_null=True)


class SessionList(s.Serializer):
    sessions = s.ListField(child=s.CharField(), help_text="session ids, newest first")


class SessionDetail(s.Serializer):
    session_id = s.CharField()
    training_run_ids = s.ListField(child=s.CharField())
    sampler_ids = s.ListField(child=s.CharField())
    user_metadata = s.DictField(allow_null=True)
    tags = s.ListField(child=s.CharField())
    display_name = s.CharField(allow_null=True)
    project_id = s.CharField(allow_null=True)
    finished_reason = s.CharField(allow_null=True)


class CancelFuture(s.Serializer):
    request_id = s.CharField()


class CancelFutureAnswer(s.Serializer):
    request_id = s.CharField()
    cancelled = s.BooleanField(help_text="false: already started or finished, or not a sampling request")


class Cursor(s.Serializer):
    offset = s.IntegerField()
    limit = s.IntegerField()
    total_count = s.IntegerField()


class CheckpointInfo(s.Serializer):
    checkpoint_id = s.CharField(help_text="<weights|sampler_weights|external_weights>/<name>")
    checkpoint_type = s.ChoiceField(choices=["training", "sampler", "external"])
    time = s.DateTimeField()
    tinker_path = s.CharField()
    size_bytes = s.IntegerField()
    public = s.BooleanField()
    expires_at = s.DateTimeField(allow_null=True)
    user_metadata = s.DictField(allow_null=True)


class RunnerInfo(s.Serializer):
    id = s.CharField()
    host = s.CharField()
    device = s.CharField(help_text="empty: the engine's default device")
    state = s.ChoiceField(choices=["live", "dead"])


class TrainingRunInfo(s.Serializer):
    training_run_id = s.CharField()
    base_model = s.CharField()
    model_owner = s.CharField()
    is_lora = s.BooleanField()
    lora_rank = s.IntegerField()
    corrupted = s.BooleanField()
    last_request_time = s.DateTimeField()
    user_metadata = s.DictField(allow_null=True)
    last_checkpoint = CheckpointInfo(allow_null=True)
    last_sampler_checkpoint = CheckpointInfo(allow_null=True)
    step = s.IntegerField()
    runner = RunnerInfo(allow_null=True, help_text="the runner holding the run's adapter; null until placed")
    snapshot_seq_id = s.IntegerField(
        allow_null=True, help_text="the last seq_id covered by the run's latest snapshot; null before its first"
    )


class TrainingRunPage(s.Serializer):
    training_runs = TrainingRunInfo(many=True)
    cursor = Cursor()


class CheckpointList(s.Serializer):
    checkpoints = CheckpointInfo(many=True)


class CheckpointPage(s.Serializer):
    checkpoints = CheckpointInfo(many=True)
    cursor = Cursor()


class CheckpointTtl(s.Serializer):
    ttl_seconds = s.IntegerField(required=False, allow_null=True, help_text="3600 s to 10 years; null: never expires")


class ExternalWeightsUrls(s.Serializer):
    urls = s.DictField(child=s.URLField(), help_text="file name -> signed download URL")
    expires = s.DateTimeField(allow_null=True)


class CheckpointArchive(s.Serializer):
    url = s.URLField(help_text="signed download URL of a .tar of the checkpoint")
    expires = s.DateTimeField()


class WeightsInfoRequest(s.Serializer):
    tinker_path = s.CharField(help_text="tinker://<model_id>/<weights|sampler_weights|external_weights>/<name>")


class WeightsInfo(s.Serializer):
    base_model = s.CharField()
    is_lora = s.BooleanField()
    lora_rank = s.IntegerField()
    train_unembed = s.BooleanField()
    train_mlp = s.BooleanField()
    train_attn = s.BooleanField()
    optimizer_config = OptimizerConfig()


class TokenizerFileUrls(s.Serializer):
    files = s.DictField(child=s.URLField(), help_text="file name -> signed download URL")


class TokenizerHubId(s.Serializer):
    hub_id = s.CharField(help_text="not local: fetch the tokenizer from the Hugging Face hub")


TOKENIZER_FILES = PolymorphicProxySerializer(
    component_name="TokenizerFiles",
    serializers=[TokenizerFileUrls, TokenizerHubId],
    resource_type_field_name=None,
)


class UsageCounts(s.Serializer):
    tokens_trained = s.IntegerField(help_text="model_input tokens of forward_backward")
    tokens_forward = s.IntegerField(help_text="model_input tokens of forward (no gradients)")
    tokens_sampled = s.IntegerField(help_text="tokens generated by sample")
    optimizer_steps = s.IntegerField()


class UsageDay(UsageCounts):
    day = s.DateField(help_text="UTC")


class UsageRun(UsageCounts):
    run_id = s.CharField(allow_null=True, help_text="null: sampling from checkpoint weights, outside a run")
    base_model = s.CharField()


class UsageKey(UsageCounts):
    key_prefix = s.CharField(allow_null=True)
    key_name = s.CharField()
    revoked = s.BooleanField()


class Usage(s.Serializer):
    first_day = s.DateField()
    last_day = s.DateField()
    totals = UsageCounts()
    per_day = UsageDay(many=True)
    per_run = UsageRun(many=True)
    per_api_key = UsageKey(many=True)


class UserMetrics(s.Serializer):
    step = s.IntegerField(min_value=0, help_text="the x of these points: e.g. the optimizer steps taken so far")
    metrics = s.DictField(child=s.FloatField(), help_text="1-64 names (letters, digits, _ . / : -) to finite numbers")


class UserMetricsAnswer(s.Serializer):
    recorded = s.IntegerField()


ERRORS = {code: ErrorBody for code in (400, 401, 404, 410, 413, 429)}
NO_CONTENT = object()  # a 204 answer without a body
ANY_OBJECT = OpenApiTypes.OBJECT  # a body the view ignores: any JSON object

# The views documented with `free_form()` (and the answers of `accepts()` views that are not future
# handles), by view function name: (request body, 200 answer). A request of None: none is read.
ANSWERS: dict[str, tuple[Any, Any]] = {
    "client_config": (ANY_OBJECT, ClientConfig),
    "client_dynamic_config": (ANY_OBJECT, ClientDynamicConfig),
    "healthz": (None, Health),
    "server_capabilities": (None, ServerCapabilities),
    "create_session": (CreateSession, CreateSessionAnswer),
    "session_heartbeat": (SessionHeartbeat, SessionHeartbeatAnswer),
    "finish_session": (FinishSession, FinishSessionAnswer),
    "telemetry": (ANY_OBJECT, TelemetryAnswer),
    "get_info": (GetInfo, ModelInfo),
    "create_sampling_session": (CreateSamplingSession, CreateSamplingSessionAnswer),
    "get_sampler": (None, Sampler),
    "list_sessions": (None, SessionList),
    "session_detail": (None, SessionDetail),
    "cancel_future": (CancelFuture, CancelFutureAnswer),
    "training_runs": (None, TrainingRunPage),
    "training_run": (None, TrainingRunInfo),
    "run_checkpoints": (None, CheckpointList),
    "user_checkpoints": (None, CheckpointPage),
    "delete_checkpoint": (None, NO_CONTENT),
    "publish_checkpoint": (None, CheckpointInfo),
    "checkpoint_ttl": (CheckpointTtl, CheckpointInfo),
    "run_user_metrics": (UserMetrics, UserMetricsAnswer),
    "external_weights_urls": (None, ExternalWeightsUrls),
    "checkpoint_archive": (None, CheckpointArchive),
    "weights_info": (WeightsInfoRequest, WeightsInfo),
    "tokenizer_files": (None, TOKENIZER_FILES),
    "usage_summary": (None, Usage),
}


PAGED = {"list_sessions", "training_runs", "user_checkpoints"}  # these read ?limit=&offset=
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description="1-1000 (default 20; 100 for checkpoints)"),
    OpenApiParameter("offset", int, description=">= 0 (default 0)"),
]
QUERY_PARAMETERS = {
    "usage_summary": [OpenApiParameter("days", int, description="1-366: the window ending today (default 30)")]
}


def _responses(answer: Any) -> dict:
    if answer is NO_CONTENT:
        return {204: None, **ERRORS}
    return {200: answer, **ERRORS}


def _view_name(view: Any) -> str:
    return getattr(getattr(view, "cls", None), "__name__", "")  # @api_view names its class after the function


def accepts(request: type[s.Serializer], response: type[s.Serializer] | None = None, summary: str = ""):
    """Document a view's JSON body and answer (by default a future handle: the answer of a submit)."""

    def decorate(view: Any) -> Any:
        answer = response or ANSWERS.get(_view_name(view), (None, FutureHandle))[1]
        return extend_schema(request=request, responses=_responses(answer), summary=summary or None)(view)

    return decorate


def free_form(summary: str = ""):
    """A view whose JSON body and answer are described in `ANSWERS` (by the view's name); a view
    missing there is documented as taking and answering any JSON object."""

    def decorate(view: Any) -> Any:
        name = _view_name(view)
        request, answer = ANSWERS.get(name, (ANY_OBJECT, ANY_OBJECT))
        return extend_schema(
            request=request,
            responses=_responses(answer),
            parameters=PAGE_PARAMETERS if name in PAGED else QUERY_PARAMETERS.get(name),
            summary=summary or None,
        )(view)

    return decorate


def add_retrieve_future(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: `retrieve_future` is an async plain-Django view, so it is described here."""
    result.setdefault("paths", {}).update(RETRIEVE_FUTURE_PATH)
    return result


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}  # the component of the DRF views' errors

RETRIEVE_FUTURE_PATH = {
    "/api/v1/retrieve_future": {
        "post": {
            "operationId": "v1_retrieve_future_create",
            "summary": "Long-poll a future: its result, {type: try_again, queue_state}, or {error, category}",
            "tags": ["api"],
            "security": [{"ApiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["request_id"],
                            "properties": {
                                "request_id": {"type": "string"},
                                "allow_metadata_only": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "the operation's result (ForwardBackwardOutput, SampleResponse, ...), "
                    "a try_again answer, or a failure with category user|server",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {},
                                "description": "free-form: the shape depends on the operation (TINKER_WIRE.md §5)",
                            }
                        }
                    },
                },
                **{
                    code: {"description": text, "content": {"application/json": {"schema": ERROR_REF}}}
                    for code, text in (
                        ("400", "not JSON, or no request_id"),
                        ("401", "missing or invalid X-API-Key"),
                        ("404", "no such future (or not yours)"),
                    )
                },
            },
        }
    },
}

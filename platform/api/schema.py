"""OpenAPI descriptions of the JSON bodies (drf-spectacular), for documentation only.

Validation lives in `training.wire`/`training.intake` (one place, messages naming the field);
these serializers only describe the shapes of TINKER_WIRE.md's JSON forms to the schema.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers as s


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-API-Key"}


class TensorData(s.Serializer):
    data = s.ListField(child=s.FloatField(), help_text="flat values, row-major")  # type: ignore[assignment]  # the wire's name shadows Serializer.data
    dtype = s.ChoiceField(choices=["int64", "float32"])
    shape = s.ListField(child=s.IntegerField(), required=False)


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
        choices=["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"], default="cross_entropy"
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
    prompt_logprobs_last_n = s.IntegerField(required=False)


class SampleHandle(FutureHandle):
    sample_sequence_ids = s.ListField(child=s.CharField())


class CreateSamplingSession(s.Serializer):
    session_id = s.CharField()
    sampling_session_seq_id = s.IntegerField()
    base_model = s.CharField(required=False)
    model_path = s.CharField(required=False, help_text="tinker://.../sampler_weights/<name>")


ERRORS = {code: ErrorBody for code in (400, 401, 404, 410, 413, 429)}


def accepts(request: type[s.Serializer], response: type[s.Serializer] = FutureHandle, summary: str = ""):
    """Document a view's JSON body and answer (the answer of a submit is a future handle)."""
    return extend_schema(request=request, responses={200: response, **ERRORS}, summary=summary or None)


def add_retrieve_future(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: `retrieve_future` is an async plain-Django view, so it is described here."""
    result.setdefault("paths", {}).update(RETRIEVE_FUTURE_PATH)
    return result


def free_form(summary: str = ""):
    """A JSON object in and out (see TINKER_WIRE.md for its fields)."""
    return extend_schema(
        request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary=summary or None
    )


RETRIEVE_FUTURE_PATH = {
    "/api/v1/retrieve_future": {
        "post": {
            "operationId": "retrieve_future",
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
                    "a try_again answer, or a failure with category user|server"
                },
                "401": {"description": "missing or invalid X-API-Key"},
                "404": {"description": "no such future (or not yours)"},
            },
        }
    },
}

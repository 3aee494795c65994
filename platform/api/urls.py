from django.urls import path, re_path, register_converter

from training.wire import SEGMENT_CHOICES

from . import futures, usage_views, views

# Path parameters never hold NUL: PostgreSQL refuses it in a query (a 500), so such a path is a 404.
SEGMENT = r"[^/\x00]+"


class SegmentConverter:
    regex = SEGMENT

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(SegmentConverter, "segment")

RUN = rf"(?P<run_id>{SEGMENT})"
CHECKPOINT = rf"(?P<checkpoint_id>(?:{SEGMENT_CHOICES})/{SEGMENT})"

urlpatterns = [
    path("client/config", views.client_config),
    path("client/dynamic_config", views.client_dynamic_config),
    path("healthz", views.healthz),
    path("get_server_capabilities", views.server_capabilities),
    path("create_session", views.create_session),
    path("session_heartbeat", views.session_heartbeat),
    path("sessions", views.list_sessions),
    path("sessions/<segment:session_id>", views.session_detail),
    path("sessions/<segment:session_id>/finish", views.finish_session),
    path("cancel_future", views.cancel_future),
    path("telemetry", views.telemetry),
    path("create_model", views.create_model),
    path("get_info", views.get_info),
    path("forward_backward", views.forward_backward),
    path("forward", views.forward),
    path("optim_step", views.optim_step),
    path("save_weights", views.save_weights),
    path("save_weights_for_sampler", views.save_weights_for_sampler),
    path("save_weights_external", views.save_weights_external),
    path("load_weights", views.load_weights),
    path("create_sampling_session", views.create_sampling_session),
    path("samplers/<segment:sampler_id>", views.get_sampler),
    path("asample", views.asample),
    path("retrieve_future", futures.retrieve_future),
    path("training_runs", views.training_runs),
    re_path(rf"^training_runs/{RUN}$", views.training_run),
    re_path(rf"^training_runs/{RUN}/checkpoints$", views.run_checkpoints),
    re_path(rf"^training_runs/{RUN}/metrics$", views.run_user_metrics),
    re_path(rf"^training_runs/{RUN}/checkpoints/{CHECKPOINT}$", views.delete_checkpoint),
    re_path(rf"^training_runs/{RUN}/checkpoints/{CHECKPOINT}/publish$", views.publish_checkpoint),
    re_path(rf"^training_runs/{RUN}/checkpoints/{CHECKPOINT}/ttl$", views.checkpoint_ttl),
    re_path(rf"^training_runs/{RUN}/checkpoints/{CHECKPOINT}/external_weights_urls$", views.external_weights_urls),
    re_path(rf"^training_runs/{RUN}/checkpoints/{CHECKPOINT}/archive$", views.checkpoint_archive),
    path("checkpoints", views.user_checkpoints),
    path("weights_info", views.weights_info),
    re_path(r"^base_models/(?P<name>[^\x00]+)/tokenizer$", views.tokenizer_files),  # hub ids and paths have slashes
    path("usage", usage_views.usage_summary),
    path("_test/counters", futures.counters),
]

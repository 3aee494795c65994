"""Tinker's resources. `Operation` is the durable op log: once a row exists, the request is safe."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Session(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sessions")
    tags = models.JSONField(default=list)
    user_metadata = models.JSONField(default=dict)
    sdk_version = models.CharField(max_length=40, blank=True)
    display_name = models.CharField(max_length=200, blank=True)  # shown in the dashboard
    project_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField(auto_now_add=True)
    finished_reason = models.CharField(max_length=20, blank=True)
    finished_detail = models.TextField(blank=True)


class TrainingRun(models.Model):
    """One LoRA adapter under training; `id` is `{session_id}:train:{model_seq_id}`."""

    id = models.CharField(primary_key=True, max_length=100)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="training_runs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_runs")
    base_model = models.CharField(max_length=200)
    rank = models.PositiveIntegerField()
    alpha = models.FloatField(default=32.0)
    seed = models.BigIntegerField()
    train_attn = models.BooleanField(default=True)
    train_mlp = models.BooleanField(default=True)
    train_unembed = models.BooleanField(default=True)
    user_metadata = models.JSONField(default=dict)
    dispatched_seq = models.IntegerField(default=-1)  # highest seq_id handed to a runner
    step = models.IntegerField(default=0)  # optimizer steps done
    created_at = models.DateTimeField(auto_now_add=True)
    last_request_at = models.DateTimeField(auto_now=True)


class SamplingSession(models.Model):
    """A sampler: the bare base model, or adapter weights from a sampler checkpoint."""

    id = models.CharField(primary_key=True, max_length=100)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="sampling_sessions")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sampling_sessions")
    base_model = models.CharField(max_length=200)
    model_path = models.CharField(max_length=400, blank=True)
    weights_dir = models.CharField(max_length=500, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)  # its ephemeral weights were deleted
    created_at = models.DateTimeField(auto_now_add=True)


class Operation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REJECTED = "rejected"  # refused at the door; holds its seq_id so later requests of the model still run

    id = models.CharField(primary_key=True, max_length=64)  # the future's request_id
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=40)
    base_model = models.CharField(max_length=200, db_index=True)
    training_run = models.ForeignKey(TrainingRun, null=True, on_delete=models.CASCADE, related_name="operations")
    sampling_session = models.ForeignKey(
        SamplingSession, null=True, on_delete=models.CASCADE, related_name="operations"
    )
    seq_id = models.BigIntegerField()
    payload = models.JSONField()
    payload_bytes = models.BigIntegerField(default=0)  # size of the stored payload, for the per-user quota
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    result = models.JSONField(null=True)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=12, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    cycle_id = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["training_run", "seq_id"],
                name="unique_training_seq",
                condition=models.Q(training_run__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["sampling_session", "seq_id"],
                name="unique_sampling_seq",
                condition=models.Q(sampling_session__isnull=False),
            ),
        ]
        indexes = [models.Index(fields=["base_model", "status"])]


class Checkpoint(models.Model):
    class Type(models.TextChoices):
        TRAINING = "training"
        SAMPLER = "sampler"
        EXTERNAL = "external"

    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="checkpoints")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="checkpoints")
    checkpoint_type = models.CharField(max_length=10, choices=Type.choices)
    name = models.CharField(max_length=200)
    directory = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField(default=0)
    public = models.BooleanField(default=False)
    user_metadata = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    SEGMENTS = {"training": "weights", "sampler": "sampler_weights", "external": "external_weights"}

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["training_run", "checkpoint_type", "name"], name="unique_checkpoint_name")
        ]

    @property
    def checkpoint_id(self) -> str:
        return f"{self.SEGMENTS[self.checkpoint_type]}/{self.name}"

    @property
    def tinker_path(self) -> str:
        return f"tinker://{self.training_run_id}/{self.checkpoint_id}"


class MetricPoint(models.Model):
    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    name = models.CharField(max_length=100)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["training_run", "step"])]


class DispatchSlot(models.Model):
    """One row per base model: `busy` while a cycle is in flight, so cycles never overlap."""

    base_model = models.CharField(primary_key=True, max_length=200)
    busy = models.BooleanField(default=False)
    busy_since = models.DateTimeField(null=True)
    cycle_id = models.CharField(max_length=64, blank=True, default="")  # the cycle holding the slot

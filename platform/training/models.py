"""Tinker's resources and the facts about them that every stage shares: id formats, which statuses
are pending, checkpoint types and their `tinker://` path segments, TTLs and publishing.

`Operation` is the durable op log: once a row exists, the request is safe.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from . import costs, events
from .errors import BadRequest


class Session(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sessions")
    tags = models.JSONField(default=list)
    user_metadata = models.JSONField(default=dict)
    sdk_version = models.CharField(max_length=40, blank=True)
    display_name = models.CharField(max_length=2000, blank=True)  # shown in the dashboard
    project_id = models.CharField(max_length=2000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField(auto_now_add=True)
    finished_reason = models.CharField(max_length=20, blank=True)
    finished_detail = models.TextField(blank=True)

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    @staticmethod
    def id_within(resource_id: str) -> str:
        """The session a training run's or sampler's id belongs to (ids start with the session's)."""
        return resource_id.split(":", 1)[0]


class TrainingRunQuerySet(models.QuerySet["TrainingRun"]):
    def with_status(self) -> TrainingRunQuerySet:
        """Each run's `status`, derived, never stored (one query for a whole page): `running` while
        an operation of it runs, else `queued` while one waits; `sampling` while a sampler of its
        weights (an RL loop's) has a sample queued or running; `failed` if its latest operation
        failed; `finished` once its session finished; `idle` otherwise."""
        ops = Operation.objects.filter(training_run=models.OuterRef("pk"))
        samples = Operation.objects.filter(sampling_session__source_run=models.OuterRef("pk")).pending()
        latest = ops.exclude(status=Operation.Status.REJECTED).order_by("-seq_id").values("status")[:1]
        return self.alias(latest_status=models.Subquery(latest)).annotate(
            status=models.Case(
                models.When(models.Exists(ops.filter(status=Operation.Status.RUNNING)), then=models.Value("running")),
                models.When(models.Exists(ops.filter(status=Operation.Status.QUEUED)), then=models.Value("queued")),
                models.When(models.Exists(samples), then=models.Value("sampling")),
                models.When(latest_status=Operation.Status.FAILED, then=models.Value("failed")),
                models.When(~models.Q(session__finished_reason=""), then=models.Value("finished")),
                default=models.Value("idle"),
                output_field=models.CharField(),
            )
        )

    def with_latest_checkpoints(self) -> TrainingRunQuerySet:
        """Owner and unexpired checkpoints (newest first, as `checkpoints_newest_first`) fetched with
        the page: one query each, whatever the page size."""
        return (
            self.select_related("owner", "runner")
            .annotate(latest_snapshot_seq=models.Max("snapshots__seq_id"))
            .prefetch_related(
                models.Prefetch(
                    "checkpoints",
                    queryset=Checkpoint.objects.unexpired().order_by("-created_at"),
                    to_attr="checkpoints_newest_first",
                )
            )
        )


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
    expert_layout = models.CharField(max_length=20, default="shared_outer")  # MoE LoRA factors (README)
    user_metadata = models.JSONField(default=dict)
    dispatched_seq = models.IntegerField(default=-1)  # highest seq_id handed to a runner
    # the runner holding the run's adapter and optimizer (sticky; None until its first dispatch or
    # after its runner stopped), and a count bumped at every placement: a runner that held the run
    # under an older placement must rebuild the adapter, its copy may be stale (DESIGN §6)
    runner = models.ForeignKey("Runner", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    placement_epoch = models.IntegerField(default=0)
    step = models.IntegerField(default=0)  # optimizer steps done
    created_at = models.DateTimeField(auto_now_add=True)
    last_request_at = models.DateTimeField(auto_now=True)

    objects = TrainingRunQuerySet.as_manager()
    # as `TrainingRunQuerySet.with_status` derives them
    STATUSES = ("queued", "running", "sampling", "idle", "finished", "failed")

    @staticmethod
    def make_id(session_id: str, model_seq_id: int) -> str:
        return f"{session_id}:train:{model_seq_id}"

    def snapshot_seq_id(self) -> int | None:
        """The last seq_id covered by the run's latest snapshot (annotated on list pages)."""
        if hasattr(self, "latest_snapshot_seq"):
            return self.latest_snapshot_seq
        return self.snapshots.aggregate(seq=models.Max("seq_id"))["seq"]

    def lora_config(self) -> dict[str, Any]:
        """What the user chose for the adapter (LoraSpec's fields), e.g. to copy into a new run."""
        return {
            name: getattr(self, name)
            for name in ("rank", "alpha", "seed", "train_attn", "train_mlp", "train_unembed", "expert_layout")
        }


class SamplingSession(models.Model):
    """A sampler: the bare base model, or adapter weights from a sampler checkpoint."""

    id = models.CharField(primary_key=True, max_length=100)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="sampling_sessions")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sampling_sessions")
    base_model = models.CharField(max_length=200)
    model_path = models.CharField(max_length=400, blank=True)
    weights_dir = models.CharField(max_length=500, blank=True)
    # the sampler's owner's run whose checkpoint it samples: its usage is that run's (an RL loop's
    # sampling is part of the run's cost); None for the base model or another user's published one
    source_run = models.ForeignKey(
        TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="samplers"
    )
    released_at = models.DateTimeField(null=True, blank=True)  # its ephemeral weights were deleted
    # where its samples run: sticky once placed, so its adapter is imported once (DESIGN §6)
    runner = models.ForeignKey("Runner", null=True, blank=True, on_delete=models.SET_NULL, related_name="samplers")
    created_at = models.DateTimeField(auto_now_add=True)

    @staticmethod
    def make_id(session_id: str, sampling_session_seq_id: int | str) -> str:
        return f"{session_id}:sample:{sampling_session_seq_id}"


class OperationQuerySet(models.QuerySet["Operation"]):
    def pending(self) -> OperationQuerySet:
        """Accepted and not finished: queued or running."""
        return self.filter(status__in=(Operation.Status.QUEUED, Operation.Status.RUNNING))

    def finish(
        self,
        status: str,
        *,
        error: str = "",
        category: str = "",
        result: dict | None = None,
        known: Operation | None = None,
    ) -> list[str]:
        """The one way an accepted operation ends (completed by its cycle, failed by the engine or a
        dead runner, cancelled by its user or a silent session): each operation this queryset selects
        gets `Operation.finished_fields`, a completed one its usage record in the same transaction,
        and its owner one `future_finished` push once that transaction commits, so a client woken by
        it always finds the row finished. Each row is written by a conditional UPDATE on this
        queryset's own filter and on its still being pending, so an operation ends once and a
        racing finish or takeover wins cleanly: a row no longer selected is left alone, counted no
        usage and pushed nothing. `known` is the in-memory
        instance of the one operation to finish (saves a query; its payload counts the usage).
        Returns the ids it finished."""
        fields = Operation.finished_fields(status, error=error, category=category, result=result)
        finished: list[str] = []
        pending = self.pending()  # an operation ends once
        # a caller's transaction is joined, not nested in a savepoint of its own (two round trips
        # per operation a cycle writes): a caller that must go on after a failure here wraps the
        # call in its savepoint, as the cycle's `_record` does
        with transaction.atomic(savepoint=False):
            targets = [(known.pk, known.owner_id)] if known is not None else list(pending.values_list("pk", "owner_id"))
            for pk, owner_id in targets:
                if not pending.filter(pk=pk).update(**fields):
                    continue  # finished or taken over meanwhile: not ours to finish
                if result is not None:
                    UsageRecord.record(known or Operation.objects.select_related("sampling_session").get(pk=pk), result)
                finished.append(pk)
                transaction.on_commit(functools.partial(events.future_finished, owner_id, pk))
        return finished

    def insert_or_racing(self, op: Operation, *first: models.Model) -> Operation:
        """Insert `first` (e.g. the op's new TrainingRun) and `op` in one transaction. If a racing
        request took the op's (model or sampler, seq_id) first, that request's row is returned."""
        try:
            with transaction.atomic():
                for row in first:
                    row.save(force_insert=True)
                op.save(force_insert=True)
            return op
        except IntegrityError:
            return self.get(
                seq_id=op.seq_id, training_run_id=op.training_run_id, sampling_session_id=op.sampling_session_id
            )


class Operation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REJECTED = "rejected"  # refused at the door; holds its seq_id so later requests of the model still run

    class Kind(models.TextChoices):
        CREATE_MODEL = "create_model"
        LOAD_WEIGHTS = "load_weights"
        FORWARD_BACKWARD = "forward_backward"
        OPTIM_STEP = "optim_step"
        SAVE_WEIGHTS = "save_weights"
        SAVE_WEIGHTS_FOR_SAMPLER = "save_weights_for_sampler"
        SAVE_WEIGHTS_EXTERNAL = "save_weights_external"
        SAMPLE = "sample"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED, Status.REJECTED)
    # who is to blame for an operation that did not complete (the future's error `category`)
    CATEGORIES = ("user", "server")

    id = models.CharField(primary_key=True, max_length=64)  # the future's request_id
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=40, choices=Kind.choices)
    base_model = models.CharField(max_length=200, db_index=True)
    training_run = models.ForeignKey(TrainingRun, null=True, on_delete=models.CASCADE, related_name="operations")
    sampling_session = models.ForeignKey(
        SamplingSession, null=True, on_delete=models.CASCADE, related_name="operations"
    )
    seq_id = models.BigIntegerField()
    payload = models.JSONField()
    payload_bytes = models.BigIntegerField(default=0)  # size of the stored payload, for the per-user quota
    cost_tokens = models.BigIntegerField(default=1)  # what it costs a cycle's token budget (`costs.tokens`)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    result = models.JSONField(null=True)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=12, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    cycle_id = models.CharField(max_length=64, blank=True)
    # cycles it was handed to whose runner died before it finished: at the limit it is failed, so an
    # operation that kills its runner is never replayed for ever
    attempts = models.IntegerField(default=0)
    # the key the request came in with (None: made by the platform itself, or before keys were kept)
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    objects = OperationQuerySet.as_manager()

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

    @classmethod
    def finished_fields(
        cls, status: str, *, error: str = "", category: str = "", result: dict | None = None
    ) -> dict[str, Any]:
        """The fields every finished operation has, whichever path finished it: its final status,
        the result of a completed one, or the error of any other with who is to blame for it, and
        when it finished. Written by `OperationQuerySet.finish`, and by intake for a refused
        request's row, which is born finished."""
        if status not in cls.FINISHED:
            raise ValueError(f"{status!r} is not a finished status")
        if (status == cls.Status.DONE) != (result is not None):
            raise ValueError("a completed operation, and only a completed one, has a result")
        if status != cls.Status.DONE and category not in cls.CATEGORIES:
            raise ValueError(f"an operation that did not complete needs a category in {cls.CATEGORIES}")
        return {
            "status": status,
            "result": result,
            "error": error or ("" if status == cls.Status.DONE else f"the operation {status}"),
            "error_category": category,
            "finished_at": timezone.now(),
        }

    @classmethod
    def of_run(cls, run: TrainingRun, kind: str, seq_id: int, payload: dict, **fields: Any) -> Operation:
        """A new (unsaved) training operation of `run`, under a fresh request id."""
        return cls(
            id=uuid.uuid4().hex,
            owner_id=run.owner_id,
            kind=kind,
            base_model=run.base_model,
            training_run=run,
            seq_id=seq_id,
            payload=payload,
            **{"cost_tokens": costs.tokens(kind, payload), **fields},
        )

    @classmethod
    def of_sampler(cls, sampler: SamplingSession, seq_id: int, payload: dict, **fields: Any) -> Operation:
        """A new (unsaved) sample request of `sampler`, under a fresh request id."""
        return cls(
            id=uuid.uuid4().hex,
            owner_id=sampler.owner_id,
            kind=cls.Kind.SAMPLE,
            base_model=sampler.base_model,
            sampling_session=sampler,
            seq_id=seq_id,
            payload=payload,
            **{"cost_tokens": costs.tokens("sample", payload), **fields},
        )

    def require_run(self) -> TrainingRun:
        """The training run of a training operation (every kind but `sample` has one)."""
        if self.training_run is None:
            raise ValueError(f"operation {self.id} ({self.kind}) has no training run")
        return self.training_run

    def sample_sequence_ids(self) -> list[str]:
        """The ids of a sample request's sequences, one per requested sample."""
        return [f"{self.id}:{i}" for i in range(self.payload.get("num_samples", 1))]


class CheckpointQuerySet(models.QuerySet["Checkpoint"]):
    def unexpired(self) -> CheckpointQuerySet:
        """A checkpoint past its TTL is gone for everyone, even before the purge deletes its files."""
        return self.exclude(expires_at__lt=timezone.now())


class Checkpoint(models.Model):
    class Type(models.TextChoices):
        TRAINING = "training"
        SAMPLER = "sampler"
        EXTERNAL = "external"

    # each type's segment in `tinker://<run>/<segment>/<name>` and in checkpoint ids `<segment>/<name>`
    SEGMENTS = {Type.TRAINING: "weights", Type.SAMPLER: "sampler_weights", Type.EXTERNAL: "external_weights"}
    TYPE_OF_SEGMENT = {segment: kind for kind, segment in SEGMENTS.items()}
    # the training operation that writes each type
    SAVED_BY = {
        "save_weights": Type.TRAINING,
        "save_weights_for_sampler": Type.SAMPLER,
        "save_weights_external": Type.EXTERNAL,
    }
    TTL_SECONDS_RANGE = (3600, 10 * 365 * 86400)

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

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["training_run", "checkpoint_type", "name"], name="unique_checkpoint_name")
        ]

    @property
    def checkpoint_id(self) -> str:
        return f"{self.SEGMENTS[self.Type(self.checkpoint_type)]}/{self.name}"

    @property
    def tinker_path(self) -> str:
        return f"tinker://{self.training_run_id}/{self.checkpoint_id}"

    @classmethod
    def split_id(cls, checkpoint_id: str) -> tuple[str, str] | None:
        """`<segment>/<name>` -> (checkpoint type, name), or None if it is not a checkpoint id."""
        segment, _, name = checkpoint_id.partition("/")
        if segment not in cls.TYPE_OF_SEGMENT or not name:
            return None
        return cls.TYPE_OF_SEGMENT[segment], name

    @classmethod
    def expiry(cls, ttl_seconds: int | None) -> datetime | None:
        """When a checkpoint given `ttl_seconds` from now expires (None: never); checks the range."""
        if ttl_seconds is None:
            return None
        low, high = cls.TTL_SECONDS_RANGE
        if not low <= ttl_seconds <= high:
            raise BadRequest(
                "ttl_seconds must be between 3600 and 10 years (or null for no expiry)", field="ttl_seconds"
            )
        return timezone.now() + timedelta(seconds=ttl_seconds)

    def set_ttl(self, ttl_seconds: int | None) -> None:
        self.expires_at = self.expiry(ttl_seconds)
        self.save(update_fields=["expires_at"])

    def publish(self, public: bool = True) -> None:
        """Published checkpoints can be read, sampled and downloaded by every user."""
        self.public = public
        self.save(update_fields=["public"])


class MetricPoint(models.Model):
    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    name = models.CharField(max_length=100)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["training_run", "step"])]


class RunnerQuerySet(models.QuerySet["Runner"]):
    def live(self, base_model: str | None = None) -> RunnerQuerySet:
        found = self.filter(state=Runner.State.LIVE)
        return found.filter(base_model=base_model) if base_model is not None else found


class Runner(models.Model):
    """One runner process's engine for one base model (`training.runners` registers them): it
    consumes its own queue, holds the adapters of the runs placed on it, and has at most one cycle
    in flight (`busy_cycle`). `epoch` is its fencing token: taken at registration, bumped when it
    is declared dead; a cycle message carries it, and one of an older epoch does nothing."""

    class State(models.TextChoices):
        LIVE = "live"
        DEAD = "dead"  # stopped, or no heartbeat for LORASMITH_RUNNER_DEAD_AFTER_SECONDS

    id = models.CharField(primary_key=True, max_length=32)
    base_model = models.CharField(max_length=200)
    host = models.CharField(max_length=200)
    pid = models.IntegerField(default=0)
    device = models.CharField(max_length=40, blank=True)
    queue = models.CharField(max_length=300)
    capacity_bytes = models.BigIntegerField(null=True, blank=True)  # adapter memory budget; None: no limit
    epoch = models.BigIntegerField(default=1)
    state = models.CharField(max_length=8, choices=State.choices, default=State.LIVE)
    heartbeat_at = models.DateTimeField()
    busy_cycle = models.CharField(max_length=64, blank=True, default="")  # the cycle in flight, "" when free
    busy_since = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)

    objects = RunnerQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["base_model", "state"])]

    def describe(self) -> dict[str, str]:
        """What the API shows of the runner holding a run."""
        return {"id": self.id, "host": self.host, "device": self.device, "state": self.state}


class Snapshot(models.Model):
    """A run's adapter and optimizer state after the operation `seq_id` (taken every
    LORASMITH_SNAPSHOT_EVERY_STEPS optimizer steps): a runner that takes the run over loads the
    latest one and replays only the logged operations after it. The op log stays the truth."""

    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="snapshots")
    seq_id = models.BigIntegerField()
    step = models.IntegerField()
    directory = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["training_run", "seq_id"], name="unique_snapshot_seq")]


class UsageRecord(models.Model):
    """What one finished operation consumed, written with its outcome (the same transaction), so
    usage is counted once per operation, never recomputed from logs. Kept when the operation or
    its run is deleted: usage is a bill, not a cache."""

    operation = models.OneToOneField(Operation, null=True, on_delete=models.SET_NULL, related_name="usage")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="usage_records")
    training_run = models.ForeignKey(TrainingRun, null=True, on_delete=models.SET_NULL, related_name="usage_records")
    base_model = models.CharField(max_length=200)
    day = models.DateField()  # UTC
    tokens_trained = models.BigIntegerField(default=0)  # model_input tokens of forward_backward
    tokens_forward = models.BigIntegerField(default=0)  # model_input tokens of forward-only passes
    tokens_sampled = models.BigIntegerField(default=0)  # tokens generated by sample
    optimizer_steps = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "day"])]

    @classmethod
    def record(cls, op: Operation, result: dict) -> UsageRecord | None:
        """Store what `op` consumed (nothing for operations that consume no tokens); a sample is
        charged to the run whose checkpoint its sampler reads, when the sampler's owner owns it."""
        counts = costs.consumed(op.kind, op.payload, result)
        if counts == costs.Counts():
            return None
        sampler = op.sampling_session
        return cls.objects.create(
            operation=op,
            owner_id=op.owner_id,
            api_key_id=op.api_key_id,
            training_run_id=op.training_run_id or (sampler.source_run_id if sampler is not None else None),
            base_model=op.base_model,
            day=timezone.now().date(),  # UTC: TIME_ZONE is UTC
            **counts.to_dict(),
        )


class RunnerHeartbeat(models.Model):
    """One row per runner process and base model, rewritten after each cycle (and renewed every
    minute while the runner runs, `execution.worker.keep_reporting_alive`): what the runner holds
    (its resident adapters and their memory), for the dashboard's overview."""

    runner = models.CharField(max_length=200)  # host:pid
    base_model = models.CharField(max_length=200)
    resident_adapters = models.JSONField(default=list)  # adapter ids: training run and sampler ids
    adapters = models.IntegerField(default=0)  # resident or spilled to disk
    resident_bytes = models.BigIntegerField(default=0)
    budget_bytes = models.BigIntegerField(null=True)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["runner", "base_model"], name="unique_runner_base_model")]

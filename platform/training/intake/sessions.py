"""Sessions: start, heartbeat, finish; the open session every new model or sampler belongs to."""

from __future__ import annotations

from django.utils import timezone

from .. import access, wire
from ..errors import BadRequest, Gone
from ..models import Session

# display_name, project_id: the cookbook names a run after its dataset and model paths, which pass 200
# characters in a deep checkout, so the bound is wide; it still stops a megabyte of "name".
MAX_LABEL_CHARS = 2000


def create_session(user, body: dict) -> Session:
    tags = wire.optional(body, "tags", list, [])
    metadata = wire.user_metadata(body)
    labels = {key: wire.optional(body, key, str, "") for key in ("display_name", "project_id")}
    for key, value in labels.items():
        if len(value) > MAX_LABEL_CHARS:
            raise BadRequest(f"{key} is at most {MAX_LABEL_CHARS} characters", field=key)
    return Session.objects.create(
        id=Session.new_id(),
        owner=user,
        tags=tags,
        user_metadata=metadata,
        sdk_version=str(body.get("sdk_version", ""))[:40],
        **labels,
    )


def heartbeat(user, session_id: str) -> Session:
    session = access.session_of(user, session_id)
    if session.finished_reason:
        raise Gone(f"session {session_id} is finished", field="session_id")
    Session.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now())
    return session


def finish_session(user, session_id: str, body: dict) -> Session:
    session = access.session_of(user, session_id)
    reason = wire.optional(body, "reason", dict, {})
    if not session.finished_reason:  # the first finish reason wins
        session.finished_reason = str(reason.get("type", "success"))[:20]
        session.finished_detail = wire.optional(body, "detail", str, "")
        session.save(update_fields=["finished_reason", "finished_detail"])
    return session


def open_session(user, body: dict) -> Session:
    """The body's `session_id`, which must be the user's and not finished."""
    session = access.session_of(user, wire.require(body, "session_id", str))
    if session.finished_reason:
        raise BadRequest(f"session {session.id} is finished; start a new one", field="session_id")
    return session

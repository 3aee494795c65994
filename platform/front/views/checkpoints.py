"""Checkpoints: the list, download, delete, change TTL, publish/unpublish.

A download is the checkpoint's `.tar` named after its run (`training.download_names`): served here
for a logged-in person when checkpoints are local files; with an object store, a redirect to the
store's presigned URL, which serves it under the same name."""

from __future__ import annotations

from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from training import download_names, object_store, storage
from training.errors import BadRequest
from training.models import Checkpoint
from training.upkeep import retention

from ..forms import TTL_CHOICES, CheckpointTtlForm
from ..lookups import checkpoint_or_404, downloadable_or_404

CHECKPOINTS_PER_PAGE = 50


@login_required
def checkpoints(request):
    found = Checkpoint.objects.filter(owner=request.user).unexpired().order_by("-created_at")
    page = Paginator(found, CHECKPOINTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "front/checkpoints.html", {"page": page, "ttl_choices": TTL_CHOICES})


@login_required
def public_checkpoints(request):
    """What other users published: anyone may download (sampler and external ones) and sample them."""
    found = (
        Checkpoint.objects.filter(public=True)
        .exclude(owner=request.user)
        .unexpired()
        .exclude(checkpoint_type=Checkpoint.Type.TRAINING)
        .select_related("owner", "training_run")
        .order_by("-created_at")
    )
    page = Paginator(found, CHECKPOINTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "front/public_checkpoints.html", {"page": page})


@login_required
def download(request, run_id: str, segment: str, name: str):
    try:
        checkpoint = downloadable_or_404(request.user, run_id, segment, name)
    except BadRequest as refused:  # a training checkpoint: optimizer state, not for download
        messages.error(request, refused.message)
        return redirect("front:checkpoints")
    archive = storage.archive_of(checkpoint.directory)
    name = download_names.archive_name(checkpoint)
    if object_store.is_remote():  # the store serves it, under the same name
        url, _ = storage.download_url(request, archive, filename=name)
        return redirect(url)
    response = FileResponse(open(archive, "rb"), as_attachment=True, filename=name)  # noqa: SIM115 - it closes it
    response["X-Checksum-Sha256"] = storage.sha256(Path(archive))
    return response


@login_required
def delete(request, run_id: str, segment: str, name: str):
    checkpoint = checkpoint_or_404(request.user, run_id, segment, name)
    if request.method == "POST":
        retention.delete_checkpoint(checkpoint)
        messages.success(request, f"Deleted {checkpoint.tinker_path} and its files.")
        return redirect("front:checkpoints")
    return render(request, "front/delete_checkpoint.html", {"checkpoint": checkpoint})


@login_required
@require_POST
def ttl(request, run_id: str, segment: str, name: str):
    checkpoint = checkpoint_or_404(request.user, run_id, segment, name)
    form = CheckpointTtlForm(request.POST)
    if form.is_valid():
        checkpoint.set_ttl(form.cleaned_data["ttl_seconds"])
        when = checkpoint.expires_at.strftime("%Y-%m-%d %H:%M UTC") if checkpoint.expires_at else "never"
        messages.success(request, f"{checkpoint.tinker_path} now expires: {when}.")
    else:
        messages.error(request, "Choose one of the listed durations.")
    return redirect("front:checkpoints")


@login_required
@require_POST
def publish(request, run_id: str, segment: str, name: str):
    checkpoint = checkpoint_or_404(request.user, run_id, segment, name)
    checkpoint.publish(request.POST.get("public") == "true")
    state = "public: every user may read and sample it" if checkpoint.public else "private again"
    messages.success(request, f"{checkpoint.tinker_path} is {state}.")
    return redirect("front:checkpoints")

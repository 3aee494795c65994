"""The sampling playground on a checkpoint's weights: type a prompt, set the sampling params and
stop sequences, read the output with each token's logprob. A hint shows the prompt format of the
run's renderer (`front.prompt_format`) and starts the stop field with its stop strings. The request
goes through the API's own intake (`front.playground`); the page then shows the sample's future,
refreshing it until it is done. A refused or invalid form keeps the output shown before it (the form
posts back to the URL of that output)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from training import access
from training.errors import ApiError, NotFound
from training.models import Checkpoint, Operation

from .. import playground, prompt_format
from ..forms import PlaygroundForm
from ..lookups import sampleable_or_404


@login_required
def playground_page(request, run_id: str, segment: str, name: str):
    checkpoint = sampleable_or_404(request.user, run_id, segment, name)
    here = reverse("front:checkpoint_playground", args=[run_id, segment, name])
    sample = _sample(request, checkpoint)
    hint = prompt_format.hint(checkpoint.training_run)
    if request.method == "POST":
        form = PlaygroundForm(request.POST)
        if form.is_valid():
            try:
                op = playground.submit(
                    request.user, request.session, checkpoint, form.cleaned_data["prompt"], form.sampling_params()
                )
            except ApiError as refused:
                form.add_error(None, refused.message)
            else:
                return redirect(f"{here}?request={op.id}")
    else:
        form = PlaygroundForm(initial=_initial(sample, hint))
    action = f"{here}?request={sample['op'].id}" if sample else here
    context = {"checkpoint": checkpoint, "form": form, "sample": sample, "here": here, "action": action, "hint": hint}
    if request.GET.get("fragment"):  # the page's script refreshes just the output
        return render(request, "front/playground_output.html", context)
    return render(request, "front/playground.html", context)


def _sample(request, checkpoint: Checkpoint) -> dict | None:
    """The sample named by ?request= (the user's own, of this checkpoint), decoded; 404 otherwise."""
    request_id = request.GET.get("request")
    if not request_id:
        return None
    try:
        op = access.operation_of(request.user, request_id)
    except NotFound:
        raise Http404("no such sample") from None
    if op.sampling_session is None or op.sampling_session.model_path != checkpoint.tinker_path:
        raise Http404("no such sample of this checkpoint")
    prompt, sequences = playground.decoded(op)
    pending = op.status in (Operation.Status.QUEUED, Operation.Status.RUNNING)
    if op.status == Operation.Status.CANCELLED:
        messages.info(request, "This sample was cancelled (its session ended). Sample again.")
    return {"op": op, "prompt": prompt, "sequences": sequences, "pending": pending}


def _initial(sample: dict | None, hint: prompt_format.PromptFormat | None) -> dict:
    """What was asked for the sample shown, or the renderer's stop strings for a first sample."""
    if sample is None:
        return {"stop": "\n".join(hint.stop)} if hint else {}
    payload = sample["op"].payload
    params = dict(payload["sampling_params"])
    params["stop"] = PlaygroundForm.stop_text(params.get("stop"))
    return {"prompt": sample["prompt"], "num_samples": payload["num_samples"], **params}

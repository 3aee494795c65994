"""API keys: create one with a name (its secret is shown on the next page only), list by prefix, revoke.

Creating is POST-redirect-GET: the secret is put in the Django session and the page it redirects to
takes it out, so reloading that page shows the list without the secret and never creates a second key."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from accounts.models import ApiKey
from accounts.services import issue_api_key, revoke_api_key_by_id

from ..forms import ApiKeyForm

NEW_SECRET = "new_api_key"  # in request.session between the creating POST and the page it redirects to


@never_cache  # the one answer that carries a secret must not be kept by any cache or the back button
@login_required
def api_keys(request):
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        request.session[NEW_SECRET] = issue_api_key(request.user, form.cleaned_data["name"])
        return redirect("front:api_keys", permanent=False)
    secret = request.session.pop(NEW_SECRET, None) if request.method == "GET" else None
    keys = ApiKey.objects.filter(user=request.user, revoked_at__isnull=True).order_by("-created_at")
    context = {
        "form": form,
        "keys": keys,
        "secret": secret,
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "front/api_keys.html", context)


@login_required
def revoke_api_key(request, key_id: int):
    key = ApiKey.objects.filter(user=request.user, pk=key_id, revoked_at__isnull=True).first()
    if key is None:
        raise Http404("no such API key")
    if request.method == "POST":
        revoke_api_key_by_id(request.user, key.pk)
        messages.success(request, f"Key {key.prefix}… is revoked: requests with it are refused from now on.")
        return redirect("front:api_keys")
    return render(request, "front/revoke_api_key.html", {"key": key})

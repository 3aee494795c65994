"""Sign-up and the landing page. Log in/out and password change/reset are Django's own views
(front/urls.py), with the dashboard's templates and the throttled login form."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.shortcuts import redirect, render

from ..forms import SignupForm


def index(request):
    return redirect("front:runs" if request.user.is_authenticated else "front:login")


def signup(request):
    if not settings.LORASMITH_OPEN_SIGNUP:
        return render(request, "front/signup_closed.html", status=403)
    if request.user.is_authenticated:
        return redirect("front:runs")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to Lorasmith. Create an API key to start training with the SDK.")
        return redirect("front:api_keys")
    return render(request, "front/signup.html", {"form": form})


def logout(request):
    """POST logs out (Django's LogoutView); GET asks first, with a button that POSTs, so a link or a
    prefetch never logs anyone out and a typed URL is not a blank 405."""
    if request.method == "POST":
        return auth_views.LogoutView.as_view()(request)
    return render(request, "front/logout.html")

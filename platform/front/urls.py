"""The dashboard's routes. Every page refuses to be framed (clickjacking); all but the account
pages need a logged-in user."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path, reverse_lazy
from django.views.decorators.clickjacking import xframe_options_deny
from django.views.generic import RedirectView

from .forms import ThrottledLoginForm
from .views import accounts, checkpoints, keys, overview, playground, runs, usage

app_name = "front"
CHECKPOINT = "runs/<str:run_id>/checkpoints/<str:segment>/<str:name>"


def page(route: str, view, name: str):
    return path(route, xframe_options_deny(view), name=name)


urlpatterns = [
    page("", accounts.index, "index"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    page("accounts/signup/", accounts.signup, "signup"),
    page(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="front/login.html", authentication_form=ThrottledLoginForm, redirect_authenticated_user=True
        ),
        "login",
    ),
    page("accounts/logout/", accounts.logout, "logout"),
    page(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(
            template_name="front/password_change.html", success_url=reverse_lazy("front:password_change_done")
        ),
        "password_change",
    ),
    page(
        "accounts/password/changed/",
        auth_views.PasswordChangeDoneView.as_view(template_name="front/password_change_done.html"),
        "password_change_done",
    ),
    page(
        "accounts/password/reset/",
        auth_views.PasswordResetView.as_view(
            template_name="front/password_reset.html",
            email_template_name="front/email/password_reset.txt",
            subject_template_name="front/email/password_reset_subject.txt",
            success_url=reverse_lazy("front:password_reset_done"),
        ),
        "password_reset",
    ),
    page(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="front/password_reset_done.html"),
        "password_reset_done",
    ),
    page(
        "accounts/password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="front/password_reset_confirm.html", success_url=reverse_lazy("front:password_reset_complete")
        ),
        "password_reset_confirm",
    ),
    page(
        "accounts/password/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="front/password_reset_complete.html"),
        "password_reset_complete",
    ),
    page("keys/", keys.api_keys, "api_keys"),
    page("keys/<int:key_id>/revoke/", keys.revoke_api_key, "revoke_api_key"),
    page("runs/", runs.runs, "runs"),
    page("runs/compare/", runs.compare, "compare"),
    page("runs/<str:run_id>/", runs.run, "run"),
    page("checkpoints/", checkpoints.checkpoints, "checkpoints"),
    page("checkpoints/public/", checkpoints.public_checkpoints, "public_checkpoints"),
    page(f"{CHECKPOINT}/download/", checkpoints.download, "checkpoint_download"),
    page(f"{CHECKPOINT}/delete/", checkpoints.delete, "checkpoint_delete"),
    page(f"{CHECKPOINT}/ttl/", checkpoints.ttl, "checkpoint_ttl"),
    page(f"{CHECKPOINT}/publish/", checkpoints.publish, "checkpoint_publish"),
    page(f"{CHECKPOINT}/playground/", playground.playground_page, "checkpoint_playground"),
    page("usage/", usage.usage_page, "usage"),
    page("overview/", overview.overview_page, "overview"),
]

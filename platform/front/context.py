"""What every dashboard page's template may read."""

from django.conf import settings


def dashboard(request) -> dict:
    return {"open_signup": settings.LORASMITH_OPEN_SIGNUP}

from django.urls import path, re_path

from . import views

urlpatterns = [
    path("completions", views.completions),
    path("chat/completions", views.chat_completions),
    path("models", views.models),
    re_path(r"", views.not_found),  # anything else under /oai/api/v1/: OpenAI's 404 shape
]

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from api import errors
from api.files import signed_file

urlpatterns = [
    path("api/v1/", include("api.urls")),
    path("oai/api/v1/", include("api.oai.urls")),  # OpenAI-compatible sampling (DESIGN §11)
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("files/<str:token>/<str:filename>", signed_file),
    path("admin/", admin.site.urls),
    path("", include("front.urls")),  # the dashboard (front/), for browsers
    re_path(r"^api/", errors.not_found),  # unmatched /api/ routes: a JSON 404, not Django's page
]

# JSON under /api/, Django's pages elsewhere (these apply when DEBUG is off)
handler400 = errors.bad_request
handler404 = errors.page_not_found
handler500 = errors.server_error

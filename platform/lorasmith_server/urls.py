from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from api.files import signed_file

urlpatterns = [
    path("api/v1/", include("api.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("files/<str:token>/<str:filename>", signed_file),
    path("admin/", admin.site.urls),
]

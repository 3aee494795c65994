"""ASGI entry: HTTP through Django (static files too, for the dashboard and the admin), WebSockets
through Channels: the SDK's `/ws/v1/events` (API key) and the dashboard's `/ws/v1/dashboard`
(the browser's Django session)."""

import asyncio
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lorasmith_server.settings")

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.urls import path

django_app = get_asgi_application()

from api.consumers import EventsConsumer  # noqa: E402
from front.consumers import DashboardConsumer  # noqa: E402
from training import events  # noqa: E402

router = ProtocolTypeRouter(
    {
        # served from the finders (frontend/, each app's static/): no collectstatic step to forget
        "http": ASGIStaticFilesHandler(django_app),
        "websocket": URLRouter(
            [
                path("ws/v1/events", EventsConsumer.as_asgi()),
                path("ws/v1/dashboard", AuthMiddlewareStack(DashboardConsumer.as_asgi())),
            ]
        ),
    }
)


async def application(scope, receive, send):
    """The router, after noting the server's loop: other threads publish push events onto it."""
    events.bind_web_loop(asyncio.get_running_loop())
    return await router(scope, receive, send)

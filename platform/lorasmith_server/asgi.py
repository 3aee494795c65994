"""ASGI entry: HTTP through Django, WebSockets through Channels (`/ws/v1/events`)."""

import asyncio
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lorasmith_server.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django_app = get_asgi_application()

from api.consumers import EventsConsumer  # noqa: E402
from training import events  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": URLRouter([path("ws/v1/events", EventsConsumer.as_asgi())]),
    }
)


async def application(scope, receive, send):
    """The router, after noting the server's loop: other threads publish push events onto it."""
    events.bind_web_loop(asyncio.get_running_loop())
    return await router(scope, receive, send)

"""`manage.py serve --host H --port P`: migrations + the ASGI server (daphne). Without a broker URL it
also runs the runner in-process, so one command is the whole service on a laptop."""

from daphne.endpoints import build_endpoint_description_strings
from daphne.http_protocol import WebRequest
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand

from lorasmith_server import connection_guard
from lorasmith_server.asgi import application
from lorasmith_server.migrations_at_start import ensure_migrated
from training.base_models import served_models
from training.execution.worker import start_worker

WORKER_STOP_TIMEOUT_MS = 60_000


def leave_request_bodies_to_django() -> None:
    """Twisted parses multipart and form bodies itself and answers a bare, empty 400 when that
    fails, before Django (and the API key check) sees the request. Django reads bodies on its own,
    so Twisted's parse is switched off: every answer comes from the application."""
    original_init = WebRequest.__init__

    def init(self: WebRequest, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = init


class Command(BaseCommand):
    help = (
        "Serve the API and WebSockets; in embedded mode (no REDIS_URL / LORASMITH_BROKER_URL) "
        "also run the runner in-process."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-runner", action="store_true", help="never start the in-process runner")

    def handle(self, host, port, no_runner, **options):
        ensure_migrated()
        leave_request_bodies_to_django()
        connection_guard.install(
            settings.LORASMITH_REQUEST_DEADLINE_SECONDS, settings.LORASMITH_MAX_CONNECTIONS_PER_ADDRESS
        )
        embedded = not settings.BROKER_URL and not no_runner
        worker = start_worker(served_models()) if embedded else None
        mode = "embedded (in-process runner)" if embedded else "web only"
        self.stdout.write(f"Lorasmith serving on http://{host}:{port} — {mode}")
        self.stdout.flush()
        try:
            Server(
                application=application,
                endpoints=build_endpoint_description_strings(host=host, port=port),
                signal_handlers=True,
                verbosity=0,
            ).run()
        finally:
            if worker is not None:
                # on SIGTERM the server returns here: the cycle in flight finishes (and publishes its
                # results) before the interpreter shuts down under it; what is still queued stays
                # queued in the database and runs after the next start
                worker.stop(timeout=WORKER_STOP_TIMEOUT_MS)

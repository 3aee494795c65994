"""`manage.py runner [--base-model NAME ...]`: a GPU runner process (a Dramatiq worker) that keeps
the engine resident and executes cycles from its base models' queues until stopped."""

import signal
import threading

from django.core.management.base import BaseCommand

from lorasmith_server.migrations_at_start import ensure_migrated
from training.base_models import served_models
from training.execution.worker import start_worker


class Command(BaseCommand):
    help = "Run a runner (Dramatiq worker) for the given base models (default: all served ones)."

    def add_arguments(self, parser):
        parser.add_argument("--base-model", action="append", dest="base_models")

    def handle(self, base_models=None, **options):
        ensure_migrated()
        models = base_models or served_models()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker = start_worker(models)
        self.stdout.write(f"runner ready for {', '.join(models)}", ending="\n")
        self.stdout.flush()
        stop.wait()
        worker.stop()

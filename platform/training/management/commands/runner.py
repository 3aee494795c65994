"""`manage.py runner [--base-model NAME ...] [--device cuda:N]`: a GPU runner process (a Dramatiq
worker) that registers one runner per base model, keeps the engine resident on its device and
executes cycles from its runners' own queues until stopped. Start one per GPU: runs are placed on
the least-loaded live runner of their base model (DESIGN §6)."""

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
        parser.add_argument("--device", default="", help="torch device, e.g. cuda:1 (default: the engine's pick)")

    def handle(self, base_models=None, device="", **options):
        ensure_migrated()
        models = base_models or served_models()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker = start_worker(models, device=device)
        self.stdout.write(f"runner ready for {', '.join(models)}", ending="\n")
        self.stdout.flush()
        stop.wait()
        worker.stop()

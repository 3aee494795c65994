"""Start order does not matter: every process that touches the database (serve, runner, the
management commands) applies the migrations first, one process at a time (a PostgreSQL advisory
lock, or a file lock beside the SQLite database), so a runner started before `serve` on a fresh
database migrates it instead of crashing on a missing table."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from filelock import FileLock

LOCK_KEY = zlib.crc32(b"lorasmith.migrate")  # one advisory lock id for every Lorasmith process


def ensure_migrated() -> None:
    if not _pending():
        return
    with _exclusive():
        if _pending():  # another process may have migrated while we waited for the lock
            call_command("migrate", interactive=False, verbosity=0)


def _pending() -> bool:
    executor = MigrationExecutor(connection)
    return bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
            try:
                yield
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    else:
        with FileLock(str(settings.DATA_DIR / "migrate.lock")):
            yield

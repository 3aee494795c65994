#!/usr/bin/env python
"""Django's command-line entry point; puts `platform/` (a source root, not a package) on sys.path."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
# Child processes (rundramatiq's `dramatiq` workers) need the same import roots.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "platform"), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lorasmith_server.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

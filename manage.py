#!/usr/bin/env python
"""Django's command-line entry point; puts `platform/` (a source root, not a package) on sys.path."""

import os
import sys
from pathlib import Path

PLATFORM = Path(__file__).resolve().parent / "platform"
sys.path.insert(0, str(PLATFORM))  # gpu_runner and lorasmith are installed packages (see the Makefile)
# Child processes (rundramatiq's `dramatiq` workers) need the same import root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PLATFORM)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lorasmith_server.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

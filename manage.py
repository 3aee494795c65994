#!/usr/bin/env python
"""Django's command-line entry point; puts `platform/` (a source root, not a package) on sys.path."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lorasmith_server.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

"""Chores between cycles: session expiry, checkpoint retention, releasing ephemeral snapshots.
Pure database and file work; it never imports `execution` (the runner passes its own chores in)."""

"""Typed engine errors. `EngineInputError` is the caller's fault (HTTP 400 / category `user`)."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class EngineInputError(EngineError, ValueError):
    """Bad input; `field` names the offending field, `datum` its index when there is one."""

    def __init__(self, message: str, field: str = "", datum: int | None = None):
        where = f" (datum {datum})" if datum is not None else ""
        super().__init__(f"{message}{where}")
        self.field = field
        self.datum = datum


class UnknownAdapterError(EngineInputError):
    """An operation names an adapter the engine does not hold (nor has on disk)."""

"""The one exception type users see.

Every user-facing failure (bad spec, missing file, unknown hook, offline hub name) is a
``SaerunError``; the CLI prints ``str(err)`` and exits with ``err.exit_code``, never a traceback.
"""

from __future__ import annotations


class SaerunError(Exception):
    """A user error: says where (file:line), what (field), and what is allowed (hint)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"error: {where}{field}{self.message}{hint}"


class SpecError(SaerunError):
    """The spec file is invalid; raised before anything is planned or written."""

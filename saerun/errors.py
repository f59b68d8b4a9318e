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
        return _printable(f"error: {where}{field}{self.message}{hint}")


def shown(value: object, limit: int = 80) -> str:
    """repr(value) for an error message, cut to `limit` characters: a spec value can be a list of
    thousands of items, or an integer too long for str() (Python refuses > 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<integer of {value.bit_length()} bits>"  # type: ignore[attr-defined]
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _printable(text: str) -> str:
    """Escape what a terminal would not show as itself. Keys, file names and YAML problems come
    from the user's file: a newline would break the one-line error, an ESC sequence could
    rewrite the terminal, a lone surrogate could not even be encoded."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class SpecError(SaerunError):
    """The spec file is invalid; raised before anything is planned or written.

    `path` is the key path the error is about, e.g. ("sae", "d_in"): the planner raises errors
    that carry only it, and `spec.locate.locate` (at the boundary, where the file and its line
    map are known) turns it into the file and line the value was written at.
    """

    def __init__(
        self,
        message: str,
        *,
        path: tuple[str | int, ...] | None = None,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, file=file, line=line, field=field, hint=hint)
        self.path = path

"""One-line error messages: users see a sentence, not the many lines some libraries raise."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """The whole message of an exception on one line (lines joined), for messages that list several problems."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


__all__ = ["first_line", "one_line"]

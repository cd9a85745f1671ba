"""The one exception type for bad input, and the one way an error becomes one line of text.

The CLI prints a ConfigError's message as one line and exits 2; results.json records a failure
as one line. Messages of third-party exceptions (torchvision's download errors, Hydra's
override errors) span several lines and go through ``one_line`` first.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The user asked for something lowbit cannot do; the message says what and what is allowed."""


def one_line(text: object, max_lines: int | None = None) -> str:
    """``text`` (an exception's message, or anything printable) on one line: its non-blank lines,
    the first ``max_lines`` of them when given, stripped and joined by single spaces."""
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    return " ".join(lines[:max_lines])

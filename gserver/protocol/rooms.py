"""Room names: ``#`` and 1-32 letters, digits, ``-``, ``_`` or ``.``; two names that differ
only by case or Unicode compatibility form are the same room."""

from __future__ import annotations

import unicodedata

MAX_ROOM_CHARS = 32
INVALID_ROOM = "Invalid room name (# and 1-32 letters, digits, - _ .)"


def room_display(text: str) -> str | None:
    """``text`` as a room name written with its ``#`` (``dev`` means ``#dev``), or None
    when it is no room name."""
    name = text[1:] if text.startswith("#") else text
    if not 0 < len(name) <= MAX_ROOM_CHARS:
        return None
    if not all(char.isalnum() or char in "-_." for char in name):
        return None
    return f"#{name}"


def room_key(display: str) -> str:
    """The form in which two room names are the same room (NFKC, casefolded)."""
    return unicodedata.normalize("NFKC", display).casefold()

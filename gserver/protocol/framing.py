"""Bytes in, lines out, however TCP splits or merges them.

Sans-IO, after h11: :class:`LineFramer` never sees a socket.  Feed it whatever ``recv``
returned and it hands back the complete lines found so far.  ``\\n`` and ``\\r\\n`` both end
a line.  A line longer than ``max_line_bytes`` is never buffered whole: the framer reports
:data:`LINE_TOO_LONG` once, drops the rest of that line, and resumes with the next one.
"""

from __future__ import annotations

from typing import Final


class _LineTooLong:
    """Marker in the framer's output where an over-long line was dropped."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG: Final = _LineTooLong()

Frame = bytes | _LineTooLong


class LineFramer:
    """Splits a byte stream into lines (without their terminator)."""

    __slots__ = ("_discarding", "_pending", "max_line_bytes")

    def __init__(self, max_line_bytes: int = 16384) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()
        # True while dropping the remainder of a line already reported as too long.
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than max_line_bytes + 1)."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the lines they complete, in order."""
        limit = self.max_line_bytes
        if not self._pending and not self._discarding:
            # The common case, one whole line in one chunk, without the general loop.
            end = len(data) - 1
            if end >= 0 and data[end] == 10 and data.find(b"\n", 0, end) < 0:
                stop = end - 1 if end > 0 and data[end - 1] == 13 else end
                return [data[:stop] if stop <= limit else LINE_TOO_LONG]
        frames: list[Frame] = []
        start = 0
        if self._discarding or self._pending:
            newline = data.find(b"\n")
            if newline < 0:
                if not self._discarding:
                    self._pending += data
                    self._check_pending(frames)
                return frames
            if self._discarding:
                self._discarding = False
            else:
                self._pending += data[:newline]
                self._emit(bytes(self._pending), frames)
                self._pending = bytearray()
            start = newline + 1
        find = data.find
        end = len(data)
        while start < end:
            newline = find(b"\n", start)
            if newline < 0:
                self._pending = bytearray(data[start:])
                self._check_pending(frames)
                break
            stop = newline - 1 if newline > start and data[newline - 1] == 13 else newline
            frames.append(LINE_TOO_LONG if stop - start > limit else data[start:stop])
            start = newline + 1
        return frames

    def _emit(self, line: bytes, frames: list[Frame]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        frames.append(LINE_TOO_LONG if len(line) > self.max_line_bytes else line)

    def _check_pending(self, frames: list[Frame]) -> None:
        """Drop an unfinished line as soon as it is too long to ever be accepted."""
        length = len(self._pending)
        # One byte of slack: a trailing \r may be the first half of the \r\n ending.
        if length > self.max_line_bytes + 1 or (
            length == self.max_line_bytes + 1 and self._pending[-1] != 13
        ):
            frames.append(LINE_TOO_LONG)
            self._pending = bytearray()
            self._discarding = True

    def flush(self) -> bytes:
        """At end of stream: the unfinished last line, if any (a final line without \\n)."""
        pending = bytes(self._pending)
        self._pending = bytearray()
        self._discarding = False
        if pending.endswith(b"\r"):
            pending = pending[:-1]
        return pending

"""Bytes in; lines, exact counts or delimited records out, however TCP splits or merges them.

Sans-IO, after h11: :class:`ReceiveBuffer` never sees a socket.  A connection feeds it
whatever ``recv`` returned and takes from it what the handler asks for: a line, exactly
n bytes, everything up to a separator, or all that is there.  Every way of reading takes
from this one buffer, so a handler may mix them freely and lose or reorder nothing.

``\\n`` and ``\\r\\n`` both end a line.  A line longer than its limit is never buffered
whole: :meth:`ReceiveBuffer.take_line` reports :data:`LINE_TOO_LONG` once, the rest of that
line is dropped as it arrives, and reading resumes with the next line.
"""

from __future__ import annotations

from typing import Final


class _LineTooLong:
    """Marker where an over-long line was dropped."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG: Final = _LineTooLong()

Frame = bytes | _LineTooLong


class ReceiveBuffer:
    """Received bytes not yet taken by the handler, with a read offset (so that taking
    many short lines from one large chunk copies each byte once, not once per line)."""

    __slots__ = ("_data", "_discarding", "_start")

    def __init__(self) -> None:
        self._data: bytes | bytearray = b""
        self._start = 0
        # True while dropping the remainder of a line already reported as too long.
        self._discarding = False

    def __len__(self) -> int:
        return len(self._data) - self._start

    def feed(self, data: bytes) -> None:
        """Add received bytes after those already held."""
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._discarding = False
            data = data[newline + 1 :]
        if self._start == len(self._data):
            self._data, self._start = data, 0  # the common case: no copy at all
        elif isinstance(self._data, bytearray) and self._start == 0:
            self._data += data  # amortised: a long read grows in place
        else:
            held = bytearray(self._data[self._start :])
            held += data
            self._data, self._start = held, 0

    def _take(self, end: int, skip: int) -> bytes:
        """Bytes up to ``end``; the read offset moves ``skip`` bytes past ``end``."""
        data, start = self._data, self._start
        out = data[start:end]
        self._start = end + skip
        if self._start >= len(data):
            self._data, self._start = b"", 0
        return out if out.__class__ is bytes else bytes(out)

    def take_line(self, limit: int) -> Frame | None:
        """The next whole line without its ending; None until one has arrived;
        LINE_TOO_LONG (once) for a line of more than ``limit`` bytes."""
        data, start = self._data, self._start
        if not data:  # nothing held (the read offset is 0 then): no search needed
            return None
        newline = data.find(b"\n", start)
        if newline < 0:
            held = len(data) - start
            # One byte of slack: a trailing \r may be the first half of the \r\n ending.
            if held > limit + 1 or (held == limit + 1 and data[-1] != 13):
                self._data, self._start, self._discarding = b"", 0, True
                return LINE_TOO_LONG
            return None
        stop = newline - 1 if newline > start and data[newline - 1] == 13 else newline
        if stop - start > limit:
            self._take(newline, 1)
            return LINE_TOO_LONG
        return self._take(stop, newline + 1 - stop)

    def feed_and_take_line(self, data: bytes, limit: int) -> Frame | None:
        """:meth:`feed`, then :meth:`take_line`: in one call, and without holding ``data``
        at all when it is exactly one line and nothing is held (an interactive client's
        every read)."""
        if not self._data and not self._discarding:
            end = len(data) - 1
            if end >= 0 and data.find(b"\n") == end:
                stop = end - 1 if end and data[end - 1] == 13 else end
                if stop <= limit:
                    return data[:stop]
        self.feed(data)
        return self.take_line(limit)

    def take_exactly(self, count: int) -> bytes | None:
        """Exactly ``count`` bytes, or None until that many have arrived."""
        if len(self) < count:
            return None
        return self._take(self._start + count, 0)

    def take_until(self, separator: bytes, limit: int) -> Frame | None:
        """Bytes up to ``separator`` (consumed, not returned); None until it arrives;
        LINE_TOO_LONG when more than ``limit`` bytes come before it: what is held is
        dropped, and the rest of that record is what arrives next."""
        data, start = self._data, self._start
        found = data.find(separator, start)
        if found < 0:
            if len(data) - start > limit + len(separator) - 1:
                self._data, self._start = b"", 0
                return LINE_TOO_LONG
            return None
        if found - start > limit:
            self._take(found, len(separator))
            return LINE_TOO_LONG
        return self._take(found, len(separator))

    def take_all(self) -> bytes:
        """Everything held."""
        return self._take(len(self._data), 0) if len(self) else b""

    def take_last_line(self) -> bytes:
        """At end of stream: the unfinished last line, if any (a final line without \\n)."""
        rest = b"" if self._discarding else self.take_all()
        self._discarding = False
        return rest[:-1] if rest.endswith(b"\r") else rest


class LineFramer:
    """Feed bytes, get the lines they complete: :class:`ReceiveBuffer` for callers that
    only ever want lines (the WebSocket adapter, tests)."""

    __slots__ = ("_buffer", "max_line_bytes")

    def __init__(self, max_line_bytes: int = 16384) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self._buffer = ReceiveBuffer()

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than max_line_bytes + 1)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the lines they complete, in order."""
        self._buffer.feed(data)
        frames: list[Frame] = []
        while (frame := self._buffer.take_line(self.max_line_bytes)) is not None:
            frames.append(frame)
        return frames

    def flush(self) -> bytes:
        """At end of stream: the unfinished last line, if any."""
        return self._buffer.take_last_line()

"""Text rules shared by the modes: decoding, sanitising, and the echo and inspect formats.

Nothing here reads a clock or touches a socket: times are passed in.
"""

from __future__ import annotations

import base64
import codecs
import re
import time
from datetime import UTC, datetime

# ANSI escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and two-byte
# escapes.  Removed whole, so that no client can clear, recolour or retitle a terminal.
_ANSI_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, terminated by BEL or ST
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
# Control characters (C0 but tab, DEL, C1), bidirectional overrides and isolates,
# zero-width characters and the byte-order mark.
_UNSAFE = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)


def decode(data: bytes) -> str:
    """UTF-8 text of ``data``; invalid bytes become U+FFFD instead of raising."""
    return data.decode("utf-8", "replace")


def sanitize(text: str) -> str:
    """Text safe to relay to other people's terminals.

    Escape sequences and invisible or reordering characters are removed; every other
    character, non-ASCII letters and emoji included, passes unchanged.
    """
    if text.isprintable():  # the common case: nothing to do
        return text
    return _UNSAFE.sub("", _ANSI_ESCAPE.sub("", text))


def iso_utc(moment: datetime) -> str:
    """JavaScript's ``Date.prototype.toISOString()``: ``2026-11-27T16:08:41.123Z``."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


class _SecondCache:
    """The date and time of one second, formatted once: strftime costs microseconds, and
    an echo server answers thousands of lines within the same second."""

    second = -1
    text = ""


_MILLIS = [f"{n:03d}" for n in range(1000)]


def iso_utc_ms(epoch_ms: int) -> str:
    """:func:`iso_utc` of a time in milliseconds since the epoch (``Date.now()``)."""
    second, millis = divmod(epoch_ms, 1000)
    if second != _SecondCache.second:
        _SecondCache.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SecondCache.second = second
    return f"{_SecondCache.text}.{_MILLIS[millis]}Z"


def echo_reply(line: str, epoch_ms: int) -> str:
    """The echo mode's answer to one line received at ``epoch_ms``."""
    return f"[{iso_utc_ms(epoch_ms)}] Echo: {line.strip()}\n"


def uptime_message(seconds: float) -> str:
    """Text of the uptime broadcast, like Node's ``process.uptime()``."""
    return f"Server uptime: {seconds:.3f}s"


def visible(text: str) -> str:
    """``text`` quoted on one line, with every unprintable character as an escape."""
    out = ['"']
    for char in text:
        if char == '"' or char == "\\":
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


class ChunkInspector:
    """The inspect mode's report for each received chunk (seed section 5).

    UTF-8 is decoded incrementally: a character split across two chunks shows whole in
    the report of the chunk that completes it.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def report(self, chunk: bytes) -> str:
        text = self._decoder.decode(chunk)
        return (
            f"Length: {len(chunk)}\n"
            f"Hex: {chunk.hex()}\n"
            f"UTF-8: {visible(text)}\n"
            f"Base64: {base64.b64encode(chunk).decode('ascii')}\n"
        )

    def finish(self) -> str:
        """Text of bytes still held at end of stream (an incomplete character), if any."""
        return self._decoder.decode(b"", final=True)

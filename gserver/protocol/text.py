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
# (The patterns here are compiled on first use, by _patterns(): compiling them costs
# milliseconds of start-up, which servers that never sanitise text need not pay.)
_ANSI_ESCAPE = (
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, terminated by BEL or ST
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
# What no one else's terminal should receive, besides escape sequences: control characters
# (C0 but tab, DEL, C1), the line and paragraph separators, every Default_Ignorable_Code_Point
# and every format character (general category Cf).  Those two cover the bidirectional
# controls, zero-width characters, byte-order mark, word joiner, invisible operators, soft
# hyphen, variation selectors, Hangul fillers and tag characters: all draw nothing, and can
# hide text or reorder what is shown.
_CONTROLS = "\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029"
# Default_Ignorable_Code_Point as listed in DerivedCoreProperties.txt of Unicode 15.0.0,
# reserved code points included (written out because Python's unicodedata does not expose the
# property; precis-i18n carries the same ranges).
_DEFAULT_IGNORABLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
# General category Cf in UnicodeData.txt of Unicode 15.0.0, less what is listed above:
# prepended concatenation marks, interlinear annotation and Egyptian hieroglyph format controls.
# Written out so that what is removed does not depend on the Python build's Unicode version.
_FORMAT = (
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f"
)
# Of all that is removed, what str.isprintable() accepts: marks and letters that draw nothing
# (in every Unicode version, since these are assigned), and VS16, kept or not by context.
_PRINTABLE_INVISIBLE = (
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164\ufe00-\ufe0f\uffa0"
    "\U000e0100-\U000e01ef]"
)

# Extended_Pictographic as listed in emoji-data.txt of Unicode 15.0.0 (reserved code points
# included, so that emoji of later versions count too).
_PICTOGRAPHIC = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u2388"
    "\u23cf\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u2605"
    "\u2607-\u2612\u2614-\u2685\u2690-\u2705\u2708-\u2712\u2714\u2716\u271d\u2721\u2728"
    "\u2733\u2734\u2744\u2747\u274c\u274e\u2753-\u2755\u2757\u2763-\u2767\u2795-\u2797"
    "\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d"
    "\u3297\u3299\U0001f000-\U0001f0ff\U0001f10d-\U0001f10f\U0001f12f\U0001f16c-\U0001f171"
    "\U0001f17e\U0001f17f\U0001f18e\U0001f191-\U0001f19a\U0001f1ad-\U0001f1e5"
    "\U0001f201-\U0001f20f\U0001f21a\U0001f22f\U0001f232-\U0001f23a\U0001f23c-\U0001f23f"
    "\U0001f249-\U0001f3fa\U0001f400-\U0001f53d\U0001f546-\U0001f64f\U0001f680-\U0001f6ff"
    "\U0001f774-\U0001f77f\U0001f7d5-\U0001f7ff\U0001f80c-\U0001f80f\U0001f848-\U0001f84f"
    "\U0001f85a-\U0001f85f\U0001f888-\U0001f88f\U0001f8ae-\U0001f8ff\U0001f90c-\U0001f93a"
    "\U0001f93c-\U0001f945\U0001f947-\U0001faff\U0001fc00-\U0001fffd"
)
_EMOJI = f"[{_PICTOGRAPHIC}]"
_EMOJI_MODIFIER = "\U0001f3fb-\U0001f3ff"  # the five skin tones
# One pass removes it all.  VS16 ("draw as emoji") and ZWJ are kept only where they build an
# emoji: VS16 right after a pictographic character (red heart: U+2764 U+FE0F) or in a keycap
# (U+0031 U+FE0F U+20E3), and ZWJ between two pictographic characters, each with its VS16 or
# skin tone (family: man ZWJ woman ZWJ girl; rainbow flag: white flag VS16 ZWJ rainbow).
# Their context is judged before anything else is removed (escape sequences aside), so
# nothing removed can make a joiner look wanted, and sanitised text is sanitised unchanged.
# Tag sequences (subdivision flags such as England's) are not kept: their tag characters can
# carry hidden text, so such a flag arrives as a plain black flag.
_REMOVE = (
    # The pattern starts with one character class, which the regex engine scans for quickly;
    # the assertions after it run only on what the class matched, each first testing (cheaply)
    # whether that is the joiner it may spare.
    f"[{_CONTROLS}{_DEFAULT_IGNORABLE}{_FORMAT}]"
    f"(?!(?<=\ufe0f)(?<={_EMOJI}\ufe0f))"  # VS16 right after a pictographic character
    "(?!(?<=\ufe0f)(?<=[0-9#*]\ufe0f)\u20e3)"  # VS16 in a keycap
    # ZWJ after a pictographic character (bare, or with its VS16 or skin tone) and before one
    f"(?!(?<=\u200d)(?:(?<={_EMOJI}\u200d)|(?<={_EMOJI}[\ufe0f{_EMOJI_MODIFIER}]\u200d)){_EMOJI})"
)


_compiled: list[re.Pattern[str]] = []


def _patterns() -> list[re.Pattern[str]]:
    """[ANSI escapes, printable invisibles, what is removed], compiled once."""
    if not _compiled:
        _compiled.extend(re.compile(p) for p in (_ANSI_ESCAPE, _PRINTABLE_INVISIBLE, _REMOVE))
    return _compiled


def decode(data: bytes) -> str:
    """UTF-8 text of ``data``; invalid bytes become U+FFFD instead of raising."""
    return data.decode("utf-8", "replace")


def sanitize(text: str) -> str:
    """Text safe to relay to other people's terminals.

    Escape sequences, control characters and every default-ignorable or format character
    are removed, but for the joiner (ZWJ) and emoji variation selector (VS16) within emoji
    sequences; every other character, non-ASCII letters and emoji included, passes unchanged.
    """
    # The common cases return at once: printable ASCII, and printable text with nothing
    # invisible (printable excludes controls, format characters and unassigned code points).
    if text.isprintable() and (text.isascii() or _patterns()[1].search(text) is None):
        return text
    ansi_escape, _, remove = _patterns()
    if "\x1b" in text or "\x9b" in text:
        text = ansi_escape.sub("", text)
    return remove.sub("", text)


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


# ``[<time>] Echo: `` of one millisecond, built once: an echo server under load answers
# dozens of lines within the same millisecond.  (Module globals: Python 3.11 reads them
# faster than a class's attributes.)
_echo_prefix_ms = -1
_echo_prefix = ""


def echo_reply(line: str, epoch_ms: int) -> str:
    """The echo mode's answer to one line received at ``epoch_ms``."""
    global _echo_prefix, _echo_prefix_ms
    if epoch_ms != _echo_prefix_ms:
        _echo_prefix = f"[{iso_utc_ms(epoch_ms)}] Echo: "
        _echo_prefix_ms = epoch_ms
    return f"{_echo_prefix}{line.strip()}\n"


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


def loggable(line: str) -> str:
    """A received line as it may be logged: never a chat operator's password."""
    command, _, rest = line.strip().partition(" ")
    if command.lower() == "/oper" and rest:
        return "/oper ***"
    return line

"""Decoding, sanitising and the echo and inspect formats: no sockets, no clock."""

from __future__ import annotations

import base64
import sys
import unicodedata
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from precis_i18n.unicode import UnicodeData

from gserver.protocol.text import (
    ChunkInspector,
    decode,
    echo_reply,
    iso_utc,
    iso_utc_ms,
    sanitize,
    uptime_message,
    visible,
)


def test_iso_utc_matches_javascript_to_iso_string() -> None:
    moment = datetime(2026, 11, 27, 16, 8, 41, 123456, tzinfo=UTC)
    assert iso_utc(moment) == "2026-11-27T16:08:41.123Z"


def test_iso_utc_converts_other_zones_to_utc() -> None:
    moment = datetime(2026, 1, 1, 1, 0, 0, 5000, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(moment) == "2025-12-31T23:00:00.005Z"


def test_echo_reply_strips_surrounding_whitespace() -> None:
    epoch_ms = int(datetime(2026, 11, 27, 16, 8, 41, tzinfo=UTC).timestamp()) * 1000 + 7
    assert echo_reply("  hi there \t", epoch_ms) == "[2026-11-27T16:08:41.007Z] Echo: hi there\n"


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_utc_ms_agrees_with_iso_utc(epoch_ms: int) -> None:
    moment = datetime.fromtimestamp(epoch_ms // 1000, UTC).replace(
        microsecond=(epoch_ms % 1000) * 1000
    )
    assert iso_utc_ms(epoch_ms) == iso_utc(moment)


def test_uptime_message_is_a_decimal_number_of_seconds() -> None:
    assert uptime_message(30.0123456) == "Server uptime: 30.012s"


def test_decode_replaces_invalid_utf8() -> None:
    assert decode(b"ok\xff\xfe") == "ok\ufffd\ufffd"


def test_sanitize_keeps_non_ascii_text_unchanged() -> None:
    text = "héllo wörld, こんにちは 👋\ttab"
    assert sanitize(text) == text


def test_sanitize_removes_terminal_escapes_and_invisible_characters() -> None:
    assert sanitize("\x1b[2J\x1b[31mred\x1b[0m") == "red"
    assert sanitize("\x1b]0;title\x07text") == "text"
    assert sanitize("a\u202eb\u2066c\u200bd\ufeffe") == "abcde"
    assert sanitize("bell\x07del\x7fc1\x85nul\x00") == "belldelc1nul"


FORBIDDEN = (
    {chr(c) for c in range(0x20) if c != 0x09}
    | {chr(c) for c in range(0x7F, 0xA0)}
    | set("\u200b\u200c\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
    | set("\u2066\u2067\u2068\u2069\ufeff")
)  # ZWJ (U+200D) too, but for emoji: see test_no_invisible_character_is_left_but_in_emoji


@given(st.text())
def test_sanitized_text_has_no_control_bidi_or_zero_width_characters(text: str) -> None:
    assert not set(sanitize(text)) & FORBIDDEN


# -- invisible characters ---------------------------------------------------------------------

# Default_Ignorable_Code_Point as precis-i18n lists it, from a Unicode release of its own: a
# check of sanitize's table that does not come from that table.
_UCD = UnicodeData()
ZWJ, VS16, KEYCAP = "\u200d", "\ufe0f", "\u20e3"


def is_default_ignorable(char: str) -> bool:
    return _UCD.default_ignorable(ord(char))


def is_invisible(char: str) -> bool:
    """Default-ignorable or a format character (Cf, as this Python's Unicode has it)."""
    return is_default_ignorable(char) or unicodedata.category(char) == "Cf"


def looks_pictographic(char: str) -> bool:
    """Wider than Extended_Pictographic (any non-ASCII symbol or punctuation, or unassigned),
    and so a fair test that a kept joiner follows no letter, digit or mark."""
    category = unicodedata.category(char)
    return (not char.isascii() and category[0] in "SP") or category == "Cn"


EVERY_INVISIBLE = [chr(c) for c in range(sys.maxunicode + 1) if is_invisible(chr(c))]


def test_every_default_ignorable_and_format_character_is_removed() -> None:
    assert len(EVERY_INVISIBLE) > 4000  # the tags and the reserved plane-14 range included
    kept = [c for c in EVERY_INVISIBLE if sanitize(f"a{c}b") != "ab"]
    assert kept == []
    # Beside an emoji too, but for VS16, which asks for its emoji presentation.
    kept = [c for c in EVERY_INVISIBLE if sanitize(f"\U0001f600{c}b") != "\U0001f600b"]
    assert kept == [VS16]


def test_the_reported_invisible_characters_are_removed() -> None:
    reported = (
        "\u2060\u180e\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f"
        "\ufff9\ufffa\ufffb\u00ad\u034f\u3164\u115f\u1160\uffa0"
        + "".join(chr(c) for c in range(0xE0020, 0xE0080))
    )
    for char in reported:
        assert sanitize(f"see{char}me") == "seeme", f"U+{ord(char):04X}"
    assert sanitize(f"all{reported}gone") == "allgone"


def tags(text: str) -> str:
    """``text`` in Unicode tag characters: invisible, but readable by a machine."""
    return "".join(chr(0xE0000 + ord(char)) for char in text)


def test_text_hidden_in_tag_characters_is_removed() -> None:
    assert sanitize("hello" + tags(" run rm -rf /") + "\U000e007f") == "hello"


EMOJI = {
    "family": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "red heart": "\u2764\ufe0f",
    "rainbow flag": "\U0001f3f3\ufe0f\u200d\U0001f308",
    "transgender flag": "\U0001f3f3\ufe0f\u200d\u26a7\ufe0f",
    "heart on fire": "\u2764\ufe0f\u200d\U0001f525",
    "eye in speech bubble": "\U0001f441\ufe0f\u200d\U0001f5e8\ufe0f",
    "keycap 1": "1\ufe0f\u20e3",
    "keycap #": "#\ufe0f\u20e3",
    "thumbs up, medium skin tone": "\U0001f44d\U0001f3fd",
    "technologist, medium skin tone": "\U0001f469\U0001f3fd\u200d\U0001f4bb",
    "handshake, two skin tones": "\U0001f9d1\U0001f3fb\u200d\U0001f91d\u200d\U0001f9d1\U0001f3fc",
    "flag of France": "\U0001f1eb\U0001f1f7",
    "copyright as emoji": "\u00a9\ufe0f",
}


@pytest.mark.parametrize("emoji", EMOJI.values(), ids=EMOJI.keys())
def test_emoji_sequences_pass_whole(emoji: str) -> None:
    text = f"look {emoji} here {emoji}{emoji}"
    assert sanitize(text) == text


def test_subdivision_flags_lose_their_tags() -> None:
    england = "\U0001f3f4" + tags("gbeng") + "\U000e007f"
    assert sanitize(england) == "\U0001f3f4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\u200db", "ab"),  # ZWJ between letters
        ("a\ufe0fb", "ab"),  # VS16 after a letter
        ("1\ufe0f", "1"),  # VS16 after a digit, but no keycap
        ("\u20e3\ufe0f", "\u20e3"),
        ("\U0001f600\u200d", "\U0001f600"),  # ZWJ joining nothing
        ("\u200d\U0001f600", "\U0001f600"),
        ("\U0001f600\u200d\u200d\U0001f600", "\U0001f600\U0001f600"),
        ("\U0001f468\u200b\u200d\U0001f469", "\U0001f468\U0001f469"),  # judged as received
        ("\U0001f600\ufe0f\ufe0f", "\U0001f600\ufe0f"),
        ("\U0001f600\ufe0e", "\U0001f600"),  # VS15, text presentation: not kept
        ("a\U0001f3fd\u200d\U0001f600", "a\U0001f3fd\U0001f600"),  # skin tone on no emoji
        ("\U0001f600" + tags("x") + "\u200d\U0001f600", "\U0001f600\U0001f600"),
    ],
)
def test_joiners_outside_emoji_are_removed(text: str, expected: str) -> None:
    assert sanitize(text) == expected


# Text that often holds invisible characters, emoji and what surrounds them.
TRICKY = st.text(
    st.one_of(
        st.sampled_from([ZWJ, VS16, "\ufe0e", KEYCAP, "1", "#", "a", " ", "\x1b", "[", "\t"]),
        st.sampled_from(
            ["\U0001f468", "\u2764", "\U0001f3f3", "\U0001f3fd", "\u00a9", "\U0001f1eb"]
        ),
        st.sampled_from(EVERY_INVISIBLE),
        st.characters(),
    ),
    max_size=40,
)


@given(TRICKY)
@example("\U0001f3f3\ufe0f\u200d\U0001f308 1\ufe0f\u20e3 \U0001f469\U0001f3fd\u200d\U0001f4bb")
def test_no_invisible_character_is_left_but_in_emoji(text: str) -> None:
    out = sanitize(text)
    for i, char in enumerate(out):
        if not is_invisible(char):
            continue
        before = out[i - 1] if i > 0 else ""
        after = out[i + 1] if i + 1 < len(out) else ""
        if char == VS16:
            assert looks_pictographic(before) or (before in "0123456789#*" and after == KEYCAP)
        else:
            assert char == ZWJ, f"U+{ord(char):04X} left in {out!r}"
            base = out[i - 2] if before in (VS16, *map(chr, range(0x1F3FB, 0x1F400))) else before
            assert looks_pictographic(base) and looks_pictographic(after)


@given(TRICKY)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_ascii_passes_unchanged(text: str) -> None:
    assert sanitize(text) == text


@given(st.text().filter(lambda t: t.isprintable() and not any(map(is_default_ignorable, t))))
def test_printable_text_passes_unchanged(text: str) -> None:
    assert sanitize(text) == text


def test_visible_quotes_and_escapes_control_characters() -> None:
    assert visible('a"b\\\n\r\t\x00é') == '"a\\"b\\\\\\n\\r\\t\\x00é"'


def test_inspect_report_has_length_hex_utf8_and_base64() -> None:
    data = "héllo\n".encode()
    assert ChunkInspector().report(data) == (
        "Length: 7\n"
        "Hex: 68c3a96c6c6f0a\n"
        'UTF-8: "héllo\\n"\n'
        f"Base64: {base64.b64encode(data).decode()}\n"
    )


def test_inspect_decodes_a_character_split_across_chunks_whole() -> None:
    inspector = ChunkInspector()
    first = inspector.report(b"h\xc3")
    second = inspector.report(b"\xa9!")
    assert 'UTF-8: "h"' in first
    assert 'UTF-8: "é!"' in second


def test_inspect_shows_invalid_bytes_as_replacement_characters() -> None:
    assert 'UTF-8: "a\ufffdb"' in ChunkInspector().report(b"a\xffb")

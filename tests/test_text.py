"""Decoding, sanitising and the echo and inspect formats: no sockets, no clock."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

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
    | set("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
    | set("\u2066\u2067\u2068\u2069\ufeff")
)


@given(st.text())
def test_sanitized_text_has_no_control_bidi_or_zero_width_characters(text: str) -> None:
    assert not set(sanitize(text)) & FORBIDDEN


@given(st.text().filter(str.isprintable))
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

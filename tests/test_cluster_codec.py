"""The cluster's wire format, byte by byte: no Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gserver.protocol.cluster import (
    Ban,
    ClientCount,
    ClusterCodecError,
    Direct,
    Holder,
    Kick,
    RoomLine,
    Seat,
    ToAll,
    Unban,
    decode_holders,
    decode_message,
    decode_said,
    decode_seat,
    encode_holders,
    encode_message,
    encode_said,
    encode_seat,
    node_prefix,
)

nodes = st.text(st.characters(blacklist_characters="|\n", blacklist_categories=("Cs",)), min_size=1)
# Texts as clients' lines become texts: any character, and the surrogate escapes that
# stand for bytes that were not UTF-8 (U+DC80-U+DCFF), even two that look like UTF-8.
texts = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
    )
)
stamps = st.integers(min_value=0, max_value=2**63)
events = st.one_of(
    st.builds(RoomLine, texts, stamps),
    st.builds(RoomLine, texts, stamps, st.none() | texts, st.booleans()),
    st.builds(Direct, texts, texts),
    st.builds(ToAll, st.binary()),
    st.builds(ClientCount, st.integers(min_value=0, max_value=10**9)),
    st.builds(Kick, texts, texts, texts, st.none() | st.integers(min_value=0, max_value=10**9)),
    st.builds(Ban, texts, stamps),
    st.builds(Unban, texts),
)


@given(nodes, st.lists(events, max_size=20))
def test_a_message_round_trips(node: str, batch: list) -> None:
    raw = encode_message(node, batch)
    assert raw.startswith(node_prefix(node))
    assert decode_message(raw) == (node, batch)


def test_a_room_line_of_an_older_release_is_for_the_default_room() -> None:
    raw = b'n1\n[["r", "[bob]: hi\\n", 7]]'
    assert decode_message(raw)[1] == [RoomLine("[bob]: hi\n", 7, None, False)]
    # and a line for no room in particular is written as older releases wrote it
    assert encode_message("n1", [RoomLine("[bob]: hi\n", 7)]) == raw


def test_bytes_that_are_not_utf8_cross_intact() -> None:
    payload = b"\xff\xfe not text \x00\x80"
    assert decode_message(encode_message("n1", [ToAll(payload)]))[1] == [ToAll(payload)]


def test_escaped_bytes_in_text_come_back_as_they_went() -> None:
    # Two escapes that spell UTF-8 for "é": surrogateescape would have merged them.
    text = "caf\udcc3\udca9"
    assert decode_message(encode_message("n1", [RoomLine(text, 1)]))[1] == [RoomLine(text, 1)]


@pytest.mark.parametrize(
    "event",
    [
        RoomLine("\ud800 a lone high surrogate", 1),
        Direct("bob", "\udbff"),
        Direct("bob", b"bytes where text goes"),  # type: ignore[arg-type]
        ToAll("text where bytes go"),  # type: ignore[arg-type]
        RoomLine("text", "not a stamp"),  # type: ignore[arg-type]
    ],
)
def test_an_event_no_node_could_deliver_is_refused_when_encoded(event: object) -> None:
    with pytest.raises(ClusterCodecError):
        encode_message("n1", [event])  # type: ignore[list-item]


def test_nesting_deeper_than_the_stack_is_one_clear_error() -> None:
    with pytest.raises(ClusterCodecError):
        decode_message(b"n1\n" + b"[" * 100_000)
    deep_kind = b"[" * 900 + b"]" * 900
    with pytest.raises(ClusterCodecError):
        decode_message(b"n1\n[[" + deep_kind + b", 1]]")


@given(st.binary(max_size=300))
def test_anything_malformed_is_one_clear_error(raw: bytes) -> None:
    try:
        node, batch = decode_message(raw)
    except ClusterCodecError as exc:
        assert str(exc)
    else:
        assert isinstance(node, str)
        assert isinstance(batch, list)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no separator",
        b"\n[]",
        b"n1\n{}",
        b"n1\nnot json",
        b'n1\n[["r", "text"]]',
        b'n1\n[["r", 1, 2]]',
        b'n1\n[["r", "text", 1, "#dev"]]',
        b'n1\n[["r", "text", 1, 5, true]]',
        b'n1\n[["r", "text", 1, "#dev", 1]]',
        b'n1\n[["kick", "bob", "op", "", "10"]]',
        b'n1\n[["kick", "bob", "op"]]',
        b'n1\n[["ban", "192.0.2.1", null]]',
        b'n1\n[["unban"]]',
        b'n1\n[["c", true]]',
        b'n1\n[["b", "!!!"]]',
        b'n1\n[["zz", 1]]',
        b"n1\n[5]",
        b'n1\n[["r", "\\ud800", 1]]',  # a text no node could deliver
        b'n1\n[["d", "bob", "\\udfff"]]',
        b'n1\n[["a", "\\ud800"]]',  # "a" is for UTF-8 payloads
        b"n1\n\xff[]",  # not UTF-8
    ],
)
def test_each_kind_of_malformed_message_is_refused(raw: bytes) -> None:
    with pytest.raises(ClusterCodecError):
        decode_message(raw)


@given(
    st.lists(
        st.builds(
            Holder,
            nodes,
            st.integers(min_value=0, max_value=2**63),
            st.text(
                st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_name_records_round_trip(holders: list[Holder]) -> None:
    assert decode_holders(encode_holders(holders)) == holders


@pytest.mark.parametrize("record", ["", "node", "node|x|name", "node|1|", "|1|name", "n|²|x"])
def test_malformed_name_records_are_refused(record: str) -> None:
    with pytest.raises(ClusterCodecError):
        decode_holders(record)


def test_a_node_id_with_a_bar_cannot_be_encoded() -> None:
    with pytest.raises(ClusterCodecError):
        encode_holders([Holder("a|b", 1, "alice")])


@given(
    nodes,
    st.builds(
        Seat,
        st.integers(min_value=0, max_value=2**63),
        stamps,
        st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1),
        st.booleans(),
    ),
)
def test_seats_round_trip(node: str, seat: Seat) -> None:
    field, value = encode_seat(node, seat)
    assert decode_seat(field, value) == (node, seat)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n1|1", "5|1|"),
        ("n1|x", "5|1|alice"),
        ("|1", "5|1|alice"),
        ("n1", "5|1|alice"),
        ("n1|1", "5|2|alice"),
        ("n1|1", "x|1|alice"),
        ("n1|1", "5|alice"),
        ("n1|²", "5|0|alice"),
    ],
)
def test_malformed_seats_are_refused(field: str, value: str) -> None:
    with pytest.raises(ClusterCodecError):
        decode_seat(field, value)


@given(stamps, texts)
def test_history_entries_round_trip(moment: int, line: str) -> None:
    assert decode_said(encode_said(moment, line)) == (moment, line)


@pytest.mark.parametrize("entry", ["", "no moment", "x|line", "-1|line", "\ud800|x"])
def test_malformed_history_entries_are_refused(entry: str) -> None:
    with pytest.raises(ClusterCodecError):
        decode_said(entry)

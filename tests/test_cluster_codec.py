"""The cluster's wire format, byte by byte: no Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gserver.protocol.cluster import (
    ClientCount,
    ClusterCodecError,
    Direct,
    Holder,
    RoomLine,
    ToAll,
    decode_holders,
    decode_message,
    encode_holders,
    encode_message,
    node_prefix,
)

nodes = st.text(st.characters(blacklist_characters="|\n", blacklist_categories=("Cs",)), min_size=1)
texts = st.text(st.characters(blacklist_categories=("Cs",)))
events = st.one_of(
    st.builds(RoomLine, texts, st.integers(min_value=0, max_value=2**63)),
    st.builds(Direct, texts, texts),
    st.builds(ToAll, st.binary()),
    st.builds(ClientCount, st.integers(min_value=0, max_value=10**9)),
)


@given(nodes, st.lists(events, max_size=20))
def test_a_message_round_trips(node: str, batch: list) -> None:
    raw = encode_message(node, batch)
    assert raw.startswith(node_prefix(node))
    assert decode_message(raw) == (node, batch)


def test_bytes_that_are_not_utf8_cross_intact() -> None:
    payload = b"\xff\xfe not text \x00\x80"
    assert decode_message(encode_message("n1", [ToAll(payload)]))[1] == [ToAll(payload)]


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
        b'n1\n[["c", true]]',
        b'n1\n[["b", "!!!"]]',
        b'n1\n[["zz", 1]]',
        b"n1\n[5]",
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

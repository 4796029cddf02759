"""The line framer, byte by byte: no sockets."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gserver.protocol.framing import LINE_TOO_LONG, Frame, LineFramer, ReceiveBuffer


def feed_all(chunks: list[bytes], limit: int = 16384) -> list[Frame]:
    framer = LineFramer(limit)
    frames: list[Frame] = []
    for chunk in chunks:
        frames += framer.feed(chunk)
    return frames


def test_lines_end_with_lf_or_crlf() -> None:
    assert feed_all([b"one\ntwo\r\nthree\n"]) == [b"one", b"two", b"three"]


def test_empty_lines_are_lines() -> None:
    assert feed_all([b"\n\r\n"]) == [b"", b""]


def test_a_line_split_across_chunks_comes_out_whole() -> None:
    assert feed_all([b"hel", b"lo wor", b"ld\r", b"\n"]) == [b"hello world"]


def test_an_unfinished_line_waits_for_its_end() -> None:
    framer = LineFramer()
    assert framer.feed(b"no end yet") == []
    assert framer.buffered == len(b"no end yet")
    assert framer.feed(b"!\n") == [b"no end yet!"]


def test_a_bare_cr_is_part_of_the_line() -> None:
    assert feed_all([b"a\rb\n"]) == [b"a\rb"]


def test_a_line_of_exactly_the_limit_is_accepted_with_either_ending() -> None:
    assert feed_all([b"x" * 8 + b"\n"], limit=8) == [b"x" * 8]
    assert feed_all([b"x" * 8 + b"\r", b"\n"], limit=8) == [b"x" * 8]


def test_a_line_over_the_limit_is_reported_once_and_the_next_line_survives() -> None:
    assert feed_all([b"x" * 9 + b"\nok\n"], limit=8) == [LINE_TOO_LONG, b"ok"]


def test_a_long_line_is_never_buffered_whole() -> None:
    framer = LineFramer(8)
    frames: list[Frame] = []
    for _ in range(1000):
        frames += framer.feed(b"y" * 100)
        assert framer.buffered <= 9
    frames += framer.feed(b"tail\nnext\n")
    assert frames == [LINE_TOO_LONG, b"next"]


def test_flush_returns_an_unterminated_last_line() -> None:
    framer = LineFramer()
    framer.feed(b"done\npartial\r")
    assert framer.flush() == b"partial"
    assert framer.flush() == b""


def reference_frames(data: bytes, limit: int) -> list[Frame]:
    """The meaning of framing, stated plainly on the whole stream at once."""
    frames: list[Frame] = []
    *complete, rest = data.split(b"\n")
    for line in complete:
        if line.endswith(b"\r"):
            line = line[:-1]
        frames.append(LINE_TOO_LONG if len(line) > limit else line)
    # An unfinished line is reported as soon as it can no longer fit (a final \r may
    # still turn out to be half of a \r\n ending).
    if len(rest.removesuffix(b"\r")) > limit:
        frames.append(LINE_TOO_LONG)
    return frames


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


stream = st.lists(
    st.one_of(st.binary(max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r", b"\x00"])),
    max_size=40,
).map(b"".join)


@given(
    data=stream, points=st.lists(st.integers(min_value=0), max_size=20), limit=st.integers(1, 10)
)
def test_any_split_gives_the_same_lines_as_the_whole_stream(
    data: bytes, points: list[int], limit: int
) -> None:
    assert feed_all(cut(data, points), limit) == reference_frames(data, limit)


def take_all_as_lines_does(chunks: list[bytes], limit: int) -> list[Frame]:
    """What ``Connection.lines()`` takes: each chunk fed and its first line taken in one
    call (nothing held when the chunk is exactly one line), then the rest line by line."""
    buffer = ReceiveBuffer()
    frames: list[Frame] = []
    for chunk in chunks:
        frame = buffer.feed_and_take_line(chunk, limit)
        while frame is not None:
            frames.append(frame)
            frame = buffer.take_line(limit)
    return frames


def test_a_chunk_of_exactly_one_line_is_taken_without_being_held() -> None:
    buffer = ReceiveBuffer()
    assert buffer.feed_and_take_line(b"hello\r\n", 10) == b"hello"
    assert len(buffer) == 0
    assert buffer.feed_and_take_line(b"\n", 10) == b""
    assert buffer.feed_and_take_line(b"x" * 11 + b"\n", 10) is LINE_TOO_LONG
    assert buffer.feed_and_take_line(b"one\ntwo\nthr", 10) == b"one"
    assert buffer.take_line(10) == b"two"
    assert buffer.take_line(10) is None
    assert buffer.feed_and_take_line(b"ee\n", 10) == b"three"


@given(
    data=stream, points=st.lists(st.integers(min_value=0), max_size=20), limit=st.integers(1, 10)
)
def test_feeding_and_taking_in_one_call_gives_the_same_lines(
    data: bytes, points: list[int], limit: int
) -> None:
    assert take_all_as_lines_does(cut(data, points), limit) == reference_frames(data, limit)

"""The examples, served by ``python -m gserver --handler`` and spoken to by clients that
nobody here wrote: redis-py and Debian's redis-cli for examples/kv.py (RESP2), the standard
library's smtplib for examples/smtp_sink.py."""

from __future__ import annotations

import shutil
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import redis

from gserver.testing.kit import RunningGserver
from gserver.testing.probes import rss_bytes, wait_until
from gserver.testing.process import WAIT
from tests.conftest import REPO, clean_env

REDIS_CLI = shutil.which("redis-cli")
needs_redis_cli = pytest.mark.skipif(
    REDIS_CLI is None, reason="redis-cli is not installed (apt-get install redis-tools)"
)


@pytest.fixture
def kv(gserver_serve: Callable[..., RunningGserver]) -> Iterator[RunningGserver]:
    with gserver_serve("examples.kv:handle") as server:
        yield server


@pytest.fixture
def r(kv: RunningGserver) -> Iterator[redis.Redis]:
    # protocol=2: redis-py 8 opens with HELLO 3 otherwise, and the example speaks RESP2.
    client = redis.Redis(host=kv.host, port=kv.port, protocol=2, socket_timeout=WAIT)
    yield client
    client.close()


def redis_cli(kv: RunningGserver, *args: str, stdin: str | bytes = b"") -> str:
    assert REDIS_CLI is not None
    result = subprocess.run(
        [REDIS_CLI, "-h", kv.host, "-p", str(kv.port), *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result
    return result.stdout.decode()


# -- redis-py -------------------------------------------------------------------------------


def test_strings_counters_and_keys_with_redis_py(r: redis.Redis) -> None:
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    assert r.set("greeting", "hello") is True
    assert r.get("greeting") == b"hello"
    assert r.get("nothing") is None
    assert r.incr("visits") == 1
    assert r.incr("visits", 41) == 42
    assert r.exists("greeting", "visits", "nothing", "greeting") == 3
    assert sorted(r.keys("*")) == [b"greeting", b"visits"]
    assert r.keys("v?sit[rs]") == [b"visits"]
    assert r.keys("[^g]*") == [b"visits"]
    assert r.delete("greeting", "greeting", "nothing") == 1
    assert r.ttl("visits") == -1 and r.ttl("nothing") == -2
    assert r.flushall() is True
    assert r.keys("*") == []


def test_expiry_with_set_ex_px_and_expire(r: redis.Redis) -> None:
    assert r.set("a", "1", ex=100)
    assert 99 <= r.ttl("a") <= 100
    assert r.expire("a", 5) is True and r.ttl("a") == 5
    assert r.expire("nothing", 5) is False
    assert r.set("b", "2", px=50)
    wait_until(lambda: r.get("b") is None, WAIT, "b expires")
    assert r.exists("b") == 0 and r.ttl("b") == -2
    assert r.expire("a", 0) is True and r.exists("a") == 0


def test_redis_error_replies_word_for_word(r: redis.Redis) -> None:
    def error(*command: Any) -> str:
        with pytest.raises(redis.ResponseError) as caught:
            r.execute_command(*command)
        return str(caught.value)

    assert error("FOO", "a", "b") == "unknown command 'FOO', with args beginning with: 'a' 'b' "
    assert error("GET") == "wrong number of arguments for 'get' command"
    assert error("SET", "k", "v", "EX") == "syntax error"
    assert error("SET", "k", "v", "EX", "ten") == "value is not an integer or out of range"
    assert error("SET", "k", "v", "PX", "0") == "invalid expire time in 'set' command"
    r.set("text", "abc")
    assert error("INCR", "text") == "value is not an integer or out of range"
    r.set("big", str(2**63 - 1))
    assert error("INCR", "big") == "increment or decrement would overflow"
    assert r.ping() is True  # errors leave the connection usable


def test_redis_py_pipeline_and_clients_share_one_key_space(kv: RunningGserver, r: redis.Redis):
    with r.pipeline(transaction=False) as pipe:
        for i in range(200):
            pipe.set(f"k{i}", i)
            pipe.incr("count")
        results = pipe.execute()
    assert results == [x for i in range(200) for x in (True, i + 1)]
    other = redis.Redis(host=kv.host, port=kv.port, protocol=2, socket_timeout=WAIT)
    assert other.get("k199") == b"199" and other.get("count") == b"200"
    other.close()


def test_resp3_is_refused_so_that_a_client_knows(kv: RunningGserver) -> None:
    default = redis.Redis(host=kv.host, port=kv.port, socket_timeout=WAIT)
    with pytest.raises(redis.ResponseError, match="NOPROTO unsupported protocol version"):
        default.execute_command("HELLO", "3")
    default.close()


# -- raw sockets: inline commands, broken clients, the bulk length limit --------------------


def test_inline_and_pipelined_raw_commands(kv: RunningGserver) -> None:
    with kv.client() as c:
        c.send(b"PING\r\nset a 1\r\n\r\nincr a\nget a\r\n*2\r\n$4\r\nECHO\r\n$3\r\nx\r\n\r\n")
        replies = b"+PONG\r\n+OK\r\n:2\r\n$1\r\n2\r\n$3\r\nx\r\n\r\n"
        assert c.read_exactly(len(replies)) == replies
        c.send(b"QUIT\r\n")
        assert c.read_to_close() == "+OK\r\n"


def test_a_client_gone_mid_command_harms_no_one(kv: RunningGserver, r: redis.Redis) -> None:
    r.set("kept", "yes")
    with kv.client() as broken:
        broken.send(b"*3\r\n$3\r\nSET\r\n$4\r\nkept\r\n$100\r\nonly part of it")
    kv.wait_for_log("disconnect", reason="closed by client")
    assert r.get("kept") == b"yes"
    assert r.ping() is True
    assert not [e for e in kv.logs if e["event"] == "handler_error"]


def test_a_bulk_length_over_512_mb_is_refused_without_allocating_it(kv: RunningGserver):
    before = rss_bytes(kv.pid)
    with kv.client() as c:
        c.send(b"*1\r\n$600000000\r\n")
        assert c.read_to_close() == "-ERR Protocol error: invalid bulk length\r\n"
    with kv.client() as c:
        c.send(b"*1\r\n$536870912\r\n")  # exactly 512 MB is allowed; it is read as it comes
        c.send(b"*2\r\n")
        # ...and a client that gives up on it costs nothing either
    grown = rss_bytes(kv.pid) - before
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    with kv.client() as c:
        c.send(b"*1\r\n$-1\r\n")
        assert c.read_to_close() == "-ERR Protocol error: invalid bulk length\r\n"
    with kv.client() as c:
        c.send(b"x" * (64 * 1024 + 10))
        assert c.read_to_close() == "-ERR Protocol error: too big inline request\r\n"


# -- redis-cli ------------------------------------------------------------------------------


@needs_redis_cli
def test_redis_cli_commands_and_piped_input(kv: RunningGserver) -> None:
    assert redis_cli(kv, "ping") == "PONG\n"
    assert redis_cli(kv, "set", "name", "gserver") == "OK\n"
    assert redis_cli(kv, "get", "name") == "gserver\n"
    out = redis_cli(kv, stdin="SET n 10\nINCR n\nINCR n\nGET n\nDEL n\nGET n\n")
    assert out == "OK\n11\n12\n12\n1\n\n"
    assert redis_cli(kv, "nosuch", "x").startswith("ERR unknown command 'nosuch'")


@needs_redis_cli
def test_redis_cli_pipe_mode_mass_insertion(kv: RunningGserver, r: redis.Redis) -> None:
    def resp(*words: str) -> bytes:
        parts = [b"*%d\r\n" % len(words)]
        parts += [b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words]
        return b"".join(parts)

    protocol = b"".join(resp("SET", f"key:{i}", f"value {i}") for i in range(5000))
    out = redis_cli(kv, "--pipe", stdin=protocol)
    assert "errors: 0, replies: 5000" in out
    assert r.get("key:4999") == b"value 4999"


# -- running it as its own script -----------------------------------------------------------


def test_kv_runs_as_a_module_of_its_own(tmp_path: Any) -> None:
    from gserver.testing.probes import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.kv", str(port)],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = redis.Redis(port=port, protocol=2, socket_timeout=WAIT)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, WAIT, "python -m examples.kv answers PING")
        client.close()
    finally:
        proc.terminate()
        assert proc.wait(WAIT) == 0


# -- examples/smtp_sink.py with smtplib -----------------------------------------------------


@pytest.fixture
def sink(gserver_serve: Callable[..., RunningGserver], tmp_path: Path) -> Iterator[RunningGserver]:
    env = {"SMTP_SINK_DIR": str(tmp_path / "mail"), "SMTP_SINK_MAX_BYTES": "100000"}
    with gserver_serve("examples.smtp_sink:handle", env=env) as server:
        yield server


def test_smtplib_sends_a_message_that_is_kept_byte_for_byte(
    sink: RunningGserver, tmp_path: Path
) -> None:
    message = EmailMessage()
    message["From"] = "app@example.org"
    message["To"] = "alice@example.org, bob@example.org"
    message["Subject"] = "Grüße"
    # Lines that dot-stuffing must carry: a lone dot, a leading dot, a trailing dot.
    message.set_content("Hello.\n.\n..two dots\nend.\n", cte="8bit")
    with smtplib.SMTP(sink.host, sink.port, timeout=WAIT) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.has_extn("size") and smtp.has_extn("8bitmime")
        assert smtp.send_message(message) == {}
        assert smtp.noop()[0] == 250
    entry = sink.wait_for_log("mail_received")
    assert entry["sender"] == "app@example.org"
    assert entry["recipients"] == ["alice@example.org", "bob@example.org"]
    assert entry["subject"] == "Grüße"
    (kept,) = (tmp_path / "mail").glob("*.eml")
    received = BytesParser(policy=policy.default).parsebytes(kept.read_bytes())
    assert received["Subject"] == "Grüße"
    assert received.get_content() == "Hello.\r\n.\r\n..two dots\r\nend.\r\n"  # SMTP's CRLF
    assert kept.read_bytes() == message.as_bytes(policy=policy.SMTP)
    assert len(kept.read_bytes()) == entry["bytes"]


def test_an_empty_message_and_several_in_one_session(sink: RunningGserver) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=WAIT) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], b"")  # smtplib sends "\r\n."
        smtp.sendmail("a@example.org", ["c@example.org"], b"Subject: second\r\n\r\nbody\r\n")
    with sink.client() as c:  # the lone dot right after DATA: a message of no bytes at all
        c.send(b"HELO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<d@x>\r\nDATA\r\n.\r\nQUIT\r\n")
        replies = c.read_to_close().splitlines()
    first, second, third = sink.wait_for_events("mail_received", 3)
    assert replies[-2:] == [f"250 2.0.0 Ok: queued as {third['number']}", "221 2.0.0 Bye"]
    assert (first["bytes"], first["recipients"]) == (2, ["b@example.org"])
    assert second["subject"] == "second"
    assert (third["bytes"], third["sender"], third["recipients"]) == (0, "a@x", ["d@x"])


def test_smtp_order_of_commands_and_limits(sink: RunningGserver) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=WAIT) as smtp:
        smtp.ehlo()
        assert smtp.rcpt("b@example.org")[0] == 503
        assert smtp.docmd("DATA")[0] == 503
        assert smtp.docmd("MAIL", "FROM:<a@example.org> SIZE=100001")[0] == 552
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.docmd("MAIL", "FROM:<a@example.org>")[0] == 503
        assert smtp.rset()[0] == 250
        assert smtp.docmd("BOGUS")[0] == 502
        assert smtp.docmd("X" * 3000)[0] == 500  # too long, and the session goes on
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("a@example.org", ["b@example.org"], b"x" * 100_001)
        assert refused.value.smtp_code == 552


def test_a_client_that_ignores_size_is_cut_off(sink: RunningGserver) -> None:
    with sink.client() as c:
        c.read_line()
        c.send(b"HELO me\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        for code in ("250", "250", "250", "354"):
            assert c.read_line().startswith(code)
        c.send(b"y" * 150_000)
        assert c.read_line() == "552 5.3.4 Message size exceeds fixed limit"
    assert not sink.events("mail_received")


# -- notices in a protocol's own words -------------------------------------------------------


def test_kv_closes_without_a_plain_text_word_at_shutdown(gserver_serve) -> None:
    with gserver_serve("examples.kv:handle") as server, server.client() as client:
        client.send(b"PING\r\n")
        assert client.read_until(b"\r\n") == b"+PONG\r\n"
        server.signal(signal.SIGTERM)
        # Redis's way: the connection ends; no "Server shutting down" to corrupt RESP.
        assert client.read_to_close() == ""


def test_smtp_says_421_when_idle_too_long(gserver_serve) -> None:
    serving = gserver_serve("examples.smtp_sink:handle", idle_timeout=0.5)
    with serving as server, server.client() as client:
        assert client.read_line().startswith("220 ")
        assert client.read_to_close() == "421 4.4.2 Idle too long, closing\r\n"

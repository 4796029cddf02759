"""The pytest kit as a user meets it: a test file of theirs, in a directory of theirs, run
by pytest with gserver installed (the plugin comes through its entry point)."""

from __future__ import annotations

import textwrap

import pytest

from gserver.testing.kit import ReadFailed, setting_flags
from tests.conftest import SHOUT

pytest_plugins = ("pytester",)


def run_user_tests(pytester: pytest.Pytester, tests: str, **files: str) -> pytest.RunResult:
    pytester.makepyfile(shout=SHOUT, **files)
    pytester.makepyfile(test_user=textwrap.dedent(tests))
    # In a fresh process, as the user runs it: the plugin must load from the entry point.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_the_issue_example_passes_as_written(pytester: pytest.Pytester) -> None:
    result = run_user_tests(
        pytester,
        """
        def test_shout(gserver_serve):
            with gserver_serve("shout:shout", idle_timeout=5) as server, server.client() as client:
                assert client.read_line() == "Say something!"
                client.send_line("hi")
                assert client.read_line() == "[Broadcast] HI"
        """,
    )
    result.assert_outcomes(passed=1)


def test_clients_share_the_server_and_reads_mix(pytester: pytest.Pytester) -> None:
    result = run_user_tests(
        pytester,
        """
        def test_two(gserver_serve):
            with gserver_serve("shout:shout") as server:
                a, b = server.client(), server.client()
                assert a.read_until("something!") == "Say something!"
                assert a.read_exactly(1) == b"\\n"
                assert b.read_until(b"!\\n") == b"Say something!\\n"
                a.send(b"x\\r\\n")
                assert a.read_line() == b.read_line() == "[Broadcast] X"
                a.send_line("bye")
                assert a.read_to_close() == ""
                assert server.wait_for_log("disconnect", reason="closed by server")
                assert {e["event"] for e in server.logs} >= {"listening", "connect"}

        def test_mode_and_stopped_after_the_test(gserver_serve):
            server = gserver_serve(mode="chat", idle_timeout=5)
            client = server.client()
            assert client.read_until("username: ") == "Enter your username: "
        """,
    )
    result.assert_outcomes(passed=2)


def test_a_failing_test_shows_the_server_log_and_what_arrived(pytester: pytest.Pytester) -> None:
    result = run_user_tests(
        pytester,
        """
        def test_waits_for_what_never_comes(gserver_serve):
            with gserver_serve("shout:shout") as server, server.client(timeout=0.5) as client:
                client.send_line("hi")
                client.read_line()
                client.read_line()
                client.read_line()  # nothing more comes
        """,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ReadFailed: waited 0.5 s for a whole line; received so far (unread): b''*",
            "*- gserver log: shout:shout on 127.0.0.1:* (exit status 0) -*",
            '*"event": "listening"*',
            '*"event": "connect"*',
        ]
    )


def test_a_failure_shows_the_unread_bytes_and_print_output(pytester: pytest.Pytester) -> None:
    result = run_user_tests(
        pytester,
        """
        def test_closed_mid_line(gserver_serve):
            with gserver_serve("half:handle") as server, server.client() as client:
                client.read_line()
        """,
        half=(
            "def handle(conn):\n"
            "    print('handler says hello')\n"
            "    conn.send(b'no newline here')\n"
        ),
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ReadFailed: the server closed the connection before a whole line; "
            "received so far (unread): b'no newline here'",
            "*- gserver log: half:handle *",
            "*handler says hello*",
        ]
    )


def test_a_handler_that_does_not_import_fails_the_test_with_gservers_words(
    pytester: pytest.Pytester,
) -> None:
    result = run_user_tests(
        pytester,
        """
        def test_broken(gserver_serve):
            gserver_serve("broken:handle")
        """,
        broken="def handle(conn)\n",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GserverFailed: gserver (broken:handle) exited with status 2 before listening*",
            "*gserver: error: setting 'handler': cannot import 'broken'*",
        ]
    )


def test_settings_become_flags() -> None:
    flags = setting_flags({"idle_timeout": 5, "proxy_protocol": False, "tls_cert": None})
    assert flags == ["--idle-timeout", "5", "--no-proxy-protocol"]
    with pytest.raises(TypeError, match="unknown gserver setting 'colour'"):
        setting_flags({"colour": "red"})


def test_gservers_own_tests_get_the_fixture(gserver_serve) -> None:
    with gserver_serve(mode="basic") as server, server.client(timeout=0.5) as client:
        assert client.read_line() == "Welcome to TCP Server!"
        with pytest.raises(ReadFailed, match=r"waited 0.5 s for 3 bytes.*b''"):
            client.read_exactly(3)

"""The pytest plugin of gserver (registered through the ``pytest11`` entry point): the
``gserver_serve`` fixture, and the server's log shown with any test that fails.

::

    def test_shout(gserver_serve):
        with gserver_serve("shout:shout", idle_timeout=5) as server, server.client() as client:
            assert client.read_line() == "Say something!"
            client.send_line("hi")
            assert client.read_line() == "[Broadcast] HI"

The handler module is found as in the test run itself: the server runs in the rootdir,
with the test file's directory and the run's own import path (less installed packages)
on its ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from gserver.testing.kit import RunningGserver, project_paths, serve

__all__ = ["gserver_serve"]

_SERVERS = pytest.StashKey[list[RunningGserver]]()
# The last lines of a server's output shown with a failed test: enough to see what led up
# to the failure without burying it.
SHOWN_LOG_LINES = 200


@pytest.fixture
def gserver_serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningGserver]]:
    """``gserver_serve(handler=None, *, mode=None, **settings)``: start gserver serving the
    handler ``"module:function"`` (or a built-in ``mode``) and return it once it listens.

    Use it in a ``with`` block to stop it there (gracefully: SIGTERM, and the test fails if
    it does not exit 0); whatever is still running is stopped after the test.  Keyword
    settings become flags (``idle_timeout=5`` -> ``--idle-timeout 5``)."""
    servers = request.node.stash.setdefault(_SERVERS, [])
    rootdir = request.config.rootpath
    test_dir = request.path.parent

    def start(handler: str | None = None, **options: Any) -> RunningGserver:
        options.setdefault("cwd", rootdir)
        extra = list(options.pop("pythonpath", ()))
        paths = [*extra, str(test_dir), str(rootdir), *project_paths()]
        server = serve(handler, pythonpath=paths, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        # A stop that had to kill is shown with the log, not raised after the test.
        with contextlib.suppress(AssertionError):
            server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            lines = server.log_text().splitlines()
            if len(lines) > SHOWN_LOG_LINES:
                skipped = f"... ({len(lines) - SHOWN_LOG_LINES} lines before)"
                lines = [skipped, *lines[-SHOWN_LOG_LINES:]]
            status = server.process.proc.poll()
            state = "running" if status is None else f"exit status {status}"
            title = f"gserver log: {server.label} on {server.host}:{server.port} ({state})"
            report.sections.append((title, "\n".join(lines) or "(nothing printed)"))
    return report

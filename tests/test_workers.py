"""--workers when things go wrong: the master killed outright, a worker that will not stop.

Worker pids come from the master's ``worker_started`` events.  A test that fails leaves no
worker behind: every worker it saw is SIGKILLed at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gserver.testing.probes import alive, wait_until
from gserver.testing.process import WAIT, ServerProcess
from gserver.workers import KILL_MARGIN_SECONDS, MASTER_POLL_SECONDS
from tests.conftest import Client, clean_env

GRACE = 1.0
# The master kills what is left this long after it is asked to stop.
DEADLINE = GRACE + KILL_MARGIN_SECONDS
# What a stop may take beyond its deadline: reaping, logging, the interpreter's exit.
SLACK = 3.0

# Blocks the whole worker in a C sleep: no greenlet runs and no signal is acted on, as
# when a handler calls a blocking library that gevent does not patch.
STUCK_HANDLER = """\
from gevent import monkey

_blocking_sleep = monkey.get_original("time", "sleep")


def handle(conn):
    conn.log.warning("handler_stuck")
    _blocking_sleep(3600)
"""


def wait_gone(pids: list[int], timeout: float = WAIT) -> float:
    """Seconds until none of ``pids`` runs any more; fails after ``timeout``."""
    start = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout, f"{pids} gone")
    return time.monotonic() - start


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test, in case the behaviour under test is missing."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def worker_pids(server: ServerProcess, leftovers: list[int], count: int = 2) -> list[int]:
    server.wait_for_events("listening", count)
    pids = [int(e["worker_pid"]) for e in server.wait_for_events("worker_started", count)]
    leftovers.extend(pids)
    return pids


def test_workers_stop_when_the_master_is_killed_and_free_the_port(
    start_server: Callable[..., ServerProcess], leftovers: list[int]
) -> None:
    server = start_server("--mode", "basic", "--workers", "2")
    pids = worker_pids(server, leftovers)
    client = Client(server.port)
    assert client.read_line() == "Welcome to TCP Server!\n"

    server.proc.kill()
    server.proc.wait(WAIT)
    # Each worker stops as if its master had sent SIGTERM: clients are told, it logs.
    assert client.read_to_close() == "Server shutting down\n"
    client.close()
    wait_gone(pids)
    assert len(server.wait_for_events("stopped", 2)) == 2  # the two workers; not the master

    again = start_server("--mode", "basic", "--workers", "2", "--port", str(server.port))
    assert again.port == server.port
    with Client(again.port) as client:
        assert client.read_line() == "Welcome to TCP Server!\n"
    again.signal(signal.SIGTERM)
    assert again.wait() == 0


@pytest.mark.parametrize("how", ["stuck_in_a_handler", "stopped_by_sigstop"])
def test_sigterm_kills_a_worker_that_does_not_stop_by_the_deadline(
    start_server: Callable[..., ServerProcess],
    leftovers: list[int],
    tmp_path: Path,
    how: str,
) -> None:
    (tmp_path / "stuck.py").write_text(STUCK_HANDLER)
    server = start_server(
        "--handler", "stuck:handle", "--workers", "2", "--shutdown-grace", str(GRACE)
    )
    pids = worker_pids(server, leftovers)
    if how == "stuck_in_a_handler":
        client = Client(server.port)
        stuck = int(server.wait_for_log("handler_stuck")["pid"])
    else:
        client = None
        stuck = pids[0]
        os.kill(stuck, signal.SIGSTOP)

    start = time.monotonic()
    server.signal(signal.SIGTERM)
    status = server.wait(DEADLINE + SLACK)
    took = time.monotonic() - start

    assert DEADLINE - 0.1 <= took < DEADLINE + SLACK
    assert status == 1  # not a graceful stop: a worker had to be killed
    [killed] = server.events("worker_killed")
    assert killed["worker_pid"] == stuck
    assert killed["level"] == "warning"
    assert killed["worker"] == pids.index(stuck)
    assert killed["deadline"] == DEADLINE
    [healthy] = [pid for pid in pids if pid != stuck]
    assert server.wait_for_log("stopped", pid=healthy)  # the other one stopped gracefully
    assert server.wait_for_log("stopped", role="master")["status"] == 1
    assert not any(alive(pid) for pid in pids)  # the master reaped them: no zombies either
    if client is not None:
        client.close()


def test_sigquit_kills_a_frozen_worker_after_the_margin_alone(
    start_server: Callable[..., ServerProcess], leftovers: list[int]
) -> None:
    # Shutdown grace plays no part when stopping at once.
    server = start_server("--mode", "basic", "--workers", "2", "--shutdown-grace", "30")
    pids = worker_pids(server, leftovers)
    os.kill(pids[1], signal.SIGSTOP)
    start = time.monotonic()
    server.signal(signal.SIGQUIT)
    assert server.wait(KILL_MARGIN_SECONDS + SLACK) == 1
    assert time.monotonic() - start >= KILL_MARGIN_SECONDS - 0.1
    assert [e["worker_pid"] for e in server.events("worker_killed")] == [pids[1]]
    assert server.wait_for_log("exit_now", pid=pids[0])
    assert not any(alive(pid) for pid in pids)


def test_a_graceful_stop_kills_nobody(
    start_server: Callable[..., ServerProcess], leftovers: list[int]
) -> None:
    server = start_server("--mode", "basic", "--workers", "2", "--shutdown-grace", "0")
    pids = worker_pids(server, leftovers)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not server.events("worker_killed")
    assert not any(alive(pid) for pid in pids)


# The portable fallback, without Linux's parent-death signal: a parent forks a child that
# watches it, then exits.  The child either dies of the SIGTERM the watcher sends, or
# ignores it, frozen in a blocking sleep, and is killed at the deadline.
WATCHED_CHILD = """\
import os, signal, sys, time

from gserver.workers import watch_master

parent = os.getpid()
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
if sys.argv[1] == "frozen":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
watch_master(parent, float(sys.argv[2]))
time.sleep(60)
os._exit(3)
"""


@pytest.mark.parametrize("how", ["obeys_sigterm", "frozen"])
def test_the_watcher_stops_an_orphan_where_no_parent_death_signal_exists(
    tmp_path: Path, leftovers: list[int], how: str
) -> None:
    script = tmp_path / "watched.py"
    script.write_text(WATCHED_CHILD)
    deadline = 1.0
    parent = subprocess.Popen(
        [sys.executable, str(script), "frozen" if how == "frozen" else "plain", str(deadline)],
        stdout=subprocess.PIPE,
        env=clean_env(),
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    leftovers.append(child)
    assert parent.wait(WAIT) == 0
    start = time.monotonic()
    took = wait_gone([child])
    parent.stdout.close()
    if how == "frozen":
        assert deadline - 0.1 <= took < MASTER_POLL_SECONDS + deadline + SLACK
    else:
        assert took < MASTER_POLL_SECONDS + SLACK
    assert time.monotonic() - start < WAIT

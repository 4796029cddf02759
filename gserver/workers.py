"""``--workers N``: a master process that shares one listening socket among N workers.

The master opens the socket, then forks the workers before any gevent hub exists, so each
worker starts its own event loop on the shared socket (no SO_REUSEPORT: a second gserver
on the same port still fails).  The master restarts a worker that dies and, on SIGTERM or
SIGINT, stops every worker gracefully, each once, killing whatever is left at a deadline.
It never runs gevent itself.  A worker stops when its master dies, however it died.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from gevent import monkey

from gserver.listener import open_listener
from gserver.logs import get_logger
from gserver.settings import Settings

# The master must not start a gevent hub before forking: use the unpatched calls.
_fork: Callable[[], int] = monkey.get_original("os", "fork")
_waitpid: Callable[[int, int], tuple[int, int]] = monkey.get_original("os", "waitpid")
_sleep: Callable[[float], None] = monkey.get_original("time", "sleep")
_signal: Callable[..., Any] = monkey.get_original("signal", "signal")
# A native thread, not a greenlet: it must run even while a worker's hub is blocked.
_start_thread: Callable[..., int] = monkey.get_original("_thread", "start_new_thread")
_MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# SIGALRM ends the master's wait for its workers once it is stopping (see _arm_deadline).
_DEADLINE_SIGNAL = signal.SIGALRM
_HELD_SIGNALS = (*_MASTER_SIGNALS, _DEADLINE_SIGNAL)
# A worker that dies sooner than this after starting is restarted only after a pause.
CRASH_LOOP_SECONDS = 1.0
# How long past shutdown_grace a stopping worker may take before it is killed.  After the
# grace, what is left of a worker's own stop is bounded step by step (unwinding its
# clients' handlers, leaving Redis, stopping the metrics server: about 5 s at most all
# told, see Server._stop_gracefully, and milliseconds as a rule), so a worker still there
# is stuck (frozen in a blocking call, or stopped) and would not end by waiting longer.
KILL_MARGIN_SECONDS = 5.0
# How often a worker checks that its master is still its parent, where no parent-death
# signal exists (it is the fallback; Linux tells the worker at once).
MASTER_POLL_SECONDS = 1.0
EXIT_START_FAILED = 1
EXIT_FORCED = 1
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

RunWorker = Callable[[int, socket.socket], int]


class Master:
    def __init__(self, settings: Settings, run_worker: RunWorker) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.log = get_logger(role="master", pid=os.getpid())
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.stopping = False
        self.exit_status = 0
        self.interrupts = 0
        self.listener: socket.socket | None = None
        self.deadline = 0.0  # seconds given to the workers to stop, once stopping
        self.killed: set[int] = set()  # pids SIGKILLed at the deadline, logged when reaped

    def run(self) -> int:
        s = self.settings
        self.listener = open_listener(s.host, s.port, s.backlog, unpatched=True)
        host, port = self.listener.getsockname()[:2]
        _prctl()  # looked up once here, so that no worker pays for it
        for signum in _MASTER_SIGNALS:
            _signal(signum, self._on_signal)
        _signal(_DEADLINE_SIGNAL, self._on_deadline)
        self.log.info("master_listening", host=host, port=port, workers=s.workers)
        for index in range(s.workers):
            self._spawn(index)
        while self.workers:
            # Signals interrupt this wait only to be retried (PEP 475): the handlers do
            # what cannot wait, the deadline's SIGKILL included, and it returns as soon as
            # a worker dies of it.
            try:
                pid, status = _waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in self.workers:
                continue
            index, started = self.workers.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if pid in self.killed and code == -signal.SIGKILL:
                self.log.warning(
                    "worker_killed", worker=index, worker_pid=pid, deadline=self.deadline
                )
                self.exit_status = EXIT_FORCED
            self.log.info("worker_exited", worker=index, worker_pid=pid, status=code)
            if self.stopping:
                continue
            if code == EXIT_START_FAILED and time.monotonic() - started < CRASH_LOOP_SECONDS:
                # It could not start (its metrics port taken, say): restarting cannot help.
                self.log.error("worker_cannot_start", worker=index)
                self.stopping = True
                self.exit_status = EXIT_START_FAILED
                self._signal_workers(signal.SIGTERM)
                self._arm_deadline(s.shutdown_grace + KILL_MARGIN_SECONDS)
                continue
            if time.monotonic() - started < CRASH_LOOP_SECONDS:
                _sleep(CRASH_LOOP_SECONDS)
            if not self.stopping:
                self._spawn(index)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.log.info("stopped", status=self.exit_status)
        return self.exit_status

    def _spawn(self, index: int) -> None:
        assert self.listener is not None
        # Hold signals until the new worker is on record, or a SIGTERM arriving in between
        # would miss it and leave it running forever.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        if self.stopping:  # a stop signal came after the caller looked: start nothing
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
            return
        master_pid = os.getpid()
        try:
            pid = _fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
            raise
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in _HELD_SIGNALS:
                    _signal(signum, signal.SIG_DFL)
                self._follow_master(master_pid)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
                code = self.run_worker(index, self.listener)
            except Exception:
                self.log.exception("worker_crashed", worker=index)
            finally:
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
        self.log.info("worker_started", worker=index, worker_pid=pid)

    def _follow_master(self, master_pid: int) -> None:
        """In a new worker: stop when the master dies, even by SIGKILL, which it cannot
        pass on; orphans would keep serving the port, and the next start would fail."""
        prctl = _prctl()
        if prctl is not None:
            # Linux sends the SIGTERM the master would have sent, at once, as it dies.
            prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != master_pid:  # it died before that took effect: nobody to serve
            os._exit(0)
        # Everywhere else, and for a worker too stuck to act on SIGTERM, a watcher.
        watch_master(master_pid, self.settings.shutdown_grace + KILL_MARGIN_SECONDS)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _arm_deadline(self, seconds: float) -> None:
        """SIGKILL the workers left in ``seconds`` (sooner if already due sooner).

        A timer signal rather than a timed wait: the blocking ``waitpid`` stays as it is,
        and the deadline handler's SIGKILL makes it return."""
        remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
        if 0 < remaining <= seconds:
            return
        self.deadline = seconds
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _on_deadline(self, _signum: int, _frame: Any) -> None:
        # A signal handler too: no logging; the loop logs worker_killed as it reaps each.
        for pid in list(self.workers):
            self.killed.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._signal_workers(signal.SIGHUP)
            return
        if signum == signal.SIGINT:
            self.interrupts += 1
        if signum == signal.SIGQUIT or self.interrupts > 1:
            # At once: each worker exits with status 1 on SIGQUIT, and so does the master.
            # One frozen in a blocking call cannot act on it: it is killed after the margin.
            self.stopping = True
            self.exit_status = EXIT_FORCED
            self._signal_workers(signal.SIGQUIT)
            self._arm_deadline(KILL_MARGIN_SECONDS)
            return
        if not self.stopping:  # a repeated SIGTERM changes nothing
            # No logging here: a signal arriving in the middle of a log write would make
            # the write re-entrant.  The workers log their own shutdown.
            self.stopping = True
            self._signal_workers(signal.SIGTERM)
            self._arm_deadline(self.settings.shutdown_grace + KILL_MARGIN_SECONDS)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """Linux's prctl(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def watch_master(master_pid: int, deadline: float) -> None:
    """Start a thread that stops this process once ``master_pid`` is no longer its parent.

    As gunicorn does, it looks for a changed parent (the orphan is adopted by init or a
    subreaper), every MASTER_POLL_SECONDS; then it sends this process SIGTERM, so that the
    worker's own graceful stop runs, and SIGKILL ``deadline`` seconds later in case that
    stop cannot run or end (the worker frozen in a blocking call).  A native thread, not a
    greenlet, for that last case; it touches nothing of gevent's, nor any lock."""
    # The thread starts with every signal blocked (a new thread inherits the mask), so
    # that signals meant for the worker go to its main thread, where gevent expects them.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _start_thread(_watch_master, (master_pid, deadline))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _watch_master(master_pid: int, deadline: float) -> None:
    while os.getppid() == master_pid:
        _sleep(MASTER_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    _sleep(deadline)
    os.kill(os.getpid(), signal.SIGKILL)

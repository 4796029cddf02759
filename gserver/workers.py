"""``--workers N``: a master process that shares one listening socket among N workers.

The master opens the socket, then forks the workers before any gevent hub exists, so each
worker starts its own event loop on the shared socket (no SO_REUSEPORT: a second gserver
on the same port still fails).  The master restarts a worker that dies and, on SIGTERM or
SIGINT, stops every worker gracefully, each once.  It never runs gevent itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from gevent import monkey

from gserver.logs import get_logger
from gserver.listener import open_listener
from gserver.settings import Settings

# The master must not start a gevent hub before forking: use the unpatched calls.
_fork: Callable[[], int] = monkey.get_original("os", "fork")
_waitpid: Callable[[int, int], tuple[int, int]] = monkey.get_original("os", "waitpid")
_sleep: Callable[[float], None] = monkey.get_original("time", "sleep")
_signal: Callable[..., Any] = monkey.get_original("signal", "signal")
_MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# A worker that dies sooner than this after starting is restarted only after a pause.
CRASH_LOOP_SECONDS = 1.0
EXIT_START_FAILED = 1

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

    def run(self) -> int:
        s = self.settings
        self.listener = open_listener(s.host, s.port, s.backlog, unpatched=True)
        host, port = self.listener.getsockname()[:2]
        for signum in _MASTER_SIGNALS:
            _signal(signum, self._on_signal)
        self.log.info("master_listening", host=host, port=port, workers=s.workers)
        for index in range(s.workers):
            self._spawn(index)
        while self.workers:
            try:
                pid, status = _waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in self.workers:
                continue
            index, started = self.workers.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            self.log.info("worker_exited", worker=index, worker_pid=pid, status=code)
            if self.stopping:
                continue
            if code == EXIT_START_FAILED and time.monotonic() - started < CRASH_LOOP_SECONDS:
                # It could not start (its metrics port taken, say): restarting cannot help.
                self.log.error("worker_cannot_start", worker=index)
                self.stopping = True
                self.exit_status = EXIT_START_FAILED
                self._signal_workers(signal.SIGTERM)
                continue
            if time.monotonic() - started < CRASH_LOOP_SECONDS:
                _sleep(CRASH_LOOP_SECONDS)
            if not self.stopping:
                self._spawn(index)
        self.log.info("stopped", status=self.exit_status)
        return self.exit_status

    def _spawn(self, index: int) -> None:
        assert self.listener is not None
        # Hold signals until the new worker is on record, or a SIGTERM arriving in between
        # would miss it and leave it running forever.
        signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS)
        try:
            pid = _fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
            raise
        if pid == 0:  # the worker
            for signum in _MASTER_SIGNALS:
                _signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
            code = 1
            try:
                code = self.run_worker(index, self.listener)
            except Exception:
                self.log.exception("worker_crashed", worker=index)
            finally:
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
        self.log.info("worker_started", worker=index, worker_pid=pid)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._signal_workers(signal.SIGHUP)
            return
        if signum == signal.SIGINT:
            self.interrupts += 1
        if signum == signal.SIGQUIT or self.interrupts > 1:
            # At once: each worker exits with status 1 on SIGQUIT, and so does the master.
            self.stopping = True
            self.exit_status = 1
            self._signal_workers(signal.SIGQUIT)
            return
        if not self.stopping:  # a repeated SIGTERM changes nothing
            # No logging here: a signal arriving in the middle of a log write would make
            # the write re-entrant.  The workers log their own shutdown.
            self.stopping = True
            self._signal_workers(signal.SIGTERM)

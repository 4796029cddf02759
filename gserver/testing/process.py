"""A gserver process seen from outside: its JSON log lines collected as they come, and
waited on as events (never by sleeping for a guessed time)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from typing import IO, Any

# Generous bounds for events that normally take milliseconds; never a speed assertion.
WAIT = 10.0


class ServerProcess:
    """A running ``python -m gserver``; its JSON log lines are collected as they come.

    ``stream`` is where they come from: the process's stderr unless told otherwise (the
    pytest kit merges stdout into it, so that a handler's ``print`` shows too)."""

    def __init__(self, proc: subprocess.Popen[bytes], stream: IO[bytes] | None = None) -> None:
        self.proc = proc
        self._stream = stream if stream is not None else proc.stderr
        self.logs: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.port = 0

    def _read_stderr(self) -> None:
        assert self._stream is not None
        for raw in self._stream:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.raw_stderr.append(text)
                with contextlib.suppress(ValueError):
                    self.logs.append(json.loads(text))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, event: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first log entry with this event (and these fields), waiting for it if needed."""
        deadline = time.monotonic() + timeout

        def match() -> dict[str, Any] | None:
            for entry in self.logs:
                if entry.get("event") == event and all(
                    entry.get(k) == v for k, v in fields.items()
                ):
                    return entry
            return None

        with self._changed:
            while (found := match()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log event {event!r} {fields}; stderr was:\n"
                        + "\n".join(self.raw_stderr[-40:])
                    )
                self._changed.wait(min(remaining, 0.2))
        return found

    def wait_for_output(self, text: str, timeout: float = WAIT, after: int = 0) -> str:
        """The first line printed (log or not) that contains ``text``, from line number
        ``after`` on, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.raw_stderr[after:]:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no output line with {text!r}; it printed:\n"
                        + "\n".join(self.raw_stderr[-40:])
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait_for_events(
        self, event: str, count: int, timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """At least ``count`` log entries with this event, waiting for them if needed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := [e for e in self.logs if e.get("event") == event]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(found)} {event!r} events, wanted {count}")
                self._changed.wait(min(remaining, 0.2))
        return found

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.logs if e.get("event") == event]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

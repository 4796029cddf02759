"""The churn scenario: clients that connect, read the greeting and close, as fast as they can.

``loadgen churn`` keeps ``churn_conns`` clients at a time (50) each connecting, reading the
greeting line and closing, a new one at once in its place, for the run's duration.  Both
servers log every connection, as they do out of the box: gserver basic with its default
settings (log level info, a JSON line at each connect and disconnect, to the log file),
and the seed's basic-server.js with its console.log lines (to the same kind of file).

Measured: connections per second, the time from connect() to the greeting, every refusal,
reset, early close or timeout, the server's CPU, and what is left behind: the server's open
descriptors and resident memory before the run and after it (once its descriptors are back
or 5 s have passed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import Running, gserver_defaults, node
from gserver.testing.probes import cpu_seconds, rss_bytes

if TYPE_CHECKING:
    from bench.scenarios import Config, Scenario

SETTLE_SECONDS = 5.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def measure_churn(run: Running, cfg: Config, loadgen: Path) -> dict[str, Any]:
    from bench.scenarios import _common, run_loadgen

    time.sleep(0.3)
    fds0, rss0 = open_fds(run.pid), rss_bytes(run.pid)
    args = ["churn", *_common(run), "--conns", str(cfg.churn_conns)]
    args += ["--duration", str(cfg.duration), "--warmup", str(cfg.warmup)]
    cpu0, t0 = cpu_seconds(run.pid), time.perf_counter()
    out = run_loadgen(loadgen, args, timeout=60 + cfg.warmup + cfg.duration + 30)
    cpu = (cpu_seconds(run.pid) - cpu0) / (time.perf_counter() - t0) * 100
    deadline = time.monotonic() + SETTLE_SECONDS
    while open_fds(run.pid) > fds0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    fds1, rss1 = open_fds(run.pid), rss_bytes(run.pid)
    return {
        **out,
        "server_cpu_pct": cpu,
        "fds_before": fds0,
        "fds_after": fds1,
        "fds_left": fds1 - fds0,
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "rss_growth_mib": (rss1 - rss0) / 2**20,
    }


def churn_scenarios(gserver_cwd: Path) -> dict[str, Scenario]:
    from bench.scenarios import Column, Ratio, Scenario

    us = "{:,.0f}"
    mib = "{:,.1f}"
    return {
        "churn": Scenario(
            "churn",
            "Churn: {churn_conns} clients at a time connecting, reading the greeting and "
            "closing, as fast as they can; each server logging every connection to a file",
            [gserver_defaults("basic", cwd=gserver_cwd), node("basic-server.js", quiet=False)],
            measure_churn,
            [
                Column("conns_per_sec", "connections/s"),
                Column("p50_us", "p50 µs", us),
                Column("p99_us", "p99 µs", us),
                Column("refused", "refused"),
                Column("reset", "reset"),
                Column("errors", "errors"),
                Column("fds_before", "fds before"),
                Column("fds_after", "fds after"),
                Column("rss_before_mib", "RSS before MiB", mib),
                Column("rss_after_mib", "RSS after MiB", mib),
                Column("rss_growth_mib", "RSS growth MiB", "{:,.2f}"),
                Column("server_cpu_pct", "server CPU %"),
            ],
            [
                Ratio(
                    "churn: connections/s",
                    "gserver-basic",
                    "node-basic",
                    "conns_per_sec",
                    "higher",
                ),
            ],
        ),
    }

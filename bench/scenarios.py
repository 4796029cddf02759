"""The scenarios (echo, chat, cluster, idle, startup, kv; ws-chat, ws-idle, tcp-web from
ws.py): which servers, what is measured, how.

Each scenario runs its servers alternately (A B A B ...) for ``rounds`` rounds; one run is
one fresh server process measured by one loadgen process, both bounded in time.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import (
    BARE_GEVENT,
    BENCH,
    C_ECHO,
    HOST,
    REDIS_SERVER,
    THREADED,
    BenchError,
    Running,
    ServerSpec,
    children,
    established_inodes,
    greet,
    gserver,
    gserver_defaults,
    gserver_kv,
    gserver_workers,
    node,
    redis_benchmark_available,
    serve,
    tree_cpu_secs,
)
from gserver.testing.probes import cpu_seconds, rss_bytes, socket_inodes

Metrics = dict[str, Any]


@dataclass(frozen=True)
class Config:
    rounds: int = 5
    duration: float = 5.0
    warmup: float = 1.0
    echo_conns: int = 100
    echo_size: int = 64
    chat_clients: int = 500
    chat_senders: int = 20
    chat_quiet: float = 2.0
    idle_conns: int = 10000
    idle_settle: float = 1.0
    churn_conns: int = 50
    kv_requests: int = 200_000  # redis-benchmark -n without pipelining (4 times that with)
    kv_clients: int = 50
    kv_pipeline: int = 16
    quick: bool = False


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "{:,.0f}"

    def show(self, value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, str):
            return value
        return self.fmt.format(value)


@dataclass(frozen=True)
class Ratio:
    """``num``/``den`` of the medians of ``metric``; ``better`` says which way is good."""

    label: str
    num: str
    den: str
    metric: str
    better: str  # "higher" or "lower"
    good_for: str = "gserver"  # whom ``better`` favours (the numerator)


@dataclass
class RunResult:
    spec: ServerSpec
    round: int
    metrics: Metrics = field(default_factory=dict)
    error: str | None = None
    log_summary: str = ""
    exit_code: int | None = None
    killed: bool = False


@dataclass
class ScenarioResult:
    name: str
    title: str
    specs: list[ServerSpec]
    columns: list[Column]
    ratios: list[Ratio]
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self, key: str, metric: str) -> float | None:
        values = [
            r.metrics[metric]
            for r in self.runs
            if r.spec.key == key and r.error is None and r.metrics.get(metric) is not None
        ]
        if not values or any(isinstance(v, str) for v in values):  # text: rounds only
            return None
        return float(statistics.median(values))

    def ratio(self, ratio: Ratio) -> float | None:
        num, den = self.median(ratio.num, ratio.metric), self.median(ratio.den, ratio.metric)
        if num is None or den is None or den == 0:
            return None
        return num / den


# -- loadgen ------------------------------------------------------------------------------


def run_loadgen(
    loadgen: Path, args: list[str], timeout: float, poll: Callable[[], None] | None = None
) -> Metrics:
    """Run loadgen to its end; ``poll`` (if any) is called about every 0.1 s meanwhile."""
    cmd = [str(loadgen), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"loadgen {args[0]} did not finish within {timeout:.0f}s"
                    ) from None
                if poll is not None:
                    poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    if proc.returncode != 0:
        raise BenchError(f"loadgen exited {proc.returncode}: {stderr.strip()}")
    lines = stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"loadgen printed nothing; stderr: {stderr.strip()}")
    metrics: Metrics = json.loads(lines[-1])
    return metrics


def _common(run: Running) -> list[str]:
    ws = ["--ws", run.spec.ws_path] if run.spec.ws_path else []
    return ["--host", HOST, "--port", str(run.port), *ws]


# -- echo ---------------------------------------------------------------------------------


def measure_echo(run: Running, cfg: Config, loadgen: Path) -> Metrics:
    args = [
        "echo",
        *_common(run),
        "--conns",
        str(cfg.echo_conns),
        "--size",
        str(cfg.echo_size),
        "--duration",
        str(cfg.duration),
        "--warmup",
        str(cfg.warmup),
    ]
    cpu0, t0 = cpu_seconds(run.pid), time.perf_counter()
    out = run_loadgen(loadgen, args, timeout=60 + cfg.warmup + cfg.duration + 30)
    cpu = (cpu_seconds(run.pid) - cpu0) / (time.perf_counter() - t0) * 100
    return {**out, "server_cpu_pct": cpu}


# -- chat ---------------------------------------------------------------------------------


def measure_chat(run: Running, cfg: Config, loadgen: Path) -> Metrics:
    args = [
        "chat",
        *_common(run),
        "--clients",
        str(cfg.chat_clients),
        "--senders",
        str(cfg.chat_senders),
        "--duration",
        str(cfg.duration),
        "--warmup",
        str(cfg.warmup),
        "--quiet",
        str(cfg.chat_quiet),
    ]
    # With workers: how the kernel spread the clients (peak connections each worker held),
    # and how many connections the workers opened to Redis.
    workers = children(run.pid)
    peak = dict.fromkeys(workers, 0)
    rclient = run.redis.client() if run.redis else None

    def sample() -> None:
        try:
            conns = established_inodes(run.port)
        except OSError:
            return
        for w in workers:
            with contextlib.suppress(OSError):  # a worker gone: the server log says why
                peak[w] = max(peak[w], len(socket_inodes(w) & conns))

    redis0 = rclient.info("stats")["total_connections_received"] if rclient else 0
    redis_cpu0 = cpu_seconds(run.redis.pid) if run.redis else 0.0
    cpu0, t0 = tree_cpu_secs(run.pid), time.perf_counter()
    out = run_loadgen(
        loadgen,
        args,
        timeout=60 + 5 + cfg.warmup + cfg.duration + 30 + 30,
        poll=sample if len(workers) > 1 else None,
    )
    wall = time.perf_counter() - t0
    cpu = (tree_cpu_secs(run.pid) - cpu0) / wall * 100
    metrics: Metrics = {**out, "server_cpu_pct": cpu}
    expected = out.get("expected") or 0
    metrics["lost_pct"] = out["lost"] / expected * 100 if expected else None
    if len(workers) > 1:
        metrics["clients_per_worker"] = " / ".join(str(peak[w]) for w in workers)
    if run.redis is not None and rclient is not None:
        metrics["redis_cpu_pct"] = (cpu_seconds(run.redis.pid) - redis_cpu0) / wall * 100
        metrics.update(_redis_stats(run, rclient, redis0))
    return metrics


def _redis_stats(run: Running, client: Any, connections0: int) -> Metrics:
    """What Redis saw: PUBLISH calls, connections opened, subscribers it cut off."""
    import redis

    assert run.redis is not None
    stats: Metrics = {}
    try:
        info = client.info("commandstats")
        stats["redis_publishes"] = int(info.get("cmdstat_publish", {}).get("calls", 0))
        opened = client.info("stats")["total_connections_received"] - connections0
        stats["redis_connections_opened"] = int(opened)
        channel = run.spec.redis_channel
        stats["redis_subscribers_after"] = int(dict(client.pubsub_numsub(channel)).get(channel, 0))
    except (redis.RedisError, OSError) as exc:  # a stat, not the measurement
        stats["redis_error"] = f"{type(exc).__name__}: {exc}"
    try:
        log = run.redis.log_path.read_text(errors="replace")
        stats["redis_kicks"] = log.count("overcoming of output buffer limits")
    except OSError:
        pass
    return stats


# -- idle ---------------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise BenchError(f"loadgen idle printed nothing within {timeout:.0f}s")
    return proc.stdout.readline()


def greenlet_floor(count: int) -> float | None:
    """Bytes per parked greenlet and nothing else (bench/greenlet_floor.py), with as many
    greenlets as the server held clients; None if it could not be measured."""
    cmd = [sys.executable, str(BENCH / "greenlet_floor.py"), "--count", str(count)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        return float(json.loads(out.stdout)["bytes_per_greenlet"])
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None


def measure_idle(run: Running, cfg: Config, loadgen: Path) -> Metrics:
    time.sleep(0.3)
    before = rss_bytes(run.pid)
    args = ["idle", *_common(run), "--conns", str(cfg.idle_conns), "--hold", "120"]
    proc = subprocess.Popen(
        [str(loadgen), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=90)
        if not line:
            raise BenchError(f"loadgen idle failed: {proc.stderr.read() if proc.stderr else ''}")
        ready: Metrics = json.loads(line)
        time.sleep(cfg.idle_settle)
        after = rss_bytes(run.pid)
        try:
            greeting_ms: float | None = (
                greet(run.port, run.spec.greeting_end, 10.0, probe=run.spec.probe) * 1000
            )
        except (OSError, BenchError):
            greeting_ms = None
        assert proc.stdin is not None
        proc.stdin.close()
        final: Metrics = json.loads(_read_line(proc, timeout=30) or "{}")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    held = int(ready.get("conns_ready", 0))
    per_conn = (after - before) / held if held else None
    floor = share = None
    if run.spec.key.startswith("gserver") and per_conn is not None:
        floor = greenlet_floor(held)
        share = per_conn - floor if floor is not None else None
    return {
        "conns": cfg.idle_conns,
        "conns_ready": held,
        "setup_secs": ready.get("setup_secs"),
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "bytes_per_conn": per_conn,
        "greenlet_floor_bytes": floor,
        "gserver_share_bytes": share,
        "new_client_greeting_ms": greeting_ms,
        "errors": int(ready.get("connect_errors", 0))
        + int(ready.get("greeting_errors", 0))
        + int(final.get("io_errors", 0)),
        "closed_by_server": final.get("closed_by_server"),
    }


# -- startup ------------------------------------------------------------------------------


def measure_startup(run: Running, cfg: Config, loadgen: Path) -> Metrics:
    return {"startup_ms": run.startup_secs * 1000, "rss_mib": rss_bytes(run.pid) / 2**20}


# -- kv: redis-benchmark ------------------------------------------------------------------

# redis-benchmark's test names -> our metric prefixes; PING_MBULK is PING as clients send it.
KV_TESTS = {"PING_INLINE": "ping_inline", "PING_MBULK": "ping", "SET": "set", "GET": "get"}


def run_redis_benchmark(run: Running, cfg: Config, requests: int, pipeline: int) -> Metrics:
    """``redis-benchmark -t ping,set,get`` with keys spread over 100,000 (``-r``); its CSV
    gives requests/s and latency percentiles per test."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(run.port), "-t", "ping,set,get"]
    cmd += ["-c", str(cfg.kv_clients), "-n", str(requests), "-P", str(pipeline)]
    cmd += ["-r", "100000", "--csv"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + requests / 500)
    except subprocess.TimeoutExpired:
        raise BenchError(f"redis-benchmark -P {pipeline} did not finish in time") from None
    rows = {row["test"]: row for row in csv.DictReader(result.stdout.splitlines())}
    if result.returncode != 0 or not set(KV_TESTS) <= set(rows):
        raise BenchError(
            f"redis-benchmark exited {result.returncode}: {result.stderr.strip()[-300:]}"
        )
    suffix = "" if pipeline == 1 else f"_p{pipeline}"
    metrics: Metrics = {}
    for test, name in KV_TESTS.items():
        metrics[f"{name}{suffix}_rps"] = float(rows[test]["rps"])
        metrics[f"{name}{suffix}_p99_ms"] = float(rows[test]["p99_latency_ms"])
    return metrics


def measure_kv(run: Running, cfg: Config, loadgen: Path) -> Metrics:
    cpu0, t0 = cpu_seconds(run.pid), time.perf_counter()
    metrics = run_redis_benchmark(run, cfg, cfg.kv_requests, 1)
    metrics["server_cpu_pct"] = (cpu_seconds(run.pid) - cpu0) / (time.perf_counter() - t0) * 100
    metrics.update(run_redis_benchmark(run, cfg, cfg.kv_requests * 4, cfg.kv_pipeline))
    return metrics


# -- definitions --------------------------------------------------------------------------

Measure = Callable[[Running, Config, Path], Metrics]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    specs: list[ServerSpec]
    measure: Measure
    columns: list[Column]
    ratios: list[Ratio]
    needs_redis: bool = False
    # Why the scenario cannot run here (a program missing), or None: then it is skipped.
    requires: Callable[[], str | None] | None = None
    # Start and stop each server once before the rounds, unmeasured: its bytecode and
    # the files it reads are then cached, as on a machine where it has run before.
    warm_up_start: bool = False


def core_scenarios(gserver_cwd: Path, baseline_cwd: Path | None = None) -> dict[str, Scenario]:
    """The scenarios this module measures itself (bench/catalog.py lists them all)."""

    us = "{:,.0f}"
    chat_cols = [
        Column("deliveries_per_sec", "deliveries/s"),
        Column("p50_us", "p50 µs", us),
        Column("p99_us", "p99 µs", us),
        Column("messages_sent", "messages sent"),
        Column("lost", "lost"),
        Column("seq_gaps", "seq gaps"),
        Column("errors", "errors"),
        Column("server_cpu_pct", "server CPU %"),
    ]
    echo_cols = [
        Column("round_trips_per_sec", "round trips/s"),
        Column("p50_us", "p50 µs", us),
        Column("p99_us", "p99 µs", us),
        Column("errors", "errors"),
        Column("server_cpu_pct", "server CPU %"),
    ]
    return {
        "echo": Scenario(
            "echo",
            "Echo: {echo_conns} connections, {echo_size}-byte lines, one in flight per connection",
            [
                gserver("basic", cwd=gserver_cwd),
                node("basic-server.js"),
                gserver("echo", cwd=gserver_cwd),
                node("echo-server.js"),
                THREADED,
                C_ECHO,
                BARE_GEVENT,
            ],
            measure_echo,
            echo_cols,
            [
                Ratio(
                    "echo, basic mode: round trips/s",
                    "gserver-basic",
                    "node-basic",
                    "round_trips_per_sec",
                    "higher",
                ),
                Ratio(
                    "echo, basic mode: p99 latency",
                    "gserver-basic",
                    "node-basic",
                    "p99_us",
                    "lower",
                ),
                Ratio(
                    "echo, echo mode: round trips/s",
                    "gserver-echo",
                    "node-echo",
                    "round_trips_per_sec",
                    "higher",
                ),
                Ratio(
                    "echo, echo mode: p99 latency", "gserver-echo", "node-echo", "p99_us", "lower"
                ),
                Ratio(
                    "echo, basic: gserver / bare gevent round trips/s",
                    "gserver-basic",
                    "bare-gevent",
                    "round_trips_per_sec",
                    "higher",
                ),
                # The machine's limit with this load generator: the trivial C server.
                Ratio(
                    "echo, basic mode: gserver / C echo server round trips/s",
                    "gserver-basic",
                    "c-echo",
                    "round_trips_per_sec",
                    "higher",
                ),
                Ratio(
                    "echo, echo mode: gserver / C echo server round trips/s",
                    "gserver-echo",
                    "c-echo",
                    "round_trips_per_sec",
                    "higher",
                ),
                Ratio(
                    "echo, basic mode: Node / C echo server round trips/s",
                    "node-basic",
                    "c-echo",
                    "round_trips_per_sec",
                    "higher",
                    "Node",
                ),
            ],
        ),
        "chat": Scenario(
            "chat",
            "Chat: {chat_clients} clients, {chat_senders} senders, each sending its next line "
            "once the previous came back",
            [gserver("chat", cwd=gserver_cwd), node("chat-server.js")],
            measure_chat,
            chat_cols,
            [
                Ratio(
                    "chat: deliveries/s",
                    "gserver-chat",
                    "node-chat",
                    "deliveries_per_sec",
                    "higher",
                ),
                Ratio("chat: p99 latency", "gserver-chat", "node-chat", "p99_us", "lower"),
            ],
        ),
        "cluster": Scenario(
            "cluster",
            "Cluster: the chat workload ({chat_clients} clients, {chat_senders} senders) on one "
            "process and on 2 worker processes joined by Redis pub/sub",
            [
                gserver("chat", cwd=gserver_cwd),
                gserver_workers("chat", 2, cwd=gserver_cwd),
            ],
            measure_chat,
            [
                *chat_cols[:5],
                Column("lost_pct", "lost %", "{:,.2f}"),
                *chat_cols[5:],
                Column("redis_cpu_pct", "Redis CPU %"),
                Column("clients_per_worker", "clients per worker"),
                Column("redis_publishes", "Redis PUBLISHes"),
                Column("redis_connections_opened", "Redis connections opened"),
                Column("redis_kicks", "subscribers cut off by Redis"),
            ],
            [
                Ratio(
                    "chat, 2 workers + Redis / 1 process: deliveries/s",
                    "gserver-chat-workers2",
                    "gserver-chat",
                    "deliveries_per_sec",
                    "higher",
                    "2 workers",
                ),
                Ratio(
                    "chat, 2 workers + Redis / 1 process: p99 latency",
                    "gserver-chat-workers2",
                    "gserver-chat",
                    "p99_us",
                    "lower",
                    "2 workers",
                ),
            ],
            needs_redis=True,
        ),
        "idle": Scenario(
            "idle",
            "Idle: {idle_conns} connections held past the greeting (basic mode)",
            [
                gserver("basic", "--max-clients", "20000", cwd=gserver_cwd),
                node("basic-server.js"),
                BARE_GEVENT,
                THREADED,
            ],
            measure_idle,
            [
                Column("conns_ready", "held"),
                Column("rss_before_mib", "RSS before MiB", "{:,.1f}"),
                Column("rss_after_mib", "RSS after MiB", "{:,.1f}"),
                Column("bytes_per_conn", "bytes/conn"),
                Column("greenlet_floor_bytes", "greenlet floor B"),
                Column("gserver_share_bytes", "gserver's share B"),
                Column("new_client_greeting_ms", "new client greeting ms", "{:,.2f}"),
                Column("setup_secs", "ramp s", "{:,.2f}"),
                Column("errors", "errors"),
            ],
            [
                Ratio(
                    "idle: RSS bytes per connection",
                    "gserver-basic",
                    "node-basic",
                    "bytes_per_conn",
                    "lower",
                ),
                Ratio(
                    "idle: new client's greeting time",
                    "gserver-basic",
                    "node-basic",
                    "new_client_greeting_ms",
                    "lower",
                ),
                Ratio(
                    "idle: gserver / bare gevent bytes per connection",
                    "gserver-basic",
                    "bare-gevent",
                    "bytes_per_conn",
                    "lower",
                ),
            ],
        ),
        "startup": Scenario(
            "startup",
            "Startup: process start to the first greeting received (default settings, each "
            "server started once unmeasured before the rounds)",
            [gserver_defaults("basic", cwd=gserver_cwd), node("basic-server.js")],
            measure_startup,
            [
                Column("startup_ms", "startup ms", "{:,.1f}"),
                Column("rss_mib", "RSS MiB", "{:,.1f}"),
            ],
            [Ratio("startup time", "gserver-basic", "node-basic", "startup_ms", "lower")],
            warm_up_start=True,
        ),
        "kv": Scenario(
            "kv",
            "Key-value: redis-benchmark -t ping,set,get -c {kv_clients} -n {kv_requests} "
            "(then -P {kv_pipeline}, 4 times as many) against examples/kv.py on gserver and "
            "against redis-server",
            [gserver_kv(cwd=gserver_cwd), REDIS_SERVER],
            measure_kv,
            [
                Column("ping_inline_rps", "PING inline req/s"),
                Column("ping_rps", "PING req/s"),
                Column("set_rps", "SET req/s"),
                Column("get_rps", "GET req/s"),
                Column("set_p99_ms", "SET p99 ms", "{:,.2f}"),
                Column("get_p99_ms", "GET p99 ms", "{:,.2f}"),
                Column("server_cpu_pct", "server CPU %"),
                Column("ping_p16_rps", "-P 16: PING req/s"),
                Column("set_p16_rps", "-P 16: SET req/s"),
                Column("get_p16_rps", "-P 16: GET req/s"),
            ],
            [
                Ratio(
                    f"kv vs redis-server: {label}", "gserver-kv", "redis-server", metric, "higher"
                )
                for label, metric in [
                    ("PING req/s", "ping_rps"),
                    ("SET req/s", "set_rps"),
                    ("GET req/s", "get_rps"),
                    ("PING req/s, -P 16", "ping_p16_rps"),
                    ("SET req/s, -P 16", "set_p16_rps"),
                    ("GET req/s, -P 16", "get_p16_rps"),
                ]
            ],
            requires=redis_benchmark_available,
        ),
    }


# -- running ------------------------------------------------------------------------------


def summarize_log(path: Path) -> str:
    """Warnings and errors a server logged: JSON events counted, other lines counted."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            key = f"{entry.pop('level', '?')}: {entry.pop('event', '?')}"
            entry.pop("timestamp", None)
            detail = ", ".join(f"{k}={v}" for k, v in entry.items())[:160]
        except (ValueError, AttributeError):
            key, detail = line.strip()[:100], ""
        counts[key] += 1
        first.setdefault(key, detail)
    return "; ".join(
        f"{n} x {k}" + (f" (first: {first[k]})" if first[k] else "")
        for k, n in counts.most_common(5)
    )


def run_scenario(
    sc: Scenario,
    cfg: Config,
    loadgen: Path,
    log_dir: Path,
    skip_node: str | None,
    skip_redis: str | None = None,
) -> ScenarioResult:
    specs = [s for s in sc.specs if not (s.is_node and skip_node)]
    title = sc.title.format(**vars(cfg))
    left_out = {s.label: why for s in specs if s.requires is not None and (why := s.requires())}
    specs = [s for s in specs if s.label not in left_out]
    missing = sc.requires() if sc.requires is not None else None
    if missing:
        result = ScenarioResult(sc.name, title, [], sc.columns, sc.ratios)
        result.notes.append(f"Scenario skipped: {missing}.")
        print(f"[bench] NOTE: {sc.name} skipped: {missing}", file=sys.stderr, flush=True)
        return result
    if sc.needs_redis and skip_redis:
        result = ScenarioResult(sc.name, title, [], sc.columns, sc.ratios)
        result.notes.append(f"Scenario skipped: {skip_redis}, so there is no Redis backplane.")
        print(f"[bench] NOTE: {sc.name} skipped: {skip_redis}", file=sys.stderr, flush=True)
        return result
    result = ScenarioResult(sc.name, title, specs, sc.columns, sc.ratios)
    if skip_node and any(s.is_node for s in sc.specs):
        result.notes.append(f"Node servers skipped: {skip_node}.")
    for label, why in left_out.items():
        result.notes.append(f"{label} skipped: {why}.")
        print(f"[bench] NOTE: {label} skipped: {why}", file=sys.stderr, flush=True)
    if sc.warm_up_start:
        for spec in specs:
            errors = (BenchError, OSError, subprocess.SubprocessError)
            with contextlib.suppress(*errors), serve(spec, log_dir):
                pass
    for rnd in range(1, cfg.rounds + 1):
        for spec in specs:
            rr = RunResult(spec=spec, round=rnd)
            print(
                f"[bench] {sc.name} round {rnd}/{cfg.rounds}: {spec.label} ...",
                file=sys.stderr,
                flush=True,
            )
            running: Running | None = None
            try:
                with serve(spec, log_dir) as running:
                    rr.metrics = sc.measure(running, cfg, loadgen)
            except (BenchError, OSError, ValueError, subprocess.SubprocessError) as exc:
                rr.error = f"{type(exc).__name__}: {exc}"
                print(f"[bench]   failed: {rr.error}", file=sys.stderr, flush=True)
            if running is not None:
                rr.exit_code, rr.killed = running.exit_code, running.killed
                rr.log_summary = summarize_log(running.log_path)
            result.runs.append(rr)
    return result

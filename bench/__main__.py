"""``python -m bench``: build the C programs, run the scenarios, write the report and chart."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.catalog import scenarios
from bench.procs import (
    BENCH,
    REPO,
    BenchError,
    build_c,
    export_gserver,
    node_available,
    raise_nofile_limit,
    redis_available,
)
from bench.report import chart, markdown, stdout_summary
from bench.scenarios import Config, run_scenario

ALL = ("echo", "chat", "cluster", "idle", "startup", "churn", "kv", "ws-chat", "ws-idle", "tcp-web")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--rounds", type=int, help="rounds per server, medians taken (default 5)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--idle-conns", type=int, help="connections in the idle scenario (10000)")
    p.add_argument("--chat-clients", type=int, help="clients in the chat scenario (500)")
    p.add_argument("--chat-senders", type=int, help="senders in the chat scenario (20)")
    p.add_argument("--echo-conns", type=int, help="connections in the echo scenario (100)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="about 1 s per run, 1 round, 500 idle and 100 chat clients, 20,000 kv requests "
        "(for CI)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(ALL),
        help=f"comma-separated, from {', '.join(ALL)} (default: all)",
    )
    p.add_argument(
        "--gserver-ref",
        metavar="REF",
        help="run gserver/ as of this git commit (exported to a temp dir) instead "
        "of the working tree",
    )
    p.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="tcp-web also runs gserver/ as of this git commit (before the web port, say), "
        "to show that TCP clients do not pay for it",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=BENCH / "results",
        help="directory for <date>.md and <date>.png (default bench/results)",
    )
    return p.parse_args(argv)


def config(ns: argparse.Namespace) -> Config:
    base = (
        Config(
            rounds=1,
            duration=1.0,
            warmup=0.3,
            chat_clients=100,
            chat_senders=10,
            chat_quiet=0.5,
            idle_conns=500,
            idle_settle=0.3,
            kv_requests=20_000,
            quick=True,
        )
        if ns.quick
        else Config()
    )
    overrides = {
        k: v
        for k, v in {
            "rounds": ns.rounds,
            "duration": ns.duration,
            "warmup": ns.warmup,
            "idle_conns": ns.idle_conns,
            "chat_clients": ns.chat_clients,
            "chat_senders": ns.chat_senders,
            "echo_conns": ns.echo_conns,
        }.items()
        if v is not None
    }
    return Config(**{**vars(base), **overrides})


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through serve(): servers stop


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ns = parse_args(argv)
    cfg = config(ns)
    chosen = [s.strip() for s in ns.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ALL]
    if unknown or not chosen:
        print(
            f"unknown scenarios: {', '.join(unknown)} (choose from {', '.join(ALL)})",
            file=sys.stderr,
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    nofile = raise_nofile_limit()
    try:
        built = build_c()
    except BenchError as exc:
        print(f"[bench] {exc}", file=sys.stderr)
        return 1
    notes = []
    skip_node = node_available()
    if skip_node:
        msg = f"the Node side is skipped: {skip_node}; gserver and references still run."
        notes.append(msg)
        print(f"[bench] NOTE: {msg}", file=sys.stderr, flush=True)
    skip_redis = redis_available() if "cluster" in chosen else None
    if skip_redis:
        notes.append(f"the cluster scenario is skipped: {skip_redis}; the rest still runs.")
    if nofile < cfg.idle_conns + 1000 and "idle" in chosen:
        notes.append(f"RLIMIT_NOFILE is {nofile}, below the idle scenario's needs.")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        logs, gserver_cwd, commit = Path(tmp) / "logs", REPO, None
        logs.mkdir()
        if ns.gserver_ref:
            gserver_cwd = Path(tmp) / "src"
            gserver_cwd.mkdir()
            try:
                commit = export_gserver(ns.gserver_ref, gserver_cwd)
            except BenchError as exc:
                print(f"[bench] {exc}", file=sys.stderr)
                return 1
        baseline_cwd = None
        if ns.baseline_ref and "tcp-web" in chosen:
            baseline_cwd = Path(tmp) / "baseline"
            baseline_cwd.mkdir()
            try:
                baseline = export_gserver(ns.baseline_ref, baseline_cwd)
            except BenchError as exc:
                print(f"[bench] {exc}", file=sys.stderr)
                return 1
            notes.append(f"tcp-web's baseline is gserver/ as of {baseline[:12]} (--baseline-ref).")
        defs = scenarios(gserver_cwd, baseline_cwd)
        for name in chosen:
            results.append(
                run_scenario(defs[name], cfg, built["loadgen"], logs, skip_node, skip_redis)
            )
    elapsed = time.monotonic() - t0
    out_dir: Path = ns.output
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%d")
    png = out_dir / f"{stem}.png"
    chart(results, png)
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results, cfg, started, elapsed, png.name, notes, commit))
    print(stdout_summary(results))
    print(f"\n[bench] wrote {md} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The WebSocket scenarios, and the TCP scenario that shows what the web port costs.

- ``ws-chat``: the chat workload (``loadgen chat --ws /ws``: clients named u0..uN, senders
  sending their next line once the previous came back) against gserver chat on its web
  port, against the seed's chat over Node's ``ws`` package (bench/node_ws, installed with
  ``npm ci`` from the committed lockfile; left out with a note where that fails), and
  against gserver chat over TCP for the cost of WebSocket itself.
- ``ws-idle``: idle connections past the greeting, over TCP and over WebSocket (gserver
  basic): memory per connection.
- ``tcp-web``: the TCP chat workload with the web port off, with it on (its own port,
  unused), and, given ``--baseline-ref``, gserver as of that commit (before the web port
  existed, say): TCP clients must not pay for browsers.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from bench.procs import BENCH, HOST, ServerSpec, gserver

if TYPE_CHECKING:
    from bench.scenarios import Scenario

NODE_WS = BENCH / "node_ws"
WS_PATH = "/ws"
# What loadgen's readiness probe sends to a WebSocket server: the upgrade request; the
# greeting then arrives as the payload of the first frame, after the 101's headers.
UPGRADE = (
    f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
NPM_TIMEOUT = 300.0


@functools.cache
def node_ws_available() -> str | None:
    """Why bench/node_ws cannot run, or None; runs ``npm ci`` (the committed lockfile)
    once where its ``ws`` package is not installed yet."""
    if shutil.which("node") is None:
        return "`node` is not on PATH"
    if (NODE_WS / "node_modules" / "ws" / "package.json").is_file():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "`npm` is not on PATH to install bench/node_ws's `ws` package"
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    try:
        result = subprocess.run(
            cmd, cwd=NODE_WS, capture_output=True, text=True, timeout=NPM_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`npm ci` in bench/node_ws failed: {exc}"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return f"`npm ci` in bench/node_ws exited {result.returncode}: {' / '.join(tail)}"
    return None


def gserver_ws(mode: str, *extra: str, cwd: Path) -> ServerSpec:
    """gserver whose clients come over WebSocket: the web port is the measured port; TCP
    listens on a port of its own (0: any), so that no client waits for a sniff."""
    spec = gserver(mode, "--port", "0", "--web-port", "{port}", *extra, cwd=cwd)
    greeting = b"username: " if mode == "chat" else b"Welcome"
    suffix = "".join(f" {x}" for x in extra)
    return dataclasses.replace(
        spec,
        key=f"gserver-ws-{mode}",
        label=f"gserver {mode} over WebSocket (--web-port){suffix}",
        greeting_end=greeting,
        probe=UPGRADE,
        ws_path=WS_PATH,
    )


NODE_WS_CHAT = ServerSpec(
    key="node-ws-chat",
    label="node chat-ws.js (ws package)",
    argv=("node", "chat-ws.js"),
    greeting_end=b"username: ",
    env=(("PORT", "{port}"), ("HOST", HOST), ("QUIET", "1")),
    cwd=NODE_WS,
    probe=UPGRADE,
    ws_path=WS_PATH,
    requires=node_ws_available,
)


def baseline_missing(baseline_cwd: Path | None) -> str | None:
    if baseline_cwd is None:
        return "no --baseline-ref given"
    return None


def ws_scenarios(gserver_cwd: Path, baseline_cwd: Path | None = None) -> dict[str, Scenario]:
    from bench.scenarios import Column, Ratio, Scenario, measure_chat, measure_idle

    us = "{:,.0f}"
    chat_cols = [
        Column("deliveries_per_sec", "deliveries/s"),
        Column("p50_us", "p50 µs", us),
        Column("p99_us", "p99 µs", us),
        Column("messages_sent", "messages sent"),
        Column("lost", "lost"),
        Column("seq_gaps", "seq gaps"),
        Column("errors", "errors"),
        Column("setup_secs", "ramp s", "{:,.2f}"),
        Column("server_cpu_pct", "server CPU %"),
    ]
    tcp_chat = gserver("chat", cwd=gserver_cwd)
    web_on = dataclasses.replace(
        gserver("chat", "--web-port", "0", cwd=gserver_cwd),
        key="gserver-chat-web-on",
        label="gserver chat, TCP clients, web port on (--web-port 0: its own, unused)",
    )
    baseline = dataclasses.replace(
        gserver("chat", cwd=baseline_cwd or gserver_cwd),
        key="gserver-chat-baseline",
        label="gserver chat, TCP clients, at --baseline-ref",
        requires=functools.partial(baseline_missing, baseline_cwd),
    )
    return {
        "ws-chat": Scenario(
            "ws-chat",
            "WebSocket chat: {chat_clients} clients, {chat_senders} senders, each sending its "
            "next line once the previous came back (one text message per line)",
            [gserver_ws("chat", cwd=gserver_cwd), NODE_WS_CHAT, tcp_chat],
            measure_chat,
            chat_cols,
            [
                Ratio(
                    "ws chat: deliveries/s",
                    "gserver-ws-chat",
                    "node-ws-chat",
                    "deliveries_per_sec",
                    "higher",
                ),
                Ratio("ws chat: p99 latency", "gserver-ws-chat", "node-ws-chat", "p99_us", "lower"),
                Ratio(
                    "gserver chat, WebSocket / TCP: deliveries/s",
                    "gserver-ws-chat",
                    "gserver-chat",
                    "deliveries_per_sec",
                    "higher",
                    "WebSocket",
                ),
            ],
        ),
        "ws-idle": Scenario(
            "ws-idle",
            "Idle WebSocket clients: {idle_conns} connections held past the greeting (basic "
            "mode), over TCP and over WebSocket",
            [
                gserver("basic", "--max-clients", "20000", cwd=gserver_cwd),
                gserver_ws("basic", "--max-clients", "20000", cwd=gserver_cwd),
            ],
            measure_idle,
            [
                Column("conns_ready", "held"),
                Column("rss_before_mib", "RSS before MiB", "{:,.1f}"),
                Column("rss_after_mib", "RSS after MiB", "{:,.1f}"),
                Column("bytes_per_conn", "bytes/conn"),
                Column("new_client_greeting_ms", "new client greeting ms", "{:,.2f}"),
                Column("setup_secs", "ramp s", "{:,.2f}"),
                Column("errors", "errors"),
            ],
            [
                Ratio(
                    "idle: bytes per connection, WebSocket / TCP",
                    "gserver-ws-basic",
                    "gserver-basic",
                    "bytes_per_conn",
                    "lower",
                    "WebSocket",
                ),
            ],
        ),
        "tcp-web": Scenario(
            "tcp-web",
            "TCP chat with the web port off and on: {chat_clients} clients, {chat_senders} "
            "senders (the chat workload)",
            [tcp_chat, web_on, baseline],
            measure_chat,
            chat_cols,
            [
                Ratio(
                    "TCP chat, web port on / off: deliveries/s",
                    "gserver-chat-web-on",
                    "gserver-chat",
                    "deliveries_per_sec",
                    "higher",
                    "web port on",
                ),
                Ratio(
                    "TCP chat, web port on / off: p99 latency",
                    "gserver-chat-web-on",
                    "gserver-chat",
                    "p99_us",
                    "lower",
                    "web port on",
                ),
                Ratio(
                    "TCP chat, this tree / --baseline-ref: deliveries/s",
                    "gserver-chat",
                    "gserver-chat-baseline",
                    "deliveries_per_sec",
                    "higher",
                    "this tree",
                ),
                Ratio(
                    "TCP chat, this tree / --baseline-ref: p99 latency",
                    "gserver-chat",
                    "gserver-chat-baseline",
                    "p99_us",
                    "lower",
                    "this tree",
                ),
            ],
        ),
    }

"""``python -m gserver``: flags -> Settings -> run.  Exit status 0 after a graceful stop,
1 when the server cannot start (port in use) or is forced down, 2 for a bad setting."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gserver import __version__
from gserver.arguments import OneLineParser
from gserver.listener import StartError
from gserver.logs import configure, get_logger
from gserver.modes import Mode, resolve
from gserver.server import Companion, Server
from gserver.settings import (
    DEFAULT_CONFIG,
    FIELDS,
    Settings,
    SettingsError,
    environment_warnings,
    load,
    setting_help,
    setting_metavar,
    setting_type,
)
from gserver.workers import Master

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_SETTING = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gserver",
        description="A line-based TCP server on gevent: basic, echo, chat and inspect modes.",
        epilog=(
            "Every setting can also be given in the TOML file (key = setting name) or as an "
            "environment variable GSERVER_<SETTING> (PORT too, as Procfile platforms set it). "
            "Precedence: defaults < file < environment < flags."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML settings file (default: {DEFAULT_CONFIG}, read only where it exists)",
    )
    parser.add_argument("--version", action="version", version=f"gserver {__version__}")
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = spec.default
        help_text = setting_help(name) + ("" if default is None else f" (default: {default})")
        if setting_type(name) is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                metavar=setting_metavar(name),
                default=argparse.SUPPRESS,
                help=help_text,
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in FIELDS}
    # A misspelt GSERVER_* variable would be ignored in silence: say so, and start anyway.
    for warning in environment_warnings(os.environ):
        print(f"gserver: warning: {warning}", file=sys.stderr)
    try:
        settings = load(flags, os.environ, Path(args.config) if args.config else None)
        mode = resolve(settings)
        configure(settings.log_format, settings.log_level)
        # Built here even with workers, so that bad TLS files stop the start at once.
        server = compose(settings, mode)
    except SettingsError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if settings.reload:
        from gserver.reload import supervise  # watchfiles only when asked for

        return supervise(settings, sys.argv[1:] if argv is None else list(argv))
    if settings.workers > 1:
        return run_workers(settings, mode)
    server.install_signal_handlers()
    try:
        server.start()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return finish(server, server.serve_forever())


def compose(settings: Settings, mode: Mode, worker_index: int | None = None) -> Server:
    """The one place that knows every part: the mode's handler, the cluster link, the
    metrics port, and the server that runs them.  Nothing here touches the network."""
    log = get_logger() if worker_index is None else get_logger(worker=worker_index, pid=os.getpid())
    link = None
    if settings.backplane:
        from gserver.backplane import Backplane  # imported only when a backplane is set

        link = Backplane(settings.backplane, settings.backplane_prefix, log)
    companions: list[Companion] = []
    if settings.metrics_port is not None:
        from gserver.metrics import MetricsPort  # prometheus_client only when asked for

        idle = settings.handshake_timeout or None  # what bounds an HTTP request here too
        port = MetricsPort(settings.metrics_host, settings.metrics_port, log, idle)
        companions.append(port)
    front = None
    if settings.web_port is not None:
        from gserver.web.transport import WebFront  # h11 and wsproto only when asked for

        shared = settings.web_port == settings.port
        web = WebFront(settings, log, own_listener=not shared)
        companions.append(web)
        front = web if shared else None
    return Server(
        mode.handler,
        settings,
        mode.on_start,
        front=front,
        worker_index=worker_index or 0,
        link=link,
        companions=companions,
        log=log,
    )


def finish(server: Server, status: int) -> int:
    """The process's exit after a graceful stop.  A handler that caught its kill and goes
    on must not keep the process alive (or print at interpreter exit): leave at once."""
    if server.connections:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def run_workers(settings: Settings, mode: Mode) -> int:
    """The master of ``--workers N``: one shared socket, N worker processes."""

    def run_worker(index: int, listener: socket.socket) -> int:
        configure(settings.log_format, settings.log_level)
        server = compose(settings, mode, worker_index=index)
        server.install_signal_handlers()
        try:
            server.start(listener)
        except StartError as exc:
            print(f"gserver: error: worker {index}: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        return finish(server, server.serve_forever())

    try:
        return Master(settings, run_worker).run()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED

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
from gserver.logs import configure
from gserver.modes import Mode, resolve
from gserver.server import Server, StartError
from gserver.settings import (
    DEFAULT_CONFIG,
    FIELDS,
    Settings,
    SettingsError,
    load,
    setting_help,
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
                metavar=setting_type(name).__name__.upper(),
                default=argparse.SUPPRESS,
                help=help_text,
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in FIELDS}
    try:
        settings = load(flags, os.environ, Path(args.config) if args.config else None)
        mode = resolve(settings)
        configure(settings.log_format, settings.log_level)
        # Built here even with workers, so that bad TLS files stop the start at once.
        server = Server(mode.handler, settings, mode.on_start)
    except SettingsError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if settings.workers > 1:
        return run_workers(settings, mode)
    server.install_signal_handlers()
    try:
        server.start()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return server.serve_forever()


def run_workers(settings: Settings, mode: Mode) -> int:
    """The master of ``--workers N``: one shared socket, N worker processes."""

    def run_worker(index: int, listener: socket.socket) -> int:
        configure(settings.log_format, settings.log_level)
        server = Server(mode.handler, settings, mode.on_start, worker_index=index)
        server.log = server.log.bind(worker=index, pid=os.getpid())
        server.install_signal_handlers()
        try:
            server.start(listener)
        except StartError as exc:
            print(f"gserver: error: worker {index}: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        return server.serve_forever()

    try:
        return Master(settings, run_worker).run()
    except StartError as exc:
        print(f"gserver: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED

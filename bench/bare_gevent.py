"""A bare gevent StreamServer (no monkey patching): welcome, then ``Echo: `` + every chunk
via recv/sendall. The floor for gevent's cost per connection, against which gserver's is measured.

    python bench/bare_gevent.py --port P [--host 127.0.0.1]

SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import resource
import signal
from typing import Any

import gevent
from gevent.server import StreamServer

WELCOME = b"Welcome to TCP Server!\n"


def handle(sock: Any, _address: Any) -> None:
    try:
        sock.sendall(WELCOME)
        while data := sock.recv(65536):
            sock.sendall(b"Echo: " + data)
    except OSError:
        pass
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = StreamServer((args.host, args.port), handle, backlog=1024)
    gevent.signal_handler(signal.SIGTERM, server.stop, 1)
    server.serve_forever()


if __name__ == "__main__":
    main()

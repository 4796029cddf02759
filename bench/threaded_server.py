"""The seed's "Java model": socketserver.ThreadingTCPServer, one OS thread per connection,
basic mode wire text (welcome, then ``Echo: `` + every chunk received).

    python bench/threaded_server.py --port P [--host 127.0.0.1]

SIGTERM stops it (the default action); it is a reference for the benchmark only.
"""

from __future__ import annotations

import argparse
import resource
import socketserver

WELCOME = b"Welcome to TCP Server!\n"


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.sendall(WELCOME)
        while data := sock.recv(65536):
            sock.sendall(b"Echo: " + data)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with Server((args.host, args.port), EchoHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()

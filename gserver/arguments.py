"""Command-line parsing shared by ``python -m gserver`` and ``python -m gserver.client``.

Kept apart from :mod:`gserver.cli` and free of heavy imports: the client uses it too, and
must not pay for gevent, structlog or the server just to parse its flags.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

# Exit status for a bad flag or setting, the same in the server and the client.
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

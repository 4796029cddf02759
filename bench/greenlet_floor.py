"""The floor under any greenlet-per-client server: what a parked greenlet alone costs.

``python bench/greenlet_floor.py --count 10000`` spawns that many raw greenlets, each
parked on gevent's hub a few frames deep (as a client's greenlet is, waiting to read), and
prints one JSON object: resident memory before and after, and the bytes per greenlet.
Nothing else is allocated per greenlet: no socket, watcher or object of the server's.
The idle scenario subtracts this from gserver's bytes per connection ("gserver's share").
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gevent

from gserver.testing.probes import rss_bytes

DEPTH = 6  # Python frames under the switch, about as many as under a client's read


def _park(depth: int) -> None:
    if depth:
        _park(depth - 1)
        return
    gevent.get_hub().switch()  # parked for good, as a client's greenlet between reads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=10000)
    ns = p.parse_args()
    gevent.sleep(0)
    time.sleep(0.1)
    before = rss_bytes(os.getpid())
    # Held here, as a client's read watcher holds its greenlet: a parked greenlet that
    # nothing refers to is collected (and unwound) at once.
    parked = [gevent.spawn_raw(_park, DEPTH) for _ in range(ns.count)]
    gevent.sleep(0)  # every greenlet runs once and parks
    time.sleep(0.2)
    after = rss_bytes(os.getpid())
    print(
        json.dumps(
            {
                "count": ns.count,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_greenlet": (after - before) / ns.count,
                "saved_stack_bytes": sum(g._stack_saved for g in parked) / ns.count,
            }
        )
    )


if __name__ == "__main__":
    main()

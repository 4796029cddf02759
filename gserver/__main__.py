"""``python -m gserver``.  Monkey-patching comes first, before anything else opens a socket,
so that libraries such as redis-py cooperate with the event loop."""

from gevent import monkey

monkey.patch_all()

from gserver.cli import main  # noqa: E402


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()

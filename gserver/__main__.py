"""``python -m gserver``.  Monkey-patching comes before anything else opens a socket, so
that libraries such as redis-py cooperate with the event loop: :func:`gserver.cli.main`
does it as soon as the settings are known, where they need it (a handler of your own,
the backplane, the metrics or web port, workers; the built-in modes alone use gevent's
own calls and need none of it).  Everything else is imported once it is known to be
needed, so that a plain start is quick."""

from gserver.cli import main


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()

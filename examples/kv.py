"""A key-value server speaking the Redis protocol (RESP2), in blocking style on gserver:
``python -m gserver --handler examples.kv:handle --port 6379`` (or ``python -m examples.kv``).

PING ECHO SET (EX/PX) GET DEL EXISTS INCR(BY) EXPIRE TTL KEYS FLUSHALL QUIT, pipelined or
not, as RESP arrays or inline commands, with Redis's own error replies; HELLO 3 is refused,
so that clients trying RESP3 fall back to RESP2.  The key space is this process's, shared
by all its clients (with --workers, each worker has its own).
"""

from __future__ import annotations

import fnmatch
import re
import sys
import time

from gserver import Connection, IncompleteRead, LimitExceeded

MAX_BULK = 512 * 1024 * 1024  # Redis's proto-max-bulk-len
MAX_LINE = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE: the longest line of the protocol
MAX_ARGS = N = 1024 * 1024
INTEGER = re.compile(rb"-?(0|[1-9][0-9]*)")  # as Redis's string2ll: no "+", no spaces
ARITY = {  # (fewest, most) arguments, the command's name included
    b"get": (2, 2), b"set": (3, N), b"ping": (1, 2), b"echo": (2, 2), b"del": (2, N),
    b"exists": (2, N), b"incr": (2, 2), b"incrby": (3, 3), b"expire": (3, 3), b"ttl": (2, 2),
    b"keys": (2, 2), b"flushall": (1, N), b"quit": (1, N), b"hello": (1, N),
}  # fmt: skip

data: dict[bytes, bytes] = {}
expires: dict[bytes, float] = {}  # key -> its time.monotonic() deadline


class ProtocolError(Exception):
    """The client broke the protocol: answered once, then closed, as Redis does."""


class CommandError(Exception):
    """A command's error reply, such as ``ERR syntax error``."""


def handle(conn: Connection) -> None:
    while True:
        try:
            args = read_command(conn)
        except IncompleteRead:  # the client went, between commands or in the middle of one
            return
        except (ProtocolError, LimitExceeded) as exc:  # a line over MAX_LINE is the latter
            reason = str(exc) if isinstance(exc, ProtocolError) else "too big inline request"
            conn.send(b"-ERR Protocol error: %s\r\n" % reason.encode())
            return conn.close()
        if not args:
            continue
        try:
            conn.send(execute(args))
        except CommandError as exc:
            conn.send(b"-%s\r\n" % str(exc).encode())
        if args[0].lower() == b"quit":
            return conn.close()


# Redis keeps idle clients (pools hold connections for hours): no idle timeout by default;
# and it closes without a word at shutdown (plain text would corrupt a client's RESP).
handle.default_idle_timeout = 0.0  # type: ignore[attr-defined]
handle.shutdown_notice = None  # type: ignore[attr-defined]


def read_command(conn: Connection) -> list[bytes]:
    """One command: a RESP array of bulk strings, or an inline line of words."""
    read_line, read_exactly = conn.read_line, conn.read_exactly
    line = read_line(MAX_LINE)
    if line[:1] != b"*":
        return line.split()
    args = []
    for _ in range(length(line, MAX_ARGS, "multibulk length")):
        line = read_line(MAX_LINE)
        if line[:1] != b"$":
            raise ProtocolError(f"expected '$', got '{line[:1].decode(errors='replace')}'")
        size = length(line, MAX_BULK, "bulk length")  # refused before anything is allocated
        args.append(read_exactly(size + 2)[:-2])  # the bytes, then their \r\n
    return args


def length(line: bytes, most: int, what: str) -> int:
    digits = line[1:]  # as Redis's string2ll: no sign, no space, no leading zero
    if not digits.isdigit() or int(digits) > most or (digits[0] == 48 and len(digits) > 1):
        raise ProtocolError(f"invalid {what}")
    return int(digits)


def execute(args: list[bytes]) -> bytes:
    name, key = args[0].lower(), args[1] if len(args) > 1 else b""
    fewest, most = ARITY.get(name, (0, -1))
    if most < 0:
        shown = "".join(f"'{a[:128].decode(errors='replace')}' " for a in args[1:])[:128]
        command = args[0][:128].decode(errors="replace")
        raise CommandError(f"ERR unknown command '{command}', with args beginning with: {shown}")
    if not fewest <= len(args) <= most:
        raise CommandError(f"ERR wrong number of arguments for '{name.decode()}' command")
    match name:
        case b"get":
            return bulk(data[key] if alive(key) else None)
        case b"set":
            options = [a.upper() for a in args[3:]]
            if options and (len(options) != 2 or options[0] not in (b"EX", b"PX")):
                raise CommandError("ERR syntax error")
            if options and (ttl := integer(options[1])) <= 0:
                raise CommandError("ERR invalid expire time in 'set' command")
            data[key] = args[2]
            expires.pop(key, None)
            if options:
                expires[key] = time.monotonic() + (ttl if options[0] == b"EX" else ttl / 1000)
            return b"+OK\r\n"
        case b"ping":
            return bulk(key) if len(args) == 2 else b"+PONG\r\n"
        case b"echo":
            return bulk(key)
        case b"del":
            return b":%d\r\n" % forget(args[1:])
        case b"exists":
            return b":%d\r\n" % sum(alive(k) for k in args[1:])
        case b"incr" | b"incrby":  # redis-py's incr() sends INCRBY key 1
            step = integer(args[2]) if name == b"incrby" else 1
            value = (integer(data[key]) if alive(key) else 0) + step
            if not -(2**63) <= value < 2**63:
                raise CommandError("ERR increment or decrement would overflow")
            data[key] = b"%d" % value
            return b":%d\r\n" % value
        case b"expire":
            if (seconds := integer(args[2])) <= 0 or not alive(key):  # past: deleted at once
                return b":%d\r\n" % forget([key])
            expires[key] = time.monotonic() + seconds
            return b":1\r\n"
        case b"ttl":
            if not alive(key):
                return b":-2\r\n"
            return b":%d\r\n" % (round(expires[key] - time.monotonic()) if key in expires else -1)
        case b"keys":
            pattern = glob(key)
            return array([k for k in list(data) if pattern.match(k.decode("latin-1")) and alive(k)])
        case b"flushall":
            data.clear()
            expires.clear()
        case b"hello":
            if len(args) > 1 and key != b"2":  # RESP2 only: a RESP3 client must fall back
                raise CommandError("NOPROTO unsupported protocol version")
            return array([b"server", b"gserver-kv", b"proto", b"2", b"mode", b"standalone"])
    return b"+OK\r\n"  # flushall, quit


def alive(key: bytes) -> bool:
    """Whether ``key`` exists; an expired one is deleted on the way (lazy expiry)."""
    deadline = expires.get(key)
    if deadline is not None and deadline <= time.monotonic():
        del data[key], expires[key]
    return key in data


def forget(keys: list[bytes]) -> int:
    gone = [k for k in dict.fromkeys(keys) if alive(k)]  # DEL a a deletes one key
    for k in gone:
        del data[k]
        expires.pop(k, None)
    return len(gone)


def bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


def array(values: list[bytes]) -> bytes:
    return b"*%d\r\n%s" % (len(values), b"".join(bulk(v) for v in values))


def integer(text: bytes) -> int:
    if not INTEGER.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
        raise CommandError("ERR value is not an integer or out of range")
    return int(text)


def glob(pattern: bytes) -> re.Pattern[str]:
    """Redis's glob in fnmatch's words: ``[^a]`` is ``[!a]`` there, ``\\*`` is ``[*]``."""

    def word(m: re.Match[str]) -> str:
        return "[!" if m[0] == "[^" else f"[{m[1]}]" if m[1] in "*?[" else m[1]

    text = re.sub(r"\[\^|\\(.)", word, pattern.decode("latin-1"), flags=re.DOTALL)
    return re.compile(fnmatch.translate(text))  # matched against keys decoded as latin-1


if __name__ == "__main__":
    from gserver import Server, Settings, configure_logging

    configure_logging()
    # Loopback only, as Redis binds by default: this server has no password.
    settings = Settings(host="127.0.0.1", port=int(sys.argv[1]) if sys.argv[1:] else 6379)
    raise SystemExit(Server(handle, settings).serve_forever())

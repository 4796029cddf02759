"""An SMTP sink: accepts every message and keeps it, for testing code that sends mail.

    python -m gserver --handler examples.smtp_sink:handle --port 2525
    SMTP_SINK_DIR=mail python -m gserver --handler examples.smtp_sink:handle --port 2525

Each message is logged (``mail_received``, with sender, recipients, size and subject) and,
where ``SMTP_SINK_DIR`` is set, written there as ``<time>-<pid>-<n>.eml``.  It speaks as much of
RFC 5321 as mail libraries use (smtplib, swaks, Django's and Rails' mailers): EHLO/HELO,
MAIL FROM (with SIZE), RCPT TO, DATA, RSET, NOOP, VRFY, QUIT; 8BITMIME and SMTPUTF8 are
taken as they come.  No relaying, no authentication, no TLS: it is a sink for development.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from gserver import Connection, IncompleteRead, LimitExceeded

HOST = platform.node() or "localhost"
MAX_MESSAGE = int(os.environ.get("SMTP_SINK_MAX_BYTES", 10 * 1024 * 1024))
MAX_RECIPIENTS = 100
MAX_COMMAND = 2048  # RFC 5321 allows 512 octets, and more with extensions such as SIZE
ADDRESS = re.compile(rb"(FROM|TO):\s*<([^<>]*)>(.*)", re.IGNORECASE)
SIZE = re.compile(rb"\bSIZE=(\d+)", re.IGNORECASE)
numbers = itertools.count(1)  # with the time and the process id, a unique name


def handle(conn: Connection) -> None:
    conn.send(f"220 {HOST} ESMTP gserver sink\r\n")
    sender: bytes | None = None  # per client: the transaction being built
    recipients: list[bytes] = []
    while True:
        try:
            line = conn.read_line(MAX_COMMAND)
        except LimitExceeded:  # that line is skipped: the conversation goes on
            conn.send(b"500 5.5.2 Line too long\r\n")
            continue
        except IncompleteRead:
            return
        verb, _, rest = line.partition(b" ")
        match verb.upper(), ADDRESS.fullmatch(rest.strip()):
            case (b"EHLO", _):
                sender, recipients = None, []
                conn.send(
                    f"250-{HOST}\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                )
            case (b"HELO", _):
                sender, recipients = None, []
                conn.send(f"250 {HOST}\r\n")
            case (b"MAIL", address) if address and address[1].upper() == b"FROM":
                size = SIZE.search(address[3])
                if sender is not None:
                    conn.send(b"503 5.5.1 Error: nested MAIL command\r\n")
                elif size and int(size[1]) > MAX_MESSAGE:
                    conn.send(b"552 5.3.4 Message size exceeds fixed limit\r\n")
                else:
                    sender, recipients = address[2], []
                    conn.send(b"250 2.1.0 Ok\r\n")
            case (b"RCPT", address) if address and address[1].upper() == b"TO":
                if sender is None:
                    conn.send(b"503 5.5.1 Error: need MAIL command\r\n")
                elif len(recipients) >= MAX_RECIPIENTS:
                    conn.send(b"452 4.5.3 Error: too many recipients\r\n")
                else:
                    recipients.append(address[2])
                    conn.send(b"250 2.1.5 Ok\r\n")
            case (b"MAIL" | b"RCPT", _):
                conn.send(b"501 5.5.4 Syntax: MAIL FROM:<address> or RCPT TO:<address>\r\n")
            case (b"DATA", _) if sender is None or not recipients:
                conn.send(b"503 5.5.1 Error: need RCPT command\r\n")
            case (b"DATA", _):
                conn.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                try:
                    message = read_message(conn)
                except LimitExceeded:  # a client that did not heed SIZE: the rest is not read
                    conn.send(b"552 5.3.4 Message size exceeds fixed limit\r\n")
                    return conn.close()
                except IncompleteRead:
                    return
                number = keep(conn, sender or b"", recipients, message)
                conn.send(f"250 2.0.0 Ok: queued as {number}\r\n")
                sender, recipients = None, []
            case (b"RSET", _):
                sender, recipients = None, []
                conn.send(b"250 2.0.0 Ok\r\n")
            case (b"NOOP", _):
                conn.send(b"250 2.0.0 Ok\r\n")
            case (b"VRFY", _):
                conn.send(b"252 2.0.0 Cannot VRFY user, but will accept message\r\n")
            case (b"QUIT", _):
                conn.send(b"221 2.0.0 Bye\r\n")
                return conn.close()
            case _:
                conn.send(b"502 5.5.2 Error: command not recognized\r\n")


# SMTP's own words for a server that goes away (RFC 5321: 421 closes the channel).
handle.shutdown_notice = b"421 4.3.2 Service shutting down\r\n"  # type: ignore[attr-defined]
handle.timeout_notice = b"421 4.4.2 Idle too long, closing\r\n"  # type: ignore[attr-defined]


def read_message(conn: Connection) -> bytes:
    """What follows DATA, up to the line holding a lone ".", with dot-stuffing undone.

    Each read takes up to the next ".\\r\\n"; it ends the message where it starts a line
    (the message may be empty, so the lone dot may come first)."""
    parts: list[bytes] = []
    size = 0
    while True:
        if size > MAX_MESSAGE:
            raise LimitExceeded(MAX_MESSAGE)
        part = conn.read_until(b".\r\n", limit=MAX_MESSAGE - size)
        parts.append(part)
        if not part or part.endswith(b"\r\n"):
            break
        parts.append(b".\r\n")  # a line that merely ends with a dot
        size += len(part) + 3
    return re.sub(rb"(?m)^\.", b"", b"".join(parts))  # "..x" was sent for ".x"


def keep(conn: Connection, sender: bytes, recipients: list[bytes], message: bytes) -> str:
    number = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(numbers)}"
    subject = BytesHeaderParser(policy=policy.default).parsebytes(message)["Subject"]
    conn.log.info(
        "mail_received",
        number=number,
        sender=sender.decode(errors="replace"),
        recipients=[r.decode(errors="replace") for r in recipients],
        bytes=len(message),
        subject=str(subject) if subject is not None else None,
    )
    if directory := os.environ.get("SMTP_SINK_DIR"):
        # A small local write: brief enough to do in the handler (see docs/handlers.md on
        # offloading slow work to gevent's threadpool).
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{number}.eml").write_bytes(message)
    return number

"""The chat state machine: name negotiation, then commands and messages.

A :class:`ChatSession` is one client's side of the conversation.  It knows no sockets:
it talks to its client through a :class:`Member` (anything with ``send`` and ``close``)
and to everyone else through a :class:`Room`, which decides who holds which name and
delivers text.  The server's room delivers to connections; tests use a room in memory.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from enum import Enum
from typing import Protocol

import precis_i18n

from gserver.protocol.text import sanitize

PROMPT = "Enter your username: "
MAX_NAME_CHARS = 32
INVALID_NAME = "Invalid username (1-32 printable characters, no spaces)"
HELP = (
    "Commands:\n"
    "/users - View user list\n"
    "/help - Show help\n"
    "/quit - Exit chat\n"
    "/msg NAME TEXT - Send TEXT to NAME alone\n"
    "/me ACTION - Tell everyone what you are doing\n"
    "/nick NAME - Change your name\n"
)
UNKNOWN_COMMAND = "Unknown command. Type /help for help\n"
MAX_REPLY_BYTES = 64 * 1024


class Member(Protocol):
    """One client as the room sees it."""

    def send(self, data: str | bytes) -> None: ...

    def close(self, reason: str) -> None: ...


class Room(Protocol):
    """Who is in the chat, under which names, and delivery to them."""

    def join(self, member: Member, name: str) -> bool:
        """Give ``member`` the name unless someone holds it (see :func:`name_key`)."""
        ...

    def rename(self, member: Member, new_name: str) -> bool: ...

    def leave(self, member: Member) -> None: ...

    def names(self) -> list[str]:
        """Names of everyone in the chat, in the order they joined."""
        ...

    def publish(self, text: str, exclude: Member | None = None) -> None:
        """Deliver ``text`` to every member with a name, except ``exclude``."""
        ...

    def send_to(self, name: str, text: str) -> str | None:
        """Deliver ``text`` to the holder of ``name``; return their name, or None if absent."""
        ...


# Names follow RFC 8265's UsernameCaseMapped profile (PRECIS): letters, digits, marks and
# printable ASCII; no spaces, controls, default-ignorable or format characters, symbols or
# punctuation beyond ASCII, and no compatibility forms but fullwidth and halfwidth ones, which
# it maps to their usual forms, as it maps letters to lower case.
_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
# What the profile lets through but draws nothing, or a blank cell, beside a Latin letter:
# the joiners it allows after a virama or between Arabic letters (default-ignorable, and
# removed from messages), the Khitan filler and script joiners (combining marks); and blanks
# it rejects today for reasons that are not about looks (Hangul fillers, braille blank, a
# null notehead).
_NOT_IN_NAMES = frozenset(
    "\u200c\u200d\u115f\u1160\u3164\uffa0\u2800\u2d7f"
    "\U0001107f\U00011a47\U00011a99\U00016fe4\U0001d159"
)


def name_is_valid(name: str) -> bool:
    """1-32 characters, not starting with ``/``, allowed by UsernameCaseMapped and visible."""
    return _username(name) is not None


def name_key(name: str) -> str:
    """The form in which two names count as the same.

    For a valid name: its UsernameCaseMapped form, casefolded (so that ``Straße`` and
    ``STRASSE`` collide too).  Anything else (a mistyped ``/msg`` target, a name that a node
    of an older release admitted) keeps the NFKC-and-casefold key of older releases.
    """
    if name.isascii():
        # For ASCII both keys are just lower case: most names need no cache lookup.
        return name.lower()
    if len(name) > MAX_NAME_CHARS:
        return unicodedata.normalize("NFKC", name).casefold()
    return _unicode_key(name)


# Enforcing the profile takes microseconds (it is pure Python), and the same few names are
# keyed again and again (every join, /msg and /users): remember the last few thousand.
@functools.lru_cache(maxsize=4096)
def _unicode_key(name: str) -> str:
    mapped = _username(name)
    if mapped is None:
        return unicodedata.normalize("NFKC", name).casefold()
    return unicodedata.normalize("NFC", mapped.casefold())


def _username(name: str) -> str | None:
    """The UsernameCaseMapped form of ``name``, or None if it is no valid name."""
    if (
        not 0 < len(name) <= MAX_NAME_CHARS
        or name.startswith("/")
        or not name.isprintable()  # which excludes every space but U+0020
        or " " in name
    ):
        return None
    if name.isascii():
        return name.lower()  # what the profile makes of printable ASCII without spaces
    return _unicode_username(name)


@functools.lru_cache(maxsize=4096)
def _unicode_username(name: str) -> str | None:
    # A name starts with a character of its own, not with a mark that would sit on whatever
    # is printed before it; then its first character is visible, as it is none of _NOT_IN_NAMES.
    if unicodedata.category(name[0]).startswith("M") or not _NOT_IN_NAMES.isdisjoint(name):
        return None
    try:
        return _USERNAME.enforce(name)
    except UnicodeError:  # what the profile disallows
        return None


def users_reply(names: list[str], max_bytes: int) -> str:
    """``Online users: alice, bob``, within ``max_bytes``: past it, as many names as fit
    and ``(and N more)``."""
    reply = f"Online users: {', '.join(names)}\n"
    if len(reply.encode()) <= max_bytes:
        return reply
    shown: list[str] = []
    size = len("Online users: , (and 0000000000 more)\n")
    for name in names:
        size += len(name.encode()) + 2
        if size > max_bytes:
            break
        shown.append(name)
    return f"Online users: {', '.join(shown)}, (and {len(names) - len(shown)} more)\n"


class State(Enum):
    AWAITING_NAME = "awaiting_name"
    CHATTING = "chatting"
    CLOSED = "closed"


class ChatSession:
    """One client's conversation: feed it lines with :meth:`receive`."""

    def __init__(
        self, room: Room, member: Member, max_reply_bytes: int = MAX_REPLY_BYTES
    ) -> None:
        self.room = room
        self.member = member
        # A reply of ours must never make its asker a slow consumer: /users is bounded.
        self.max_reply_bytes = max_reply_bytes
        self.name: str | None = None
        self.state = State.AWAITING_NAME
        self._commands: dict[str, Callable[[str], None]] = {
            "/users": self._users,
            "/help": self._help,
            "/quit": self._quit,
            "/msg": self._msg,
            "/me": self._me,
            "/nick": self._nick,
        }

    def start(self) -> None:
        self.member.send(PROMPT)

    def receive(self, line: str) -> None:
        """Act on one line from the client (without its line ending)."""
        if self.state is State.CLOSED:
            return
        # NUL never means anything here (telnet sends a bare CR as CR NUL).
        line = line.replace("\x00", "").strip()
        if self.state is State.AWAITING_NAME:
            self._choose_name(line)
            return
        if not line:
            return
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            action = self._commands.get(command)
            if action is None:
                self.member.send(UNKNOWN_COMMAND)
            else:
                action(argument.strip())
            return
        text = sanitize(line).strip()  # spaces that invisible characters hid at either end go too
        if text:
            self.room.publish(f"[{self.name}]: {text}\n")

    def end(self, announce: bool = True) -> None:
        """The client has gone, for whatever reason: leave the room exactly once."""
        if self.state is State.CLOSED:
            return
        was_named = self.state is State.CHATTING
        self.state = State.CLOSED
        if was_named:
            self.room.leave(self.member)
            if announce:
                self.room.publish(f"{self.name} left the chat\n", exclude=self.member)

    def _choose_name(self, name: str) -> None:
        if not name:
            self.member.send(PROMPT)
        elif name == "/quit":
            self._quit("")
        elif not name_is_valid(name):
            self.member.send(f"{INVALID_NAME}, try again: ")
        elif not self.room.join(self.member, name):
            self.member.send(f"Username {name} is taken, choose another: ")
        else:
            self.name = name
            self.state = State.CHATTING
            self.member.send(f"Welcome {name}!\n")
            self.room.publish(f"{name} joined the chat\n", exclude=self.member)

    def _users(self, _argument: str) -> None:
        self.member.send(users_reply(self.room.names(), self.max_reply_bytes))

    def _help(self, _argument: str) -> None:
        self.member.send(HELP)

    def _quit(self, _argument: str) -> None:
        self.end()
        self.member.close("quit")

    def _msg(self, argument: str) -> None:
        target, _, text = argument.partition(" ")
        text = sanitize(text).strip()
        if not target or not text:
            self.member.send("Usage: /msg NAME TEXT\n")
            return
        delivered_to = self.room.send_to(target, f"[{self.name} -> you]: {text}\n")
        if delivered_to is None:
            self.member.send(f"No such user: {sanitize(target)}\n")
        else:
            self.member.send(f"[you -> {delivered_to}]: {text}\n")

    def _me(self, argument: str) -> None:
        action = sanitize(argument).strip()
        if not action:
            self.member.send("Usage: /me ACTION\n")
            return
        self.room.publish(f"* {self.name} {action}\n")

    def _nick(self, new_name: str) -> None:
        old_name = self.name
        if not new_name:
            self.member.send("Usage: /nick NAME\n")
        elif not name_is_valid(new_name):
            self.member.send(f"{INVALID_NAME}\n")
        elif new_name == old_name:
            self.member.send(f"You are already known as {new_name}\n")
        elif not self.room.rename(self.member, new_name):
            self.member.send(f"Username {new_name} is taken\n")
        else:
            self.name = new_name
            self.member.send(f"You are now known as {new_name}\n")
            self.room.publish(f"{old_name} is now known as {new_name}\n", exclude=self.member)

"""The chat state machine: name negotiation, then rooms, commands and messages.

A :class:`ChatSession` is one client's side of the conversation.  It knows no sockets and
no clock: it talks to its client through a :class:`Member` (anything with ``send`` and
``close``) and to everyone else through a :class:`Chat`, which decides who holds which
name, who is in which room, and delivers text.  The server's chat (``registry.ChatRoom``)
delivers to connections, across a cluster when it has a link; tests use it in memory.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from gserver.protocol.rooms import INVALID_ROOM, room_display
from gserver.protocol.text import iso_utc_ms, loggable, sanitize

PROMPT = "Enter your username: "
MAX_NAME_CHARS = 32
MAX_TOPIC_CHARS = 200
INVALID_NAME = "Invalid username (1-32 printable characters, no spaces)"
HELP = (
    "Commands:\n"
    "/users - View user list\n"
    "/help - Show help\n"
    "/quit - Exit chat\n"
    "/msg NAME TEXT - Send TEXT to NAME alone\n"
    "/me ACTION - Tell your room what you are doing\n"
    "/nick NAME - Change your name\n"
    "/join #ROOM - Go to ROOM (made if new)\n"
    "/rooms - List the rooms\n"
    "/topic [TEXT] - Show or set your room's topic\n"
    "/oper PASSWORD - Become an operator\n"
    "/kick NAME [REASON] - Disconnect NAME (operators)\n"
    "/ban NAME [MINUTES] [REASON] - Kick NAME, refuse their address (operators)\n"
    "/unban ADDRESS - Lift a ban (operators)\n"
    "/bans - List the bans (operators)\n"
)
UNKNOWN_COMMAND = "Unknown command. Type /help for help\n"
PERMISSION_DENIED = "Permission denied\n"
MAX_REPLY_BYTES = 64 * 1024
DEFAULT_BAN_MINUTES = 60
WRONG_PASSWORDS_ALLOWED = 2  # the third wrong /oper in one connection closes it


class Member(Protocol):
    """One client as the chat sees it."""

    def send(self, data: str | bytes) -> None: ...

    def close(self, reason: str) -> None: ...


class Entered(Enum):
    JOINED = "joined"
    ALREADY_THERE = "already there"
    TOO_MANY_ROOMS = "too many rooms"


@dataclass(frozen=True)
class Removal:
    """A kick (or, with ``ban_minutes``, a ban) by operator ``by``, with its reason."""

    by: str
    reason: str = ""
    ban_minutes: int | None = None

    @property
    def _done(self) -> str:
        return "kicked" if self.ban_minutes is None else "banned"

    def _why(self) -> str:
        return f": {self.reason}" if self.reason else ""

    def to_them(self) -> str:
        return f"You were {self._done} by {self.by}{self._why()}\n"

    def to_room(self, name: str) -> str:
        """To everyone else in the room of ``name``, who was removed."""
        return f"{name} was {self._done} by {self.by}{self._why()}\n"


class Chat(Protocol):
    """Who is in the chat, under which names, in which rooms, and delivery to them.

    A room is named as written with its ``#`` (``#lobby``); the chat keeps the spelling it
    was first written with, and tells two spellings of one room apart by rooms.room_key."""

    def join(self, member: Member, name: str, address: str) -> bool:
        """Give ``member`` the name unless someone holds it (see :func:`name_key`), and put
        them in the default room, last in its arrival order."""
        ...

    def rename(self, member: Member, new_name: str) -> bool: ...

    def leave(self, member: Member) -> bool:
        """``member`` has gone; False when they were removed already (kicked)."""
        ...

    def room_of(self, member: Member) -> str:
        """The room ``member`` is in, as first written."""
        ...

    def enter(self, member: Member, room: str) -> tuple[Entered, str]:
        """Move ``member`` to ``room`` (made if new); the room as first written."""
        ...

    def listing(self) -> list[tuple[str, int]]:
        """Every room with anyone in it, and the default room always: (room, people)."""
        ...

    def names(self, room: str) -> list[str]:
        """Who is in ``room``, in the order they arrived, operators marked ``@``."""
        ...

    def topic(self, room: str) -> str | None: ...

    def set_topic(self, room: str, text: str) -> None: ...

    def history(self, room: str) -> list[tuple[int, str]]:
        """The room's last lines, oldest first: (milliseconds since the epoch, line)."""
        ...

    def publish(
        self, room: str, text: str, exclude: Member | None = None, keep: bool = False
    ) -> None:
        """Deliver ``text`` to everyone in ``room`` but ``exclude``; ``keep``: a line for
        the room's history."""
        ...

    def send_to(self, name: str, text: str) -> str | None:
        """Deliver ``text`` to the holder of ``name`` wherever they are; their name, or
        None if absent."""
        ...

    def make_operator(self, member: Member) -> None: ...

    def remove(self, name: str, removal: Removal) -> str | None:
        """Kick (and with ``ban_minutes``, ban) the holder of ``name``; their name, or None."""
        ...

    def is_banned(self, address: str) -> bool: ...

    def bans(self) -> list[tuple[str, float]]:
        """(address, seconds left) of every ban in force."""
        ...

    def unban(self, address: str) -> bool: ...


# Compatibility: the chat was one room, and the protocol was named after it.
Room = Chat
__all__ = ["Chat", "ChatSession", "Entered", "Member", "Removal", "Room", "State", "loggable"]


@dataclass(frozen=True)
class Command:
    run: Callable[[ChatSession, list[str], str], None]
    least: int  # words after the command, at least
    most: int | None  # and at most (None: the rest is free text)
    usage: str
    operators_only: bool = False


# Names follow RFC 8265's UsernameCaseMapped profile (PRECIS): letters, digits, marks and
# printable ASCII; no spaces, controls, default-ignorable or format characters, symbols or
# punctuation beyond ASCII, and no compatibility forms but fullwidth and halfwidth ones, which
# it maps to their usual forms, as it maps letters to lower case.
@functools.cache
def _username_profile() -> Any:
    """The profile, loaded by the first non-ASCII name: ASCII names need none of it, and
    a server in another mode need not pay for loading it at start."""
    import precis_i18n

    return precis_i18n.get_profile("UsernameCaseMapped")


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
        return _username_profile().enforce(name)  # type: ignore[no-any-return]
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
    """One client's conversation: feed it lines with :meth:`receive`.

    ``check_password`` says whether a password opens operator rights (None: nobody can
    become an operator); ``report`` is told of events worth logging (``oper``,
    ``oper_failed``) as (event, fields)."""

    def __init__(
        self,
        chat: Chat,
        member: Member,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        address: str = "",
        check_password: Callable[[str], bool] | None = None,
        report: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.chat = self.room = chat
        self.member = member
        # A reply of ours must never make its asker a slow consumer: /users is bounded.
        self.max_reply_bytes = max_reply_bytes
        self.address = address
        self.check_password = check_password
        self.report = report or (lambda event, fields: None)
        self.name: str | None = None
        self.operator = False
        self.wrong_passwords = 0
        self.state = State.AWAITING_NAME

    def start(self) -> None:
        if self.address and self.chat.is_banned(self.address):
            self.state = State.CLOSED
            self.member.send("You are banned\n")
            self.member.close("banned")
            return
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
            self._command(line)
            return
        text = sanitize(line).strip()  # spaces that invisible characters hid at either end go too
        if text:
            self._say(f"[{self.name}]: {text}\n")

    def end(self, announce: bool = True) -> None:
        """The client has gone, for whatever reason: leave the chat exactly once."""
        if self.state is State.CLOSED:
            return
        was_named = self.state is State.CHATTING
        self.state = State.CLOSED
        if was_named:
            room = self.chat.room_of(self.member)
            # A kicked user was removed already, and their room told why.
            if self.chat.leave(self.member) and announce:
                self.chat.publish(room, f"{self.name} left the chat\n", exclude=self.member)

    # -- saying things --------------------------------------------------------------------

    def _say(self, line: str) -> None:
        self.chat.publish(self.chat.room_of(self.member), line, keep=True)

    def _tell_room(self, line: str) -> None:
        """To everyone else in this user's room."""
        self.chat.publish(self.chat.room_of(self.member), line, exclude=self.member)

    def _entered(self, room: str) -> None:
        """What someone entering ``room`` is shown: its topic and its recent lines."""
        topic = self.chat.topic(room)
        if topic is not None:
            self.member.send(f"Topic for {room}: {topic}\n")
        for moment, line in self.chat.history(room):
            self.member.send(f"[{iso_utc_ms(moment)}] {line}")

    def _choose_name(self, name: str) -> None:
        if not name:
            self.member.send(PROMPT)
        elif name.lower() == "/quit":
            self._quit([], "")
        elif not name_is_valid(name):
            self.member.send(f"{INVALID_NAME}, try again: ")
        elif not self.chat.join(self.member, name, self.address):
            self.member.send(f"Username {name} is taken, choose another: ")
        else:
            self.name = name
            self.state = State.CHATTING
            self.member.send(f"Welcome {name}!\n")
            room = self.chat.room_of(self.member)
            for moment, line in self.chat.history(room):
                self.member.send(f"[{iso_utc_ms(moment)}] {line}")
            self._tell_room(f"{name} joined the chat\n")

    def _command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        command = COMMANDS.get(word.lower())
        if command is None:
            self.member.send(UNKNOWN_COMMAND)
            return
        rest = rest.strip()
        words = rest.split()
        if len(words) < command.least or (command.most is not None and len(words) > command.most):
            self.member.send(f"Usage: {command.usage}\n")
            return
        if command.operators_only and not self.operator:
            self.member.send(PERMISSION_DENIED)
            return
        command.run(self, words, rest)

    # -- the commands -----------------------------------------------------------------------

    def _users(self, _words: list[str], _rest: str) -> None:
        names = self.chat.names(self.chat.room_of(self.member))
        self.member.send(users_reply(names, self.max_reply_bytes))

    def _help(self, _words: list[str], _rest: str) -> None:
        self.member.send(HELP)

    def _quit(self, _words: list[str], _rest: str) -> None:
        self.end()
        self.member.close("quit")

    def _msg(self, words: list[str], rest: str) -> None:
        target = words[0]
        text = sanitize(rest[len(target) :]).strip()
        if not text:
            self.member.send("Usage: /msg NAME TEXT\n")
            return
        delivered_to = self.chat.send_to(target, f"[{self.name} -> you]: {text}\n")
        if delivered_to is None:
            self.member.send(f"No such user: {sanitize(target)}\n")
        else:
            self.member.send(f"[you -> {delivered_to}]: {text}\n")

    def _me(self, _words: list[str], rest: str) -> None:
        action = sanitize(rest).strip()
        if not action:
            self.member.send("Usage: /me ACTION\n")
            return
        self._say(f"* {self.name} {action}\n")

    def _nick(self, words: list[str], _rest: str) -> None:
        old_name, new_name = self.name, words[0]
        if not name_is_valid(new_name):
            self.member.send(f"{INVALID_NAME}\n")
        elif new_name == old_name:
            self.member.send(f"You are already known as {new_name}\n")
        elif not self.chat.rename(self.member, new_name):
            self.member.send(f"Username {new_name} is taken\n")
        else:
            self.name = new_name
            self.member.send(f"You are now known as {new_name}\n")
            self._tell_room(f"{old_name} is now known as {new_name}\n")

    def _join(self, words: list[str], _rest: str) -> None:
        wanted = room_display(words[0])
        if wanted is None:
            self.member.send(f"{INVALID_ROOM}\n")
            return
        old_room = self.chat.room_of(self.member)
        entered, room = self.chat.enter(self.member, wanted)
        if entered is Entered.ALREADY_THERE:
            self.member.send(f"You are already in {room}\n")
        elif entered is Entered.TOO_MANY_ROOMS:
            self.member.send("Too many rooms\n")
        else:
            self.member.send(f"You joined {room}\n")
            self._entered(room)
            self.chat.publish(old_room, f"{self.name} went to {room}\n", exclude=self.member)
            self.chat.publish(room, f"{self.name} joined {room}\n", exclude=self.member)

    def _rooms(self, _words: list[str], _rest: str) -> None:
        listed = sorted(self.chat.listing(), key=lambda entry: entry[0].casefold())
        self.member.send(f"Rooms: {', '.join(f'{room} ({people})' for room, people in listed)}\n")

    def _topic(self, _words: list[str], rest: str) -> None:
        room = self.chat.room_of(self.member)
        if not rest:
            topic = self.chat.topic(room)
            if topic is None:
                self.member.send(f"No topic for {room}\n")
            else:
                self.member.send(f"Topic for {room}: {topic}\n")
            return
        topic = sanitize(rest).strip()[:MAX_TOPIC_CHARS].strip()
        if not topic:
            self.member.send("Usage: /topic [TEXT]\n")
            return
        self.chat.set_topic(room, topic)
        self.chat.publish(room, f"{self.name} set the topic: {topic}\n")

    def _oper(self, _words: list[str], rest: str) -> None:
        if self.check_password is not None and self.check_password(rest):
            self.operator = True
            self.chat.make_operator(self.member)
            self.member.send("You are now an operator\n")
            self.report("oper", {"name": self.name})
            return
        self.wrong_passwords += 1
        self.member.send("Wrong password\n")
        self.report("oper_failed", {"name": self.name, "attempt": self.wrong_passwords})
        if self.wrong_passwords > WRONG_PASSWORDS_ALLOWED:
            self.end()
            self.member.close("too many wrong passwords")

    def _kick(self, words: list[str], rest: str) -> None:
        self._remove(words[0], rest[len(words[0]) :], None)

    def _ban(self, words: list[str], rest: str) -> None:
        reason = rest[len(words[0]) :].strip()
        minutes = DEFAULT_BAN_MINUTES
        if len(words) > 1 and words[1].isdigit():
            minutes = int(words[1])
            reason = reason[len(words[1]) :]
            if minutes < 1:
                self.member.send("Usage: /ban NAME [MINUTES] [REASON]\n")
                return
        self._remove(words[0], reason, minutes)

    def _remove(self, target: str, reason: str, ban_minutes: int | None) -> None:
        assert self.name is not None
        removal = Removal(self.name, sanitize(reason).strip(), ban_minutes)
        if self.chat.remove(target, removal) is None:
            self.member.send(f"No such user: {sanitize(target)}\n")

    def _unban(self, words: list[str], _rest: str) -> None:
        if self.chat.unban(words[0]):
            self.member.send(f"Unbanned {words[0]}\n")
        else:
            self.member.send(f"No ban for {sanitize(words[0])}\n")

    def _bans(self, _words: list[str], _rest: str) -> None:
        bans = sorted(self.chat.bans())
        if not bans:
            self.member.send("No bans\n")
            return
        for address, seconds in bans:
            self.member.send(f"{address} ({max(1, -(-int(seconds) // 60))} minutes left)\n")


COMMANDS: dict[str, Command] = {
    "/users": Command(ChatSession._users, 0, 0, "/users"),
    "/help": Command(ChatSession._help, 0, 0, "/help"),
    "/quit": Command(ChatSession._quit, 0, 0, "/quit"),
    "/msg": Command(ChatSession._msg, 2, None, "/msg NAME TEXT"),
    "/me": Command(ChatSession._me, 1, None, "/me ACTION"),
    "/nick": Command(ChatSession._nick, 1, 1, "/nick NAME"),
    "/join": Command(ChatSession._join, 1, 1, "/join #ROOM"),
    "/rooms": Command(ChatSession._rooms, 0, 0, "/rooms"),
    "/topic": Command(ChatSession._topic, 0, None, "/topic [TEXT]"),
    "/oper": Command(ChatSession._oper, 1, None, "/oper PASSWORD"),
    "/kick": Command(ChatSession._kick, 1, None, "/kick NAME [REASON]", operators_only=True),
    "/ban": Command(ChatSession._ban, 1, None, "/ban NAME [MINUTES] [REASON]", operators_only=True),
    "/unban": Command(ChatSession._unban, 1, 1, "/unban ADDRESS", operators_only=True),
    "/bans": Command(ChatSession._bans, 0, 0, "/bans", operators_only=True),
}

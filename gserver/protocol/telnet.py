"""Telnet commands (RFC 854) taken out of a line client's byte stream.

A telnet client puts commands in the stream: option negotiation (``IAC DO x``), Ctrl-C as
``IAC IP``, subnegotiations.  They begin with byte 255 (IAC), which valid UTF-8 never
contains, so the line modes can take them out without touching any text.  Sans-IO:
:class:`TelnetFilter` is fed bytes and says what is data, what to answer, and whether the
user interrupted.  The byte modes (basic, inspect) pass every byte through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
IP, BRK = 244, 243  # interrupt process (Ctrl-C), break
TIMING_MARK = 6
_DATA, _COMMAND, _OPTION, _SUB, _SUB_IAC = range(5)


@dataclass(frozen=True)
class Filtered:
    data: bytes  # the stream without telnet commands
    reply: bytes  # what to send back (negotiation answers)
    interrupted: bool  # IAC IP or IAC BRK: the user wants out, as with /quit


class TelnetFilter:
    """Feed it received bytes; it keeps its place across chunks (a command may be split)."""

    __slots__ = ("_state", "_verb")

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0

    @property
    def idle(self) -> bool:
        """True when no command is half-read (the next chunk can skip the filter)."""
        return self._state == _DATA

    def feed(self, chunk: bytes) -> Filtered:
        data = bytearray()
        reply = bytearray()
        state = self._state
        for byte in chunk:
            if state == _DATA:
                if byte == IAC:
                    state = _COMMAND
                else:
                    data.append(byte)
            elif state == _COMMAND:
                if byte == IAC:  # an escaped 255: a data byte
                    data.append(IAC)
                    state = _DATA
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb = byte
                    state = _OPTION
                elif byte == SB:
                    state = _SUB
                elif byte in (IP, BRK):
                    self._state = _DATA
                    # What follows an interrupt is not read.
                    return Filtered(bytes(data), bytes(reply), True)
                else:  # NOP, DM, AYT, GA...: nothing to do
                    state = _DATA
            elif state == _OPTION:
                reply += self._answer(self._verb, byte)
                state = _DATA
            elif state == _SUB:
                if byte == IAC:
                    state = _SUB_IAC
            else:  # _SUB_IAC
                state = _DATA if byte == SE else _SUB
        self._state = state
        return Filtered(bytes(data), bytes(reply), False)

    @staticmethod
    def _answer(verb: int, option: int) -> bytes:
        """Agree to the timing mark (telnet waits for it to go on showing output); refuse
        every other option; never answer a refusal (that is how negotiation loops end)."""
        if verb == DO:
            return bytes((IAC, WILL if option == TIMING_MARK else WONT, option))
        if verb == WILL:
            return bytes((IAC, DONT, option))
        return b""

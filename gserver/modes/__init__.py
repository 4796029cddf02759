"""The built-in modes, by name; each is an ordinary handler using only the public API."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from gserver.modes import basic, chat, echo, inspect
from gserver.server import Handler, Server
from gserver.settings import Settings, SettingsError
from gserver.ticker import start_uptime_broadcast


@dataclass(frozen=True)
class Mode:
    handler: Handler
    on_start: Callable[[Server], None] | None = None


MODES: dict[str, Mode] = {
    "basic": Mode(basic.handle),
    "echo": Mode(echo.handle, start_uptime_broadcast),
    "chat": Mode(chat.handle),
    "inspect": Mode(inspect.handle),
}


def load_handler(spec: str) -> Handler:
    """Import ``package.module:function``; any failure is a SettingsError naming 'handler'."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError("handler", f"cannot import {module_name!r}: {problem}") from None
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise SettingsError("handler", f"{module_name!r} has no function {function_name!r}")
    return handler  # type: ignore[no-any-return]


def resolve(settings: Settings) -> Mode:
    """The mode to serve: the user's own handler if one is set, else the built-in mode."""
    if settings.handler:
        return Mode(load_handler(settings.handler))
    return MODES[settings.mode]

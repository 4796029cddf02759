"""The built-in modes, by name; each is an ordinary handler using only the public API.

A mode's module is imported only when that mode is served: chat's name rules bring
precis-i18n, and a basic server has no use for them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gserver.settings import Settings, SettingsError
from gserver.ticker import start_uptime_broadcast

if TYPE_CHECKING:
    from gserver.server import Handler, Server


@dataclass(frozen=True)
class Mode:
    handler: Handler
    on_start: Callable[[Server], None] | None = None


# name -> (module in gserver.modes, what starts with the server)
_BUILT_IN: dict[str, tuple[str, Callable[[Server], None] | None]] = {
    "basic": ("basic", None),
    "echo": ("echo", start_uptime_broadcast),
    "chat": ("chat", None),
    "inspect": ("inspect", None),
}


def builtin(name: str) -> Mode:
    """The built-in mode ``name``, its module imported now."""
    module, on_start = _BUILT_IN[name]
    handler = importlib.import_module(f"gserver.modes.{module}").handle
    return Mode(handler, on_start)


def __getattr__(name: str) -> Any:
    if name == "MODES":  # every built-in mode, all imported (as this module once did)
        return {mode: builtin(mode) for mode in _BUILT_IN}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    return builtin(settings.mode)

"""gserver reaches into gevent's private parts in one module, which knows the versions it
was tested with and says so when it runs on another."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import gevent
import pytest

from gserver import compat

PACKAGE = Path(compat.__file__).parent


@pytest.mark.parametrize(
    ("version", "tested"),
    [("24.2.1", True), ("26.9.0", True), ("25.5", True), ("23.9.1", False), ("27.0.0", False)],
)
def test_the_tested_range(version: str, tested: bool) -> None:
    assert compat.gevent_is_tested(version) is tested


def test_an_untested_gevent_is_named_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gevent, "__version__", "99.1.0")
    with pytest.warns(RuntimeWarning, match=r"not gevent 99\.1\.0"):
        importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)


def test_pyproject_caps_gevent_below_the_next_major() -> None:
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'"gevent>=24.2,<{compat.TESTED_GEVENT[1][0] + 1}"' in pyproject


# gevent's and greenlet's parts below their documented API that gserver uses.
GEVENT_PRIVATE = {
    "_read_event",
    "_sslobj",
    "_sock",
    "_accept",
    "_timer",
    "_start_accepting_if_started",
    "cancel_wait",
    "cancel_waits_close_and_then",
    "settrace",
}


def _private_gevent_uses(path: Path) -> list[str]:
    return [
        f"{path.name}:{node.lineno}:{node.attr}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in GEVENT_PRIVATE
        # compat's own functions, and an object's own attributes of the same name
        and not (isinstance(node.value, ast.Name) and node.value.id in ("compat", "self"))
    ]


def test_only_compat_touches_gevents_private_parts() -> None:
    offenders = [
        use
        for path in PACKAGE.rglob("*.py")
        if path.name != "compat.py"
        for use in _private_gevent_uses(path)
    ]
    assert offenders == []
    assert _private_gevent_uses(PACKAGE / "compat.py"), "compat.py should hold them"

"""Keep the public surface of ``lanes`` honest: sorted, complete, and importable."""

from __future__ import annotations

import ast
import pathlib

import lanes


def test_all_is_sorted_and_unique() -> None:
    assert lanes.__all__ == sorted(set(lanes.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in lanes.__all__ if not hasattr(lanes, name)]
    assert missing == []


def test_every_reexport_is_in_all() -> None:
    """Each ``from ._x import Y as Y`` in ``__init__`` is listed in ``__all__`` and vice versa."""
    source = pathlib.Path(lanes.__file__).read_text()
    reexported = {
        alias.asname
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    assert reexported == set(lanes.__all__)


def test_lanes_never_imports_server() -> None:
    root = pathlib.Path(lanes.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("server"), path
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("server") for a in node.names), path


def test_py_typed_ships() -> None:
    assert (pathlib.Path(lanes.__file__).parent / "py.typed").exists()

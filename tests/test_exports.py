"""Keep the public surface of ``lanes`` honest (sorted, complete, importable) and the import
directions one-way: ``lanes`` never imports ``server``; inside ``server`` every import follows
``ALLOWED`` and the module graph has no cycle."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator, Mapping, Set

import lanes

SERVER = pathlib.Path(__file__).resolve().parent.parent / "server"
#: Top-level modules that import no other part of ``server`` except each other.
LEAVES = frozenset(
    {"auth", "clock", "drain", "errors", "jwt_auth", "logs", "loopload", "settings", "wakeup"}
)
#: For each unit (a ``server`` subpackage or top-level module): the other units it may import,
#: besides the leaves. Lower layers first; nothing imports upwards.
ALLOWED: Mapping[str, Set[str]] = {
    "guard": set(),
    "store": set(),
    "stt": set(),
    "views": {"store"},
    "identity": {"store"},
    "tokens_cli": {"store"},
    "webhooks": {"store"},
    "processing": {"store", "views", "webhooks"},
    "cluster": {"store"},
    "supervisor": set(),
    "listen": {"guard", "store", "stt", "views", "identity", "cluster"},
    "metrics": {"store", "listen"},
    "check": {"store"},
    "context": {"store", "listen", "webhooks", "metrics", "identity", "cluster"},
    "routes": {
        "context",
        "guard",
        "store",
        "stt",
        "views",
        "listen",
        "webhooks",
        "processing",
        "metrics",
        "identity",
    },
    "app": {"context", "listen", "routes"},
    "compose": {
        "context",
        "store",
        "stt",
        "views",
        "listen",
        "webhooks",
        "processing",
        "metrics",
        "identity",
        "cluster",
    },
    "serve": {"app", "compose", "context", "guard", "stt", "supervisor"},
    "__main__": {"guard", "serve", "tokens_cli", "check", "supervisor"},
    "testing": {"serve"},
}


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


def _module(path: pathlib.Path) -> str:
    parts = ("server", *path.relative_to(SERVER).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else "server"


def _imports(tree: ast.AST, known: Set[str]) -> Iterator[str]:
    """Every ``server`` module imported anywhere in ``tree`` (also inside functions and
    ``TYPE_CHECKING``); ``from pkg import submodule`` counts as the submodule only."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            found = [sub for sub in subs if sub in known]
            yield from found if len(found) == len(subs) else [node.module, *found]


def _server_graph() -> dict[str, set[str]]:
    paths = {_module(path): path for path in SERVER.rglob("*.py")}
    return {
        module: set(_imports(ast.parse(path.read_text()), paths.keys())) - {module}
        for module, path in paths.items()
    }


def test_server_imports_follow_the_allowed_directions() -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in _server_graph().items()
        for target in targets
        if _unit(module) != _unit(target)
        and _unit(module) != "server"
        and _unit(target) not in LEAVES | ALLOWED.get(_unit(module), set())
    )
    assert wrong == []


def test_server_module_graph_has_no_cycle() -> None:
    graph = _server_graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for target in sorted(graph[module]):
                visit(target, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())

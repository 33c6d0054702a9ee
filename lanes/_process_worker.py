"""The worker side of a :class:`~lanes.ProcessLane`: ``python .../_process_worker.py FACTORY``.

Run by path (stdlib imports only, so a worker starts in ~0.15 s); the lane passes its
``sys.path`` as ``PYTHONPATH`` so the factory's package imports as it does in the parent.

The worker imports ``FACTORY`` (``"package.module:callable"``), announces itself with a
``("ready", pid)`` frame, then serves requests from stdin one at a time until stdin ends or an
``("exit",)`` frame arrives; finally it calls ``close()`` on every session still open.

Frames are a 4-byte big-endian length followed by a pickle (see :mod:`lanes._process`)::

    parent -> worker   ("open", req, sid, args) | ("call", req, sid, method, args)
                       | ("close", req, sid) | ("exit",)
    worker -> parent   ("ready", pid) | ("ok", req, value)
                       | ("err", req, type_name, message, traceback_text)

The real stdout is kept for frames only: ``sys.stdout`` (and fd 1) go to stderr, so a stray
``print`` in user code cannot corrupt the protocol.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any, Final

__all__ = ["main", "read_frame", "resolve_factory", "write_frame"]

HEADER: Final = struct.Struct(">I")
#: Largest frame either side accepts (a larger one is a protocol error).
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024


def write_frame(out: IO[bytes], message: object) -> None:
    """Pickle ``message`` and write it as one length-prefixed frame, then flush."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(HEADER.pack(len(payload)) + payload)
    out.flush()


def read_frame(inp: IO[bytes]) -> Any:
    """Read one frame; None at end of input (a truncated frame counts as the end)."""
    header = inp.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    payload = inp.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


def resolve_factory(spec: str) -> Callable[..., object]:
    """Import ``"package.module:callable"`` and return the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"factory must look like 'package.module:callable', got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"factory {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _error(req: int, exc: Exception) -> tuple[str, int, str, str, str]:
    kind = type(exc)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return ("err", req, name, str(exc), "".join(traceback.format_exception(exc)))


class _Server:
    """Holds the sessions of this worker and answers one request at a time."""

    def __init__(self, factory: Callable[..., object], out: IO[bytes]) -> None:
        self._factory = factory
        self._out = out
        self._sessions: dict[int, object] = {}

    def serve(self, inp: IO[bytes]) -> None:
        """Answer requests until the input ends or asks to exit, then close every session."""
        try:
            while (message := read_frame(inp)) is not None and message[0] != "exit":
                self._answer(message)
        finally:
            for sid in list(self._sessions):
                _close_quietly(self._sessions.pop(sid))

    def _answer(self, message: tuple[Any, ...]) -> None:
        req = message[1]
        try:
            reply: tuple[object, ...] = ("ok", req, self._dispatch(message))
        except Exception as exc:
            reply = _error(req, exc)
        try:
            write_frame(self._out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            write_frame(self._out, _error(req, exc))

    def _dispatch(self, message: tuple[Any, ...]) -> object:
        kind, _req, sid = message[:3]
        if kind == "open":
            self._sessions[sid] = self._factory(*message[3])
            return None
        if kind == "call":
            method = getattr(self._sessions[sid], message[3])
            return method(*message[4])
        if kind == "close":
            obj = self._sessions.pop(sid, None)
            close = getattr(obj, "close", None)
            return close() if callable(close) else None
        raise ValueError(f"unknown request {kind!r}")


def _close_quietly(obj: object) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            traceback.print_exc()


def main(argv: list[str]) -> int:
    """Run a worker for the factory named in ``argv[1]``; return the exit status."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    factory = resolve_factory(argv[1])
    write_frame(out, ("ready", os.getpid()))
    _Server(factory, out).serve(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the script's own folder: its private modules must not shadow others
    sys.exit(main(sys.argv))

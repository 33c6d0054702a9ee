"""Benchmark helpers for server processes: start pinned, wait for the port, read CPU time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

__all__ = [
    "ServerProcess",
    "cpu_seconds",
    "machine_cpu_s",
    "open_server_process",
    "pin_self",
    "process_tree",
    "rss_and_threads",
    "start_ticks",
    "tree_cpu_s",
    "unpin_self",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process for good."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant of it (by the parent pid in each ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_cpu_s(root: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``root`` and each live descendant, by pid.

    A descendant that exits between two readings takes its CPU time with it; the servers'
    worker processes live as long as the server does.
    """
    out: dict[int, float] = {}
    for pid in process_tree(root):
        try:
            out[pid] = cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue
    return out


def machine_cpu_s() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine so far, summed over its CPUs
    (``/proc/stat``; idle and iowait are not busy)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - fields[3] - fields[4]) / _TICKS, total / _TICKS


def rss_and_threads(pid: int) -> tuple[int, int]:
    """Resident set size in bytes and thread count of ``pid`` (Linux /proc)."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def pin_self(cpu: int) -> None:
    """Run this process on one CPU (if the machine has it)."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def unpin_self() -> None:
    """Let this process (and the children it starts from now on) run on every CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


@dataclass
class ServerProcess:
    """A started server: its process, port and captured output."""

    process: trio.Process
    port: int
    output: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid


def _pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


@asynccontextmanager
async def open_server_process(
    argv: Sequence[str],
    *,
    port_pattern: bytes,
    env: Mapping[str, str] | None = None,
    cpu: int | None = None,
    stream: str = "stdout",
    start_timeout_s: float = 60.0,
) -> AsyncIterator[ServerProcess]:
    """Start ``argv`` (optionally pinned to ``cpu``), wait for ``port_pattern`` in its output,
    yield it, then SIGTERM it (SIGKILL after 15 s). Output keeps being drained meanwhile."""
    command = _pinned([sys.executable, *argv] if argv[0] == "-m" else argv, cpu)
    environment = {**os.environ, **(env or {})}
    if stream == "stdout":
        process = await trio.lowlevel.open_process(command, env=environment, stdout=subprocess.PIPE)
    else:
        process = await trio.lowlevel.open_process(command, env=environment, stderr=subprocess.PIPE)
    source = process.stdout if stream == "stdout" else process.stderr
    assert source is not None
    output: list[str] = []
    try:
        port = await _wait_port(source, port_pattern, output, start_timeout_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, source, output)
            yield ServerProcess(process, port, output)
            await _stop(process)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()


async def _wait_port(
    source: trio.abc.ReceiveStream, pattern: bytes, output: list[str], timeout_s: float
) -> int:
    buffer = b""
    with trio.fail_after(timeout_s):
        while True:
            chunk = await source.receive_some(65536)
            if not chunk:
                raise RuntimeError(
                    "server exited before listening:\n" + buffer.decode(errors="replace")
                )
            buffer += chunk
            match = re.search(pattern, buffer)
            if match:
                output.append(buffer.decode(errors="replace"))
                return int(match.group(1))


async def _drain(source: trio.abc.ReceiveStream, output: list[str]) -> None:
    while chunk := await source.receive_some(65536):
        output.append(chunk.decode(errors="replace"))
        del output[:-200]  # keep the tail only


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(15):
        await process.wait()

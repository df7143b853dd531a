"""CPU time by process, from /proc/<pid>/stat, for the benchmark's "CPU per order" figures.

A group is a set of root pids (a worker, the relay, gunicorn's master, the broker); its CPU is what every live process
of the roots' trees has used, their reaped children's included (`cutime`/`cstime`), so a forked process that exits
during the window still counts: its time moves into its parent's figure. A delta of two readings is the CPU the
group used between them. Reading /proc is all it does: it never signals anything it finds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """Every live pid -> (its parent's pid, its CPU seconds including its reaped children's)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")".
        fields = text[text.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        table[int(entry.name)] = (ppid, (utime + stime + cutime + cstime) / TICKS)
    return table


def tree(roots: Iterable[int], table: dict[int, tuple[int, float]]) -> set[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


@dataclass
class CpuMeter:
    """Named groups of processes, each given by a function returning its root pids at the time of reading (the
    PostgreSQL backends serving a database change as connections come and go).

    A reading keeps each pid's figure, and a delta adds up per pid: a process that appeared in between counts in
    full (all its CPU is inside the window), one that exited in between is left out rather than making the
    group's figure fall."""

    groups: dict[str, Callable[[], Iterable[int]]]

    def read(self) -> dict[str, dict[int, float]]:
        table = process_table()
        return {name: {pid: table[pid][1] for pid in tree(roots(), table)} for name, roots in self.groups.items()}

    @staticmethod
    def delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds each group used between two readings."""
        return {
            name: sum(max(cpu - before.get(name, {}).get(pid, 0.0), 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }


def pid_from_file(path: str) -> list[int]:
    try:
        return [int(Path(path).read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


def pids_named(name: str, *, cmdline_contains: str = "") -> list[int]:
    """Pids of processes called exactly `name` (pgrep -x), for reading their CPU."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    pids = [int(pid) for pid in out]
    if cmdline_contains:
        pids = [pid for pid in pids if cmdline_contains in _cmdline(pid)]
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def broker_pids() -> list[int]:
    """The local RabbitMQ node: its pid file, else the one beam.smp that is not a `make cluster` node."""
    for path in Path("/var/lib/rabbitmq/mnesia").glob("*.pid"):
        pids = pid_from_file(str(path))
        if pids and Path(f"/proc/{pids[0]}").exists():
            return pids
    return [pid for pid in pids_named("beam.smp") if "rabbitmq-cluster" not in _cmdline(pid)][:1]


def redis_pids(redis_url: str) -> list[int]:
    port = urlsplit(redis_url).port or 6379
    return pids_named("redis-server", cmdline_contains=f":{port}")

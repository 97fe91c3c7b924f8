"""What this process holds, read from /proc in a few milliseconds: the trainer records it per rank at each growth
(OUT/growth_pauses.jsonl), so that a run that grows many times in one process shows whether anything piles up.
Linux only; elsewhere the /proc fields are None."""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import torch.distributed as dist


def release_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim): after a growth the old engine's buffers
    are freed, but glibc keeps most of them mapped, so the process would hold its largest earlier size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _status() -> dict[str, str]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _kb_to_mb(value: str | None) -> float | None:
    return round(int(value.split()[0]) / 1024, 1) if value else None


def descendants() -> int | None:
    """Live processes below this one (data loader workers are the forkserver's children), from the parent field of
    every /proc/PID/stat."""
    parent = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - below
        below |= frontier
    return len(below)


def process_groups() -> int:
    """Live torch.distributed process groups, the default one included (0 before init_process_group)."""
    if not dist.is_available() or not dist.is_initialized():
        return 0
    return len(dist.distributed_c10d._world.pg_map)  # no public count; pg_map is what destroy_process_group edits


def snapshot() -> dict:
    """rss_mb (resident now), hwm_mb (peak resident), fds (open file descriptors), threads (Python's), os_threads
    (the kernel's: gloo, OpenMP and DataLoader pin-memory threads included), groups (process groups),
    descendants (processes below this one)."""
    status = _status()
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    return {"rss_mb": _kb_to_mb(status.get("VmRSS")), "hwm_mb": _kb_to_mb(status.get("VmHWM")), "fds": fds,
            "threads": threading.active_count(),
            "os_threads": int(status["Threads"]) if "Threads" in status else None,
            "groups": process_groups(), "descendants": descendants()}


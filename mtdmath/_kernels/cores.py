"""How many threads a threaded kernel may use now: no more than there are idle cores for.

A threaded call ends in a barrier that waits for every worker to run at least once. When other
processes keep the cores busy, a worker waits for the operating system to give it a core, and
the call can be slower than on the calling thread alone (bench/thread_targets.py measures it
next to a busy process). So a kernel asks for threads only where the cores
they would use are idle at the moment of the call: Linux's count of runnable tasks
(``/proc/loadavg``, the instantaneous one, not the average), less the calling thread, against
the cores this process may run on. Elsewhere, and where the count cannot be read, the request
is granted as it is. Results never depend on it (every threaded route gives the same bits).
"""
from __future__ import annotations

import os


def runnable_tasks() -> int | None:
    """Tasks runnable on the machine now (the calling thread among them), or None if unknown."""
    try:
        with open("/proc/loadavg") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def usable_threads(want: int) -> int:
    """``want`` threads, cut to 1 + the number of cores that no other runnable task needs now."""
    if want <= 1:
        return max(want, 1)
    running = runnable_tasks()
    if running is None:
        return want
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = max(running - 1, 0)  # the calling thread is one of the runnable tasks
    return max(1, min(want, cores - others))

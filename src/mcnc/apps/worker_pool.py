"""Training processes side by side that do not outlive the process that started them.

``mcnc compare --jobs N`` and the benchmarks train in a pool of spawned processes. If the
parent is killed outright (``kill -9``, a scheduler's time limit, a closed terminal that
sends no signal to the group), a plain pool's workers carry on with runs nobody will record,
holding cores for up to an hour. Here every worker watches its parent and exits once the
parent is gone; a worker's run in progress is lost either way, and the runs already written
to ``runs.jsonl`` are kept, so running the command again resumes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PARENT_POLL_SECONDS = 2.0
"""How often a worker checks that its parent is still alive."""


def parent_gone(parent_pid: int) -> bool:
    """True once the process that started this one has exited: a POSIX system then re-parents
    it, so ``os.getppid()`` no longer returns ``parent_pid`` (Windows does not, so there the
    workers are not watched)."""
    return os.getppid() != parent_pid


def _watch_parent(parent_pid: int, poll_seconds: float) -> None:
    while not parent_gone(parent_pid):
        time.sleep(poll_seconds)
    os._exit(1)  # no clean-up: the parent that would read the results is gone


def _start_watch(parent_pid: int, poll_seconds: float) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_seconds), daemon=True,
                     name="mcnc-parent-watch").start()


def process_pool(jobs: int, poll_seconds: float = PARENT_POLL_SECONDS,
                 **options) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``jobs`` spawned workers (no fork: torch's threads do
    not survive one) that exit when this process dies. ``options`` go to the executor
    (e.g. ``max_tasks_per_child``)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_watch,
                               initargs=(os.getpid(), poll_seconds), **options)

"""The training pool's workers exit when the process that started them is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcnc.apps.worker_pool import parent_gone

KILLED_PARENT = """
import os, signal, sys, time
from pathlib import Path
from mcnc.apps.worker_pool import process_pool
pool = process_pool(1, poll_seconds=0.1)
Path(sys.argv[1]).write_text(str(pool.submit(os.getpid).result()))
pool.submit(time.sleep, 600)
time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_parent_gone_compares_the_parent_pid():
    assert not parent_gone(os.getppid())
    assert parent_gone(os.getppid() + 1_000_000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    # output to a file, not a pipe: a worker holding the pipe open would keep run() waiting
    log, pid_file = tmp_path / "parent.log", tmp_path / "worker.pid"
    with open(log, "w") as out:
        parent = subprocess.run([sys.executable, "-c", KILLED_PARENT, str(pid_file)],
                                stdout=out, stderr=out, timeout=120)
    assert parent.returncode == -9, log.read_text()
    worker = int(pid_file.read_text())
    for _ in range(600):  # the worker's task sleeps 600 s: only the watch ends it sooner
        if not _alive(worker):
            break
        time.sleep(0.1)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")

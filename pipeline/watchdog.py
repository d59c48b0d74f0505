"""Stopping the local Ray cluster a driver started when the driver dies, SIGKILL included.

`init_ray(address)` calls `ray.init`; when that starts a cluster on this machine (the driver then
has `gcs_server`/`raylet` children), it also starts `python -m pipeline.watchdog PID` in its own
session. The watchdog notes the driver's descendant processes every half second and, once the
driver is gone, kills those still running (psutil checks each one's start time, so a reused PID
is never hit). Without it a killed driver leaves Ray's processes behind for a minute or more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_SECONDS = 0.5
_CLUSTER_PROCESSES = ('gcs_server', 'raylet')


def init_ray(address: str | None = None, **kwargs) -> None:
    """`ray.init(address, ...)`; a cluster started here is stopped when this process dies."""
    import ray
    ray.init(address=address, **{'include_dashboard': False, 'logging_level': 'WARNING', **kwargs})
    children = psutil.Process().children(recursive=True)
    if any(child.name() in _CLUSTER_PROCESSES for child in children):
        subprocess.Popen([sys.executable, '-m', 'pipeline.watchdog', str(os.getpid())], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def watch(pid: int) -> int:
    """Wait for process `pid` to end, then kill its last known descendants; returns how many were killed."""
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():  # the watchdog is the driver's child too
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    killed = 0
    for proc in known.values():
        try:
            if proc.is_running():  # also false for a PID reused by another process
                proc.kill()
                killed += 1
        except psutil.NoSuchProcess:
            pass
    return killed


if __name__ == '__main__':
    watch(int(sys.argv[1]))

"""One manifest writer per store: a lease that a second driver is refused by.

Each manifest write replaces the whole file from the writer's copy, so two drivers writing one
store (a job submitted twice by mistake, two clusters pointed at one bucket) would each drop the
other's rows. A driver that writes the manifest (collect, convert, migrate) therefore first takes
the store's lease: a small JSON object beside the manifest naming its holder (host, process, a
random token) and a deadline, renewed every `ttl / 4` seconds by a background thread and released
at the end. A driver that finds someone else's live lease stops before doing anything, with an
error naming the holder. A lease is live until its deadline, except that one held by a process of
this host that no longer exists is stale at once (a killed local driver does not block the rerun).

Taking a lease is "check, write, read back": on local disk the write is an exclusive create or an
atomic replace of a stale lease; on object stores the last writer wins and the read-back tells the
loser. Manifest writes check that the lease they hold is still theirs.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TTL = 120.0  # seconds a lease lives without renewal


class LeaseError(RuntimeError):
    """The store's manifest is being written by another driver (or this driver's lease was lost)."""


class Lease:
    """The right to write the manifest at `path` (the lease object is `path + '.lease'`)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, ttl: float = TTL) -> None:
        self.fs, self.path, self.ttl = fs, f'{path}.lease', ttl
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'token': secrets.token_hex(8)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._thread is not None

    def acquire(self) -> None:
        """Take the lease, or raise `LeaseError` naming the driver that holds it."""
        current = self.read()
        if current is not None and current.get('token') != self.holder['token'] and self.is_live(current):
            raise LeaseError(f'{self.path}: the manifest is being written by another driver ({describe(current)}); '
                             f'two drivers on one store would overwrite each other\'s rows. Wait for it to finish, '
                             f'or if it is gone, remove {self.path}')
        self._write(exclusive=current is None)
        if (self.read() or {}).get('token') != self.holder['token']:
            raise LeaseError(f'{self.path}: another driver took the lease at the same moment ({describe(self.read())})')
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name='manifest-lease', daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise `LeaseError` unless this lease is still the store's (called before each manifest write)."""
        current = self.read()
        if current is None or current.get('token') != self.holder['token']:
            raise LeaseError(f'{self.path}: lost the lease on the manifest to {describe(current)}; not writing')

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if (self.read() or {}).get('token') == self.holder['token']:
            self.fs.rm_file(self.path)

    def read(self) -> dict[str, Any] | None:
        """The lease object, or None when there is none (an unreadable one counts as none)."""
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):  # UnicodeDecodeError is a ValueError
            return None

    @staticmethod
    def is_live(lease: dict[str, Any]) -> bool:
        """Before its deadline, unless its holder is a process of this host that no longer exists."""
        if lease.get('host') == socket.gethostname() and not _process_exists(int(lease.get('pid', -1))):
            return False
        return float(lease.get('expires', 0)) > time.time()

    def _write(self, exclusive: bool) -> None:
        data = json.dumps({**self.holder, 'expires': time.time() + self.ttl}).encode()
        if not isinstance(self.fs, LocalFileSystem):
            self.fs.pipe_file(self.path, data)
            return
        tmp = f'{self.path}.tmp-{os.getpid()}'
        with open(tmp, 'wb') as f:
            f.write(data)
        if exclusive:
            try:
                os.link(tmp, self.path)  # fails if another driver created it first
            except FileExistsError:
                pass  # the read-back names the winner
            os.unlink(tmp)
        else:
            os.replace(tmp, self.path)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            if (self.read() or {}).get('token') == self.holder['token']:
                self._write(exclusive=False)


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(lease: dict[str, Any] | None) -> str:
    if lease is None:
        return 'nobody (the lease object was removed)'
    left = float(lease.get('expires', 0)) - time.time()
    return f"host {lease.get('host')}, pid {lease.get('pid')}, lease expires in {left:.0f} s"

"""The trajectory manifest: one Parquet row per (task, trajectory index), rewritten atomically.

Only the collection driver writes it, and only after a trajectory's arrays are fully written,
so a row with status 'done' always describes complete data. Each write replaces the whole file
in one step (rename on local disk, a single PUT on object stores): a reader never sees half a
manifest and a killed writer never loses rows that were already there. A driver holds the
store's lease (`pipeline.lease`) while it writes, so a second driver on the same store is refused
instead of replacing the file from its own copy; a write while another driver holds a live lease
is refused too.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .lease import Lease, LeaseError, describe

SCHEMA = pa.schema([
    ('task', pa.string()), ('index', pa.int32()), ('status', pa.string()), ('seed', pa.int64()),
    ('lr', pa.float64()), ('hparams', pa.string()), ('final_train_loss', pa.float64()),
    ('final_val_loss', pa.float64()), ('final_val_acc', pa.float64()), ('wall_time', pa.float64()),
    ('host', pa.string()), ('checksum', pa.string()), ('error', pa.string()), ('updated', pa.float64()),
])

Key = tuple[str, int]


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names it."""


class Manifest:
    """Rows keyed by (task, index); `upsert` writes the file."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self._lease = Lease(fs, path)
        self.rows: dict[Key, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the rows from the file again (e.g. once the lease is held: another driver may have added some)."""
        fs, path = self.fs, self.path
        self.rows = {}
        if fs.exists(path):
            try:
                with fs.open(path, 'rb') as f:
                    table = pq.read_table(f)
            except (pa.ArrowException, OSError) as err:
                raise ManifestError(f'{path}: not a readable manifest ({type(err).__name__}: {err}); the store '
                                    f'arrays are untouched: restore the file or move it aside') from None
            missing = sorted(set(SCHEMA.names) - set(table.column_names))
            if missing:
                raise ManifestError(f'{path}: manifest lacks column(s) {missing}')
            for row in table.to_pylist():
                self.rows[(row['task'], row['index'])] = row

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """The store's manifest lease: `with manifest.lease():` around a run that writes rows; the rows are
        read again once it is held. Raises `LeaseError` naming the holder when another driver has it."""
        with self._lease:
            self.reload()
            yield self._lease

    def done(self, task: str | None = None) -> set[Key]:
        return {k for k, r in self.rows.items() if r['status'] == 'done' and (task is None or k[0] == task)}

    def upsert(self, *rows: dict[str, Any]) -> None:
        for row in rows:
            full = {name: row.get(name) for name in SCHEMA.names}
            self.rows[(full['task'], full['index'])] = full
        self._write()

    def _write(self) -> None:
        if self._lease.held:
            self._lease.check()
        else:
            other = self._lease.read()
            if other is not None and Lease.is_live(other):
                raise LeaseError(f'{self.path}: not writing: another driver holds the manifest lease '
                                 f'({describe(other)})')
        ordered = [self.rows[k] for k in sorted(self.rows)]
        table = pa.Table.from_pylist(ordered, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        if isinstance(self.fs, LocalFileSystem):
            tmp = f'{self.path}.tmp-{os.getpid()}'
            with open(tmp, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

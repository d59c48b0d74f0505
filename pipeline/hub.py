"""The Hugging Face hub: download the published dataset and stream stores from the hub.

`download` fetches whole published files into the hub cache after checking there is disk space
for what is missing; an interrupted file resumes from its partial blob on the next call. `HubStore`
is a read-only zarr store over a dataset repository: each key is fetched on first use with
`hf_hub_download`, so the hub cache is the local chunk cache and only the chunks a reader
touches are downloaded; in offline mode (`HF_HUB_OFFLINE=1`) it serves what the cache holds.
(Uploading a store is `pipeline/publish.py`.)
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx2 as httpx
from filelock import FileLock
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import build_hf_headers
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from .published import REPO_ID, REVISION, published_task

HUB_PREFIX = 'hf://'


class DiskSpaceError(OSError):
    """Not enough free disk for a download; the message gives both numbers."""


class HubUnavailableError(OSError):
    """A file that is not in the local hub cache while the hub cannot be reached (or offline mode)."""


def missing_bytes(tasks: Iterable[str], cache_dir: str | Path | None, repo_id: str = REPO_ID,
                  revision: str = REVISION) -> int:
    """Bytes of the tasks' files that are not in the hub cache yet."""
    total = 0
    for name in tasks:
        for filename, size in published_task(name).file_sizes().items():
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision,
                                            repo_type='dataset')
            if not isinstance(cached, str):
                total += size
    return total


def download(tasks: Iterable[str], cache_dir: str | Path | None = None, repo_id: str = REPO_ID,
             revision: str = REVISION, endpoint: str | None = None) -> dict[str, list[Path]]:
    """Fetch the published files of some tasks into the hub cache; returns their local paths.

    A rerun after a failed or killed call skips complete files and resumes the one in flight
    from its partial blob. `endpoint` is another hub (a mirror); by default `HF_ENDPOINT`.
    """
    tasks = list(tasks)
    need = missing_bytes(tasks, cache_dir, repo_id, revision)
    where = Path(cache_dir or constants.HF_HUB_CACHE)
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if need > free:
        raise DiskSpaceError(f'downloading {tasks} needs {need / 1e9:.1f} GB more but {where} has '
                             f'{free / 1e9:.1f} GB free')
    paths: dict[str, list[Path]] = {}
    for name in tasks:
        paths[name] = []
        for filename in published_task(name).files():
            try:
                cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision,
                                                repo_type='dataset')
                if not isinstance(cached, str) and not constants.HF_HUB_OFFLINE:
                    fetch_blob(repo_id, filename, revision, where, endpoint)
                paths[name].append(Path(hf_hub_download(repo_id, filename, repo_type='dataset', revision=revision,
                                                        cache_dir=cache_dir, endpoint=endpoint)))
            except LocalEntryNotFoundError as err:
                raise HubUnavailableError(f'{repo_id}@{revision}: {filename} is not in the local hub cache and '
                                          f'the hub cannot be reached ({err.__class__.__name__})') from None
            except EntryNotFoundError:
                raise HubUnavailableError(f'{repo_id}@{revision} has no file {filename}') from None
            except (HfHubHTTPError, httpx.TransportError) as err:
                status = getattr(getattr(err, 'response', None), 'status_code', type(err).__name__)
                raise HubUnavailableError(f'{repo_id}@{revision}: downloading {filename} failed ({status}); '
                                          f'rerun to resume it') from None
    return paths


def fetch_blob(repo_id: str, filename: str, revision: str, cache_dir: Path, endpoint: str | None = None) -> None:
    """Download one file's blob into the hub cache, resuming from `blobs/<etag>.part` if an earlier call left one.

    (`hf_hub_download` keeps no partial file between calls; once the blob is complete it only links it into the
    snapshot, so the cache layout stays huggingface_hub's own.)
    """
    url = hf_hub_url(repo_id, filename, repo_type='dataset', revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if meta.etag is None:
        return  # let hf_hub_download report it
    blob = cache_dir / repo_folder_name(repo_id=repo_id, repo_type='dataset') / 'blobs' / meta.etag
    if blob.exists():
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(f'{blob.name}.part')
    with FileLock(f'{part}.lock'):
        if blob.exists():  # another process finished it while this one waited
            return
        with open(part, 'ab') as f:
            http_get(meta.location, f, resume_size=f.tell(), expected_size=meta.size, headers=build_hf_headers(),
                     displayed_filename=filename)
        os.replace(part, blob)


def _read(path: Path, byte_range: ByteRequest | None) -> bytes:
    with open(path, 'rb') as f:
        if byte_range is None:
            return f.read()
        size = f.seek(0, io.SEEK_END)
        if isinstance(byte_range, RangeByteRequest):
            f.seek(byte_range.start)
            return f.read(byte_range.end - byte_range.start)
        if isinstance(byte_range, OffsetByteRequest):
            f.seek(byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            f.seek(max(0, size - byte_range.suffix))
        return f.read()


class HubStore(Store):
    """Read-only zarr store over a hub dataset repository folder, fetching keys on demand."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = False

    def __init__(self, repo_id: str, revision: str = 'main', subfolder: str = '',
                 cache_dir: str | Path | None = None) -> None:
        super().__init__(read_only=True)
        self.repo_id = repo_id
        self.revision = revision
        self.subfolder = subfolder.strip('/')
        self.cache_dir = cache_dir

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HubStore) and (self.repo_id, self.revision, self.subfolder) == (
            other.repo_id, other.revision, other.subfolder)

    def __repr__(self) -> str:
        return f'HubStore({self.repo_id}@{self.revision}/{self.subfolder})'

    def fetch(self, key: str) -> Path | None:
        """Local path of a key (downloaded into the hub cache if needed), or None if the repo lacks it."""
        filename = f'{self.subfolder}/{key}' if self.subfolder else key
        try:
            return Path(hf_hub_download(self.repo_id, filename, repo_type='dataset', revision=self.revision,
                                        cache_dir=self.cache_dir))
        except LocalEntryNotFoundError as err:  # (a subclass of EntryNotFoundError: test it first)
            raise HubUnavailableError(f'{self.repo_id}@{self.revision}: {filename} is not in the local hub cache '
                                      f'and the hub cannot be reached ({err.__class__.__name__})') from None
        except EntryNotFoundError:
            return None

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        path = await asyncio.to_thread(self.fetch, key)
        if path is None:
            return None
        return prototype.buffer.from_bytes(await asyncio.to_thread(_read, path, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.fetch, key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        raise PermissionError(f'{self!r} is read-only')

    async def delete(self, key: str) -> None:
        raise PermissionError(f'{self!r} is read-only')

    async def set_partial_values(self, key_start_values) -> None:
        raise PermissionError(f'{self!r} is read-only')

    def list(self) -> AsyncIterator[str]:
        raise NotImplementedError('a hub store is read key by key; listing is not supported')

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError('a hub store is read key by key; listing is not supported')

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError('a hub store is read key by key; listing is not supported')


def parse_hub_url(url: str) -> tuple[str, str, str]:
    """`hf://datasets/OWNER/NAME[@REVISION][/FOLDER]` -> (repo_id, revision, folder)."""
    rest = url[len(HUB_PREFIX):]
    if not rest.startswith('datasets/'):
        raise ValueError(f'{url}: hub stores must be dataset repositories (hf://datasets/OWNER/NAME[@REV]/PATH)')
    parts = rest[len('datasets/'):].split('/')
    if len(parts) < 2:
        raise ValueError(f'{url}: expected hf://datasets/OWNER/NAME[@REV][/FOLDER]')
    name, _, revision = parts[1].partition('@')
    return f'{parts[0]}/{name}', revision or 'main', '/'.join(parts[2:])


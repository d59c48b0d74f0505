"""Streaming the published dataset's `.dat` files in place: only the byte ranges the windows need.

    hf-published://OWNER/NAME[@REVISION][?TASK=NTRAJxNSTATES&...]   files of a hub dataset repository
    published:URL_OR_FOLDER[?TASK=NTRAJxNSTATES&...]                  the same files anywhere fsspec reads

(`hf-published://` alone is the paper's repository at revision `mmap`.) `PublishedStore` looks like a
trajectory store to the loader: task groups for every published task whose files are there, and a
manifest in which every trajectory is done (the published files are complete). A group reads one
state as one range request on the file (the hub's resolve URL, or `cat_file` on fsspec), states of a
read in parallel threads; a dropped connection, a short answer or a 5xx is retried. Every state
fetched is kept in a cache folder (`cache_dir`, default `<hub cache>/nino-published-states`), so a
state crosses the network once; with `HF_HUB_OFFLINE=1` only cached states are read and any other is
an error naming the file and state. The query gives (trajectories, states) per task for files of
other sizes than the published ones (tests, partial mirrors).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import fsspec
import httpx2 as httpx
import numpy as np
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session

from nino.graph import param_shapes

from .hub import HubUnavailableError
from .published import PUBLISHED, REPO_ID, REVISION, PublishedTask, published_task
from .store import StoreError, TrajectoryStore
from .tasks import TaskSpec, build_model

HUB_PREFIX = 'hf-published://'
FSSPEC_PREFIX = 'published:'
RETRIES = 4
THREADS = 16  # concurrent range requests per read


def is_published_url(url: str) -> bool:
    return url.startswith((HUB_PREFIX, FSSPEC_PREFIX))


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> TrajectoryStore | PublishedStore:
    """A store for reading: the published files in place, or a trajectory store."""
    if is_published_url(url):
        return PublishedStore(url, (storage_options or {}).get('cache_dir'))
    return TrajectoryStore(url, storage_options, mode='r')


class HubRanges:
    """Byte ranges of files in a hub dataset repository, by range requests on their resolve URLs."""

    def __init__(self, repo_id: str, revision: str, endpoint: str | None = None) -> None:
        self.repo_id, self.revision, self.endpoint = repo_id, revision, endpoint
        self.where = f'{repo_id}@{revision}'

    def _url(self, filename: str) -> str:
        return hf_hub_url(self.repo_id, filename, repo_type='dataset', revision=self.revision, endpoint=self.endpoint)

    def size(self, filename: str) -> int | None:
        """The file's size, None if the repository has no such file."""
        try:
            return get_hf_file_metadata(self._url(filename)).size
        except HfHubHTTPError as err:
            if getattr(getattr(err, 'response', None), 'status_code', None) == 404:
                return None
            raise HubUnavailableError(f'{self.where}: {filename}: {err}') from None
        except httpx.TransportError as err:
            raise HubUnavailableError(f'{self.where}: the hub cannot be reached ({type(err).__name__})') from None

    def read(self, filename: str, start: int, length: int) -> bytes:
        problem = ''
        for attempt in range(RETRIES):
            headers = {**build_hf_headers(), 'Range': f'bytes={start}-{start + length - 1}'}
            try:
                response = get_session().get(self._url(filename), headers=headers, follow_redirects=True)
                if response.status_code == 206 and len(response.content) == length:
                    return response.content
                problem = f'answer {response.status_code} with {len(response.content)} of {length} bytes'
            except httpx.TransportError as err:  # e.g. the connection dropped mid-answer
                problem = type(err).__name__
            time.sleep(0.1 * 2 ** attempt)
        raise HubUnavailableError(f'{self.where}: {filename} bytes {start}..{start + length}: {problem} '
                                  f'({RETRIES} attempts)')


class FsspecRanges:
    """Byte ranges of files in a folder on any fsspec file system (or local disk)."""

    def __init__(self, url: str) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.where = url

    def size(self, filename: str) -> int | None:
        path = f'{self.path.rstrip("/")}/{filename}'
        return self.fs.size(path) if self.fs.exists(path) else None

    def read(self, filename: str, start: int, length: int) -> bytes:
        return self.fs.cat_file(f'{self.path.rstrip("/")}/{filename}', start=start, end=start + length)


class PublishedGroup:
    """One published task read in place: the parts of `TaskGroup` the loader uses."""

    def __init__(self, task: PublishedTask, source: HubRanges | FsspecRanges, cache: Path) -> None:
        self.task = task
        self.source = source
        self.cache = cache / task.name
        self.spec = TaskSpec.from_dict(task.spec_dict())
        self.layout = param_shapes(build_model(self.spec.arch))
        self.metric_names = list(task.metrics)
        self.num_params = task.n_params
        self._lock = threading.Lock()
        self._inflight: dict[Path, Future] = {}  # states being fetched: a second reader waits for the first

    @property
    def name(self) -> str:
        return self.task.name

    def read_states(self, index: int, states: np.ndarray, spans: list[tuple[int, int]] | None = None) -> np.ndarray:
        """(len(states), parameters) float16 of trajectory `index`: every parameter, or the `spans`
        ([start, stop) ranges) one after another."""
        per_part = self.task.n_traj // self.task.parts
        filename, row = self.task.part_files()[index // per_part], index % per_part
        state_bytes = 2 * self.task.n_params
        with ThreadPoolExecutor(min(THREADS, len(states))) as pool:
            blobs = list(pool.map(lambda s: self._state(filename, row, int(s), state_bytes), states))
        out = np.empty((len(states), self.task.n_params), np.float16)
        for i, blob in enumerate(blobs):
            out[i] = np.frombuffer(blob, np.float16)
        return out if spans is None else np.concatenate([out[:, a:b] for a, b in spans], 1)

    def _state(self, filename: str, row: int, state: int, state_bytes: int) -> bytes:
        """One state's bytes: from the state cache, or fetched once (concurrent reads of it share the fetch)."""
        cached = self.cache / filename / str(row) / f'{state}.bin'
        if cached.is_file():
            return cached.read_bytes()
        with self._lock:
            future = self._inflight.get(cached)
            first = future is None and not cached.is_file()  # (another thread may have just cached it)
            if first:
                future = self._inflight[cached] = Future()
        if future is None:
            return cached.read_bytes()
        if not first:
            return future.result()
        try:
            future.set_result(self._fetch(cached, filename, row, state, state_bytes))
        except BaseException as err:
            future.set_exception(err)
        finally:
            with self._lock:
                del self._inflight[cached]
        return future.result()

    def _fetch(self, cached: Path, filename: str, row: int, state: int, state_bytes: int) -> bytes:
        if _offline(self.source):
            raise HubUnavailableError(f'{self.source.where}: {filename} trajectory {row} state {state} is not in '
                                      f'the local state cache {self.cache} and HF_HUB_OFFLINE is set')
        data = self.source.read(filename, (row * self.task.n_states + state) * state_bytes, state_bytes)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f'.{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp')  # reads run on threads
        tmp.write_bytes(data)
        os.replace(tmp, cached)
        return data


def _offline(source: HubRanges | FsspecRanges) -> bool:
    """Hub sources in offline mode (`HF_HUB_OFFLINE=1`) read only cached states."""
    return isinstance(source, HubRanges) and constants.HF_HUB_OFFLINE


class _AllDone:
    """The manifest of published files: every trajectory is complete."""

    def __init__(self, groups: dict[str, PublishedGroup]) -> None:
        self._done = {(name, i) for name, g in groups.items() for i in range(g.spec.trajectories)}

    def done(self, task: str | None = None) -> set[tuple[str, int]]:
        return {k for k in self._done if task is None or k[0] == task}


class PublishedStore:
    """The published files of a hub repository or a folder, read in place (see the module docstring)."""

    def __init__(self, url: str, cache_dir: str | Path | None = None) -> None:
        self.url = url
        location, _, query = url.partition('?')
        shapes = {}
        for name, value in parse_qsl(query):
            n_traj, _, n_states = value.partition('x')
            if name not in PUBLISHED or not (n_traj.isdigit() and n_states.isdigit()):
                raise StoreError(f'{url}: expected TASK=NTRAJxNSTATES with a published task '
                                 f'({sorted(PUBLISHED)}), got {name}={value}')
            shapes[name] = (int(n_traj), int(n_states))
        if location.startswith(HUB_PREFIX):
            repo, _, revision = location[len(HUB_PREFIX):].partition('@')
            self.source = HubRanges(repo or REPO_ID, revision or REVISION, os.environ.get('HF_ENDPOINT'))
        else:
            self.source = FsspecRanges(location[len(FSSPEC_PREFIX):])
        cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE) / 'nino-published-states'
        if isinstance(self.source, HubRanges):
            cache = cache / f"{self.source.repo_id.replace('/', '--')}@{self.source.revision}"
        self.groups: dict[str, PublishedGroup] = {}
        for name in sorted(PUBLISHED):
            task = published_task(name)
            if name in shapes:
                task = task.with_shape(*shapes[name])
            elif shapes:
                continue  # a query names the tasks to read
            sizes = task.file_sizes()
            offline = _offline(self.source)
            found = {f: None if offline else self.source.size(f) for f in task.part_files()}
            if offline and not (cache / name).is_dir():
                continue
            if not offline:
                if all(size is None for size in found.values()):
                    continue
                wrong = {f: s for f, s in found.items() if s != sizes[f]}
                if wrong:
                    raise StoreError(f'{url}: {", ".join(f"{f} has {s} bytes" for f, s in wrong.items())}; '
                                     f'{name} as ({task.n_traj}, {task.n_states}, {task.n_params}) float16 means '
                                     f'{[sizes[f] for f in wrong]} (give ?{name}=NTRAJxNSTATES for other shapes)')
            self.groups[name] = PublishedGroup(task, self.source, cache)
        if not self.groups:
            offline = ' (HF_HUB_OFFLINE is set and nothing is cached)' if _offline(self.source) else ''
            raise StoreError(f'{url}: no published task files found{offline}')

    def task_names(self) -> list[str]:
        return sorted(self.groups)

    def group(self, name: str) -> PublishedGroup:
        if name not in self.groups:
            raise StoreError(f'{self.url}: no published task {name!r} (have: {self.task_names()})')
        return self.groups[name]

    def manifest(self) -> _AllDone:
        return _AllDone(self.groups)

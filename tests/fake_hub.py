"""A small Hugging Face hub endpoint on localhost, so `huggingface_hub`'s real client code can push and read
dataset repositories in tests without network.

It serves what `HfApi.create_repo`, `HfApi.upload_folder` (legacy path, `HF_HUB_DISABLE_XET=1`) and
`hf_hub_download` call: repo creation, the preupload and commit APIs, the git-LFS batch API with the basic
transfer (one PUT per file), repo info and `resolve` (HEAD/GET, byte ranges). Commits go to `main`; a test
may add branch names that resolve to the same files. The state lives in memory and every request is logged
in `FakeHub.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths committed as LFS pointers
    commits: list[str] = field(default_factory=lambda: ['0' * 40])
    branches: set[str] = field(default_factory=lambda: {'main'})  # names that resolve to the last commit

    _oids: dict[tuple[str, int, bool], str] = field(default_factory=dict)  # (path, id(data), lfs) -> oid

    def oid(self, path: str) -> str:
        """The file's LFS sha256 or git blob sha1 (computed once per content: files are large)."""
        data = self.files[path]
        key = (path, id(data), path in self.lfs)
        if key not in self._oids:
            self._oids[key] = hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_sha1(data)
        return self._oids[key]


class FakeHub:
    """`with FakeHub() as hub:` serves on `hub.endpoint` until the block ends."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # LFS objects by sha256
        self.requests: list[tuple[str, str]] = []
        self.reject_commits = 0  # refuse this many commits (an upload interrupted before its commit)
        # Faults for the next file GETs, in order: N drops the connection after N bytes, 'error' answers 503.
        self.get_faults: list[int | str] = []
        self.ranges: list[str] = []  # the Range header of every file GET ('' when absent)
        self.latency = 0.0  # seconds added before every resolve answer (a simulated round trip)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), _handler(self))
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


_REPO = r'(?P<type>datasets|models)/(?P<repo>[^/]+/[^/]+?)'


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def reply(self, status: int, body: bytes | dict = b'', headers: dict[str, str] | None = None,
                  head: bool = False) -> None:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if isinstance(body, dict):
                self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def error(self, status: int, code: str, message: str, head: bool = False) -> None:
            self.reply(status, {'error': message}, {'X-Error-Code': code, 'X-Error-Message': message}, head)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get('Content-Length', 0)))

        def authorized(self) -> bool:
            if self.headers.get('Authorization', '').startswith('Bearer '):
                return True
            self.error(401, 'Unauthorized', 'a token is required to write')
            return False

        def do_POST(self) -> None:
            hub.requests.append(('POST', self.path))
            path = self.path.split('?')[0]
            if not self.authorized():
                return
            if path == '/api/repos/create':
                req = json.loads(self.body())
                repo_id = f"{req['organization']}/{req['name']}" if req.get('organization') else f"me/{req['name']}"
                with hub.lock:
                    exists = repo_id in hub.repos
                    hub.repos.setdefault(repo_id, Repo())
                body = {'url': f'{hub.endpoint}/datasets/{repo_id}', 'name': repo_id}
                if exists:
                    body['error'] = 'You already created this dataset repo'
                return self.reply(409 if exists else 200, body)
            if m := re.fullmatch(rf'/api/{_REPO}/preupload/main', path):
                return self.preupload(hub.repos[m['repo']], json.loads(self.body()))
            if m := re.fullmatch(rf'/api/{_REPO}/commit/main', path):
                return self.commit(m['repo'], self.body())
            if re.fullmatch(rf'/{_REPO}\.git/info/lfs/objects/batch', path):
                return self.lfs_batch(json.loads(self.body()))
            self.error(404, 'NotFound', f'no route {path}')

        def preupload(self, repo: Repo, req: dict) -> None:
            files = []
            for f in req['files']:
                binary = b'\0' in base64.b64decode(f['sample']) or f['size'] > 10_000
                files.append({'path': f['path'], 'uploadMode': 'lfs' if binary else 'regular', 'shouldIgnore': False,
                              'oid': repo.oid(f['path']) if f['path'] in repo.files else None})
            self.reply(200, {'files': files})

        def lfs_batch(self, req: dict) -> None:
            objects = []
            for o in req['objects']:
                obj = {'oid': o['oid'], 'size': o['size'], 'authenticated': True}
                if o['oid'] not in hub.blobs:
                    obj['actions'] = {'upload': {'href': f"{hub.endpoint}/lfs-upload/{o['oid']}"}}
                objects.append(obj)
            self.reply(200, {'transfer': 'basic', 'objects': objects})

        def commit(self, repo_id: str, body: bytes) -> None:
            if hub.reject_commits > 0:
                hub.reject_commits -= 1
                return self.error(400, 'BadRequest', 'commit refused by the test')
            repo = hub.repos[repo_id]
            files, lfs, deleted = {}, set(), []
            for line in body.splitlines():
                item = json.loads(line)
                value = item['value']
                if item['key'] == 'file':
                    files[value['path']] = base64.b64decode(value['content'])
                elif item['key'] == 'lfsFile':
                    if value['oid'] not in hub.blobs:
                        return self.error(400, 'BadRequest', f"LFS object {value['oid']} was never uploaded")
                    files[value['path']] = hub.blobs[value['oid']]
                    lfs.add(value['path'])
                elif item['key'] in ('deletedFile', 'deletedFolder'):
                    deleted.append(value['path'])
            with hub.lock:
                for p in deleted:
                    for q in [q for q in repo.files if q == p or q.startswith(p.rstrip('/') + '/')]:
                        del repo.files[q]
                        repo.lfs.discard(q)
                repo.files.update(files)
                repo.lfs = (repo.lfs - files.keys()) | lfs
                oid = hashlib.sha1(repo.commits[-1].encode() + body).hexdigest()
                repo.commits.append(oid)
            self.reply(200, {'commitUrl': f'{hub.endpoint}/datasets/{repo_id}/commit/{oid}', 'commitOid': oid})

        def do_PUT(self) -> None:
            hub.requests.append(('PUT', self.path))
            m = re.fullmatch(r'/lfs-upload/([0-9a-f]{64})', self.path)
            data = self.body()
            if m is None or hashlib.sha256(data).hexdigest() != m[1]:
                return self.error(400, 'BadRequest', 'content does not match its oid')
            hub.blobs[m[1]] = data
            self.reply(200)

        def do_HEAD(self) -> None:
            self.resolve(head=True)

        def do_GET(self) -> None:
            self.resolve(head=False)

        def resolve(self, head: bool) -> None:
            hub.requests.append(('HEAD' if head else 'GET', self.path))
            time.sleep(hub.latency)
            if m := re.fullmatch(rf'/api/{_REPO}/revision/main', self.path.split('?')[0]):
                if m['repo'] not in hub.repos:
                    return self.error(404, 'RepoNotFound', 'Repository not found', head)
                repo = hub.repos[m['repo']]
                return self.reply(200, {'id': m['repo'], 'sha': repo.commits[-1], 'private': True,
                                        'siblings': [{'rfilename': p} for p in sorted(repo.files)]}, head=head)
            m = re.fullmatch(rf'/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)', self.path.split('?')[0])
            if m is None or m['repo'] not in hub.repos:
                return self.error(404, 'RepoNotFound', 'Repository not found', head)
            repo = hub.repos[m['repo']]
            if m['rev'] not in (*repo.branches, *repo.commits):
                return self.error(404, 'RevisionNotFound', f"Invalid rev id: {m['rev']}", head)
            if m['file'] not in repo.files:
                return self.error(404, 'EntryNotFound', f"{m['file']} does not exist", head)
            data = repo.files[m['file']]
            headers = {'X-Repo-Commit': repo.commits[-1], 'ETag': f'"{repo.oid(m["file"])}"',
                       'Accept-Ranges': 'bytes'}
            if m['file'] in repo.lfs:
                headers.update({'X-Linked-Etag': headers['ETag'], 'X-Linked-Size': str(len(data))})
            if not head:
                hub.ranges.append(self.headers.get('Range', ''))
                fault = hub.get_faults.pop(0) if hub.get_faults else None
                if fault == 'error':
                    return self.error(503, 'ServiceUnavailable', 'fault injected by the test')
                if isinstance(fault, int):
                    return self.send_truncated(data, fault, headers)
            status = 200
            if r := re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', '')):
                start, end = int(r[1]), int(r[2] or len(data) - 1)
                headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
                data, status = data[start:end + 1], 206
            self.reply(status, data, headers, head)

        def send_truncated(self, data: bytes, n: int, headers: dict[str, str]) -> None:
            """Announce the whole file, send its first n bytes, then drop the connection."""
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


def fake_hub_cache(cache: Path, repo_id: str, revision: str, files: dict[str, Path],
                   repo_type: str = 'dataset', link: bool = False) -> Path:
    """The hub cache layout huggingface_hub reads offline: refs/<revision> -> snapshots/<commit>/<files>
    (copies, or symbolic links with `link` for files too large to copy)."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = 'a' * 40
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / revision).write_text(commit)
    for name, src in files.items():
        dest = repo / 'snapshots' / commit / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if link:
            if not dest.exists():
                dest.symlink_to(Path(src).resolve())
        else:
            shutil.copyfile(src, dest)
    return repo / 'snapshots' / commit

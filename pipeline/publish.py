"""Publish a trajectory store: verify it, then upload its folder to a Hugging Face hub dataset repository.

The upload is `HfApi.upload_folder`: files the repository already holds with the same content are
skipped, so rerunning an interrupted push sends only what is missing. `HF_ENDPOINT` selects another
hub (a mirror or a self-hosted one) and `HF_TOKEN` the credentials, as everywhere in `huggingface_hub`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from .store import StoreError, TrajectoryStore
from .verify import verify_store

TEMP_FILES = ['*.tmp-*']  # a manifest being rewritten (see pipeline/manifest.py)


def push(store_dir: str | Path, repo_id: str, path_in_repo: str = '', revision: str | None = None,
         private: bool = True) -> str:
    """Verify the store at `store_dir`, upload it to dataset repo `repo_id` (created if missing), return the commit URL.

    A store with any problem (incomplete trajectory, damaged chunk, checksum mismatch) is refused with a
    `StoreError` naming the problems, and nothing is uploaded.
    """
    store = TrajectoryStore(store_dir, mode='r')
    checked, problems = verify_store(store, progress=True)
    if problems:
        listed = '; '.join(str(p) for p in problems[:5]) + (' ...' if len(problems) > 5 else '')
        raise StoreError(f'{store_dir}: not pushed, {len(problems)} problem(s) found by verify: {listed}')
    api = HfApi()
    api.create_repo(repo_id, repo_type='dataset', private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(store_dir), repo_id=repo_id, repo_type='dataset',
                             path_in_repo=path_in_repo or None, revision=revision, ignore_patterns=TEMP_FILES,
                             commit_message=f'Upload trajectory store {Path(store_dir).name} '
                                            f'({checked} trajectories)')
    return info.commit_url

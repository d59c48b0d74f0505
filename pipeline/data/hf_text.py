"""Text corpora through Hugging Face `datasets`: a hub dataset in the user's cache, or local files.

    {name: hf-text, dataset: wikitext, config: wikitext-103-raw-v1}         a hub dataset (cache or download)
    {name: hf-text, train_files: a.parquet, val_files: b.parquet}          local parquet / json / text files
    common fields: column (text), train_split (train), val_split (validation), format (from the suffix),
                   cache_dir, max_chars (cap on each split's characters), tokenizer, context

The rows of the text column are joined with newlines into one stream per split and tokenized
like `text` corpora (`pipeline.data.text`). A split the dataset lacks is cut from the end of the
training stream (`val_fraction`, default 0.1). With `HF_DATASETS_OFFLINE=1` (or no network) a
dataset that is not in the cache is a clear error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_FORMATS = {'.parquet': 'parquet', '.json': 'json', '.jsonl': 'json', '.txt': 'text', '.csv': 'csv'}


def load_hf_text(cfg: dict[str, Any]) -> tuple[str, str | None]:
    """(training text, validation text or None when the dataset has no such split)."""
    import datasets

    column = cfg.get('column', 'text')
    train_split, val_split = cfg.get('train_split', 'train'), cfg.get('val_split', 'validation')
    if 'train_files' in cfg:
        files = {train_split: cfg['train_files']}
        if 'val_files' in cfg:
            files[val_split] = cfg['val_files']
        for split, path in files.items():
            if not Path(path).exists():
                raise FileNotFoundError(f"dataset 'hf-text': {split} file not found: {path}")
        fmt = cfg.get('format') or _FORMATS.get(Path(cfg['train_files']).suffix)
        if fmt is None:
            raise ValueError(f"dataset 'hf-text': cannot tell the format of {cfg['train_files']}; set 'format' "
                             f"({', '.join(sorted(set(_FORMATS.values())))})")
        what, args = f"files {', '.join(files.values())}", (fmt,)
        kwargs: dict[str, Any] = {'data_files': files}
    elif 'dataset' in cfg:
        what, args, kwargs = f"dataset {cfg['dataset']!r}", (cfg['dataset'], cfg.get('config')), {}
    else:
        raise ValueError("dataset 'hf-text' needs field 'dataset' (a hub dataset) or 'train_files' (local files)")
    try:
        splits = datasets.load_dataset(*args, cache_dir=cfg.get('cache_dir'), **kwargs)
    except (ConnectionError, FileNotFoundError, OSError) as err:
        raise FileNotFoundError(f"dataset 'hf-text': cannot load {what} (not in the cache and no network, or "
                                f'no such dataset): {err}') from None
    if train_split not in splits:
        raise ValueError(f"dataset 'hf-text': {what} has no split {train_split!r} (has {sorted(splits)})")
    if column not in splits[train_split].column_names:
        raise ValueError(f"dataset 'hf-text': {what} has no column {column!r} "
                         f'(has {splits[train_split].column_names}); set field \'column\'')
    limit = int(cfg['max_chars']) if 'max_chars' in cfg else None
    val = _join(splits[val_split], column, limit) if val_split in splits else None
    return _join(splits[train_split], column, limit), val


def _join(split, column: str, limit: int | None) -> str:
    """The rows of one column joined with newlines, cut to `limit` characters."""
    parts, size = [], 0
    for row in split[column]:
        parts.append(row)
        size += len(row) + 1
        if limit is not None and size >= limit:
            break
    text = '\n'.join(parts)
    return text if limit is None else text[:limit]

"""Downloads of the datasets from their canonical sources, with MD5 checks.

Files land in `root` under their canonical names; a file already there with the right checksum
is not fetched again, and a download goes to a temporary name that is renamed only after its
checksum matches, so a failed or corrupted transfer never leaves a file that looks complete.
`mirror` replaces the base URL (for a local copy or an internal mirror; `file://` works).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

SOURCES: dict[str, tuple[str, dict[str, str]]] = {  # name -> (base URL, {file: md5})
    'fashion-mnist': ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/', {
        'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
        'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
        't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
        't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310'}),
    'cifar10': ('https://www.cs.toronto.edu/~kriz/', {
        'cifar-10-python.tar.gz': 'c58f30108f718f92721af3b95e74349a'}),
    'cifar100': ('https://www.cs.toronto.edu/~kriz/', {
        'cifar-100-python.tar.gz': 'eb9058c3a382ffc7106e4002c42a8d85'}),
    'tinyshakespeare': ('https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/', {
        'input.txt': '6fb458f1232090904fb40fe944165e91'}),
}


class ChecksumError(IOError):
    """A downloaded file whose MD5 differs from the expected one."""


def md5sum(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(block), b''):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, md5: str) -> Path:
    """Fetch `url` to `dest` unless a file with checksum `md5` is already there."""
    dest = Path(dest)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + '.part')
    try:
        with urllib.request.urlopen(url) as response, open(tmp, 'wb') as out:
            shutil.copyfileobj(response, out)
        got = md5sum(tmp)
        if got != md5:
            raise ChecksumError(f'{url}: MD5 {got} does not match the expected {md5}')
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_dataset(name: str, root: str | Path, mirror: str | None = None) -> Path:
    """Download (and unpack archives of) a dataset into `root`; returns `root`."""
    if name not in SOURCES:
        raise ValueError(f'unknown dataset {name!r}; downloadable: {sorted(SOURCES)}')
    base, files = SOURCES[name]
    base = mirror.rstrip('/') + '/' if mirror else base
    root = Path(root)
    for filename, md5 in files.items():
        path = download_file(base + filename, root / filename, md5)
        if filename.endswith('.tar.gz'):
            with tarfile.open(path) as tar:
                tar.extractall(root, filter='data')
    return root

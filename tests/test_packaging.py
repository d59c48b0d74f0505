"""Every third-party module the toolkit imports comes from a dependency pyproject.toml declares."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {'nino', 'pipeline', 'metatrain', 'jobs'}
#: Layers, lowest first: each may import only the layers before it.
LAYERS = ['nino', 'pipeline', 'metatrain', 'jobs']


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _imported_modules() -> dict[str, str]:
    """Top-level module -> the first file that imports it."""
    found: dict[str, str] = {}
    for package in OWN:
        for path in sorted((ROOT / package).rglob('*.py')):
            for name in _imports(path):
                found.setdefault(name.split('.')[0], str(path.relative_to(ROOT)))
    return found


def test_imports_are_declared_dependencies():
    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    declared = {re.split(r'[<>=!~\[ ;]', d, maxsplit=1)[0].lower().replace('_', '-') for d in declared}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in OWN or module in sys.stdlib_module_names or module == '__future__':
            continue
        dists = {d.lower().replace('_', '-') for d in providers.get(module, [])}
        if not dists & declared:
            missing.append(f'{module} (imported by {where}; from {sorted(dists) or "no installed distribution"})')
    assert not missing, f'undeclared dependencies: {missing}'


def test_layers_import_only_the_layers_below_them():
    """nino <- pipeline <- metatrain <- jobs: `import nino` stays light, data code never reaches up."""
    wrong = []
    for i, package in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in sorted((ROOT / package).rglob('*.py')):
            wrong += [f'{path.relative_to(ROOT)} imports {n}' for n in _imports(path) if n.split('.')[0] in above]
    assert not wrong, wrong


def test_import_nino_stays_light():
    """`import nino` (the wrapper, graphs, nowcasters, checkpoints) loads nothing of the data side."""
    import subprocess

    code = ("import nino, nino.step, nino.nowcast, sys; "
            "print(sorted({'ray', 'zarr', 'pyarrow', 'pipeline', 'metatrain', 'jobs', 'datasets'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'

"""Every third-party module the toolkit imports comes from a dependency pyproject.toml declares."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {'nino', 'pipeline', 'jobs'}


def _imported_modules() -> dict[str, str]:
    """Top-level module -> the first file that imports it."""
    found: dict[str, str] = {}
    for package in OWN:
        for path in sorted((ROOT / package).rglob('*.py')):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
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

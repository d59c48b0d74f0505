"""Reading numbers from YAML configs, the same way for every config class.

PyYAML follows YAML 1.1, where `3e-3` (no dot in the mantissa) is a string, not a float; every
config reader in the toolkit accepts such strings for float fields and names the field otherwise.
"""

from __future__ import annotations

from typing import Any


def parse_number(name: str, value: Any, kind: type, where: str = 'config') -> float | int:
    """`value` as `kind` (int or float); strings such as '3e-3' are accepted, booleans and non-integral
    floats for int fields are not. Errors name `where` and the field."""
    try:
        number = kind(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f'{where} field {name!r} must be {kind.__name__}, got {value!r}')
    return number

"""How the talking commands print message bodies: as JSON, bytes as text (or hex
where they are not UTF-8), anything JSON cannot carry as its ``repr``."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dump", "printable"]


def printable(value: Any) -> Any:
    """A message body as JSON can carry it (bytes as text or hex)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, dict):
        return {str(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value


def dump(value: Any) -> str:
    """``value`` as one line of JSON."""
    return json.dumps(printable(value), ensure_ascii=False, default=repr)

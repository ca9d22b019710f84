"""Public names report the module users import them from.

``shoal.Publisher`` is defined in ``shoal.patterns._pubsub``; its reprs, tracebacks
and documentation should say ``shoal.Publisher``. Each public package calls
``claim`` on its ``__all__``; ``shoal`` itself claims last, so a name exported at the
top and in a subpackage reports the top. ``defined_in`` still tells where the source
is (for tools that read it, such as the exporter's help texts).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping

__all__ = ["claim", "defined_in"]

_origins: dict[object, str] = {}


def claim(namespace: Mapping[str, object], names: Iterable[str], module: str) -> None:
    """Make every class and function among ``names`` in ``namespace`` that shoal
    defines in a private module report ``module`` as its ``__module__``."""
    for name in names:
        obj = namespace.get(name)
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue
        here = obj.__module__
        if here == module or not (here == "shoal" or here.startswith("shoal.")):
            continue
        _origins.setdefault(obj, here)
        obj.__module__ = module


def defined_in(obj: object) -> str:
    """The module whose source defines ``obj`` (a claimed name's private module)."""
    return _origins.get(obj, getattr(obj, "__module__", ""))

"""Seed sweeps split into chunks: the first chunk in the quick loop, the whole sweep in
the full run.

A simulation run over thousands of seeds is a soak of the state machines in virtual
time: its first chunk (a few hundred seeds) catches what a change breaks outright, the
rest finds the rare interleavings. The rest carries the ``lab`` marker, so ``pytest -m
"not lab"`` runs one chunk and plain ``pytest`` (CI) every seed.
"""

from __future__ import annotations

from typing import Any

import pytest


def chunks(n: int) -> list[Any]:
    """Parameters 0..n-1 for a ``chunk`` argument; all but the first are ``lab``."""
    return [0, *(pytest.param(c, marks=pytest.mark.lab) for c in range(1, n))]

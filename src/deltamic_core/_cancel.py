"""Cooperative cancellation points inside long core work (e.g. a fit's level change).

A caller that may have to abandon some long, side-effect-free work (the membranes' rebuild and
remesh of a :class:`~deltamic_core.fit.Fitter`'s level change take seconds) runs it inside
``with cancellable(check):``; the work calls :func:`checkpoint` between its pieces (a patch
remeshed, a junction edge collapsed, a cell measured), which calls ``check()`` there, and
``check`` raises to abandon it (``Fitter._check_cancelled`` raises ``FitCancelled``). Outside
such a block (or in another thread: the check is per thread) :func:`checkpoint` does nothing,
so the same functions called from a plain script or a worker never stop half way.

Only work that leaves its inputs untouched may contain checkpoints: abandoning it must leave
nothing half-done behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["cancellable", "checkpoint"]

_local = threading.local()


@contextmanager
def cancellable(check: Callable[[], None]) -> Iterator[None]:
    """While the block runs in this thread, every :func:`checkpoint` calls ``check()``."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def checkpoint() -> None:
    """A point where the work in progress may be abandoned (``check()`` raises), if any caller
    in this thread asked for it; otherwise nothing."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()

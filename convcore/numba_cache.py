"""Numba's disk cache shared by several processes: saves taken one at a time, a poisoned entry bypassed.

Numba saves a compiled overload by reading the cache's index, taking the first free data-file
number, and writing the index and the data file back, with no lock between processes. Two processes
that compile different overloads of one function at once (two service workers warming up, two
training scripts, pytest-xdist) can both take the same number: the index then sends one signature to
the other's machine code, and every later process fails on that loop ("can't unbox array") until
the cache is deleted.

``lock_saves(dispatcher)`` makes each save of a cached dispatcher hold an exclusive ``flock`` on a
file beside its index, so concurrent convcore processes save one after the other (each save reads
the index afresh under the lock). ``uncached(dispatcher)`` is the same function compiled without
the cache, for a call whose cached overload turns out to be another's (``direct_kernel._specialised``).
"""
from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)

LOCK_NAME = "convcore-numba-cache.lock"


def lock_path(dispatcher) -> str | None:
    """The lock file of a cached dispatcher's cache folder; None when it has no disk cache."""
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "cache_path", None)   # numba.core.caching.Cache; NullCache has none
    return os.path.join(path, LOCK_NAME) if isinstance(path, str) else None


@contextlib.contextmanager
def held(path: str):
    """An exclusive ``flock`` on ``path`` (created if missing) for the block; without one where the
    platform or the folder gives none (no ``fcntl``, a read-only folder: then Numba cannot save
    there either)."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock


def lock_saves(dispatcher):
    """``dispatcher`` with its cache's saves made under ``held(lock_path(dispatcher))``; returned as
    it was where it has no disk cache or Numba keeps its cache differently."""
    path = lock_path(dispatcher)
    save = getattr(getattr(dispatcher, "_cache", None), "save_overload", None)
    if path is None or save is None:
        return dispatcher

    def locked_save(sig, data):
        with held(path):
            return save(sig, data)

    dispatcher._cache.save_overload = locked_save
    return dispatcher


def uncached(dispatcher):
    """The dispatcher's function compiled anew with the same options and no disk cache."""
    import numba
    folder = os.path.dirname(lock_path(dispatcher) or "")
    log.warning("Numba's disk cache of %s (in %s) holds another loop's code for this signature: compiling "
                "it in this process instead (deleting that folder's files of it repairs the cache)",
                dispatcher.py_func.__name__, folder)
    return numba.njit(**dispatcher.targetoptions)(dispatcher.py_func)

"""Numba's disk cache shared by several processes: saves taken one at a time, a poisoned entry bypassed.

Numba saves a compiled overload by reading the cache's index, taking the first free data-file
number, and writing the index and the data file back, with no lock between processes. Two processes
that compile different overloads of one function at once (two service workers warming up, two
training scripts, pytest-xdist) can both take the same number: the index then sends one signature to
the other's machine code, and every later process fails on that loop ("can't unbox array") until
the cache is deleted.

``lock_saves(dispatcher)`` makes each save of a cached dispatcher hold an exclusive ``flock`` on a
file beside its index, so concurrent convcore processes save one after the other (each save reads
the index afresh under the lock), and each load a shared one. ``uncached(dispatcher)`` is the same function compiled without
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


_held_fds: set = set()   # descriptors of the locks this process holds now


def _drop_inherited_locks() -> None:
    """In a child forked while a lock was held: close the inherited descriptors (they share the
    parent's lock, so the child's own wait for it would never end, nor the parent's release)."""
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def held(path: str, shared: bool = False):
    """A ``flock`` on ``path`` (created if missing; exclusive, or shared for readers) for the block;
    without one where the platform or the folder gives none (no ``fcntl``, a folder this user
    cannot write, a file system without locks): then the block runs as Numba alone would run it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = None
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):   # flock needs no write access to the file
        try:
            fd = os.open(path, flags, 0o666)
            break
        except OSError:
            continue
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    except OSError as exc:   # NFS without a lock daemon, some FUSE mounts
        log.debug("no lock on %s (%s): Numba's cache used without one", path, exc)
        os.close(fd)
        yield
        return
    _held_fds.add(fd)
    owner = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == owner:   # (a child forked inside the block closed its copy at the fork)
            _held_fds.discard(fd)
            try:   # released explicitly: a child forked before its descriptor was listed shares it
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def lock_saves(dispatcher):
    """``dispatcher`` with its cache's saves made under ``held(lock_path(dispatcher))`` and its loads
    under a shared hold of it (Numba writes the index before the data file: a load between the two
    could read a stale file of the same number); returned as it was where it has no disk cache or
    Numba keeps its cache differently."""
    path = lock_path(dispatcher)
    cache = getattr(dispatcher, "_cache", None)
    save, load = getattr(cache, "save_overload", None), getattr(cache, "load_overload", None)
    if path is None or save is None or load is None:
        return dispatcher

    def locked_save(sig, data):
        with held(path):
            return save(sig, data)

    def locked_load(sig, target_context):
        with held(path, shared=True):
            return load(sig, target_context)

    cache.save_overload, cache.load_overload = locked_save, locked_load
    return dispatcher


def uncached(dispatcher):
    """The dispatcher's function compiled anew with the same options and no disk cache."""
    import numba
    folder = os.path.dirname(lock_path(dispatcher) or "")
    log.warning("Numba's disk cache of %s (in %s) holds another loop's code for this signature: compiling "
                "it in this process instead (deleting that folder's files of it repairs the cache)",
                dispatcher.py_func.__name__, folder)
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}   # njit's own
    return numba.njit(**options)(dispatcher.py_func)


def compiled(funcs, purpose: str, **options):
    """``funcs`` as Numba dispatchers (``numba.njit(**options)``, cached on disk where Numba can, saves
    and loads under the lock), or None where Numba does not import, does not load (a warning naming
    ``purpose``: what runs instead) or does not compile (``NUMBA_DISABLE_JIT=1``)."""
    try:
        import numba
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a Numba build that does not load with this NumPy
        log.warning("Numba does not load (%s): %s", exc, purpose)
        return None
    for cache in (True, False):
        try:
            loops = tuple(lock_saves(numba.njit(cache=cache, **options)(f)) for f in funcs)
            return loops if all(hasattr(f, "overloads") for f in loops) else None
        except Exception as exc:  # noqa: BLE001 - no folder Numba can cache in
            log.info("Numba cannot cache %s (cache=%s): %s", [f.__name__ for f in funcs], cache, exc)
    return None


def compiled_with_intrinsics(glob: dict, typers: dict, funcs, purpose: str, **options):
    """``compiled(funcs, purpose, **options)`` for loops that call LLVM intrinsics: first binds, in their
    module's globals ``glob``, ``numba.literally`` as ``literally`` and each typing function of ``typers``
    (name -> typer) as an intrinsic under its name (Numba resolves a compiled function's globals when it
    compiles it). None where Numba does not import or load."""
    try:
        import numba
        from numba.extending import intrinsic
    except Exception:  # noqa: BLE001 - missing, or a build that does not load with this NumPy (compiled says)
        return compiled(funcs, purpose, **options)
    glob["literally"] = numba.literally
    for name, typer in typers.items():
        glob[name] = intrinsic(typer)
    return compiled(funcs, purpose, **options)

"""The C allocator's settings for convcore's working arrays (glibc on Linux; a no-op elsewhere).

An engine call allocates its padded copies, tile buffers and gradient sums fresh each time: a few
MiB that glibc, by default, maps from the system per call and unmaps at free, so each call pays a
page fault per 4 KiB page touched (about 3 us each on a virtual machine), and threads faulting at
once queue on the process's memory map. Measured on 2 cores: a 64-channel 3x3 layer's forward and
backward (4 x 64 x 32 x 32, Winograd) took 23.5-27 ms with glibc's defaults and 8.7-9.2 ms with the
settings below; a 3-D 9^3 FFT layer 38-48 ms and 27-31.5 ms; layers that allocate less, the same
within a few per cent. With them, blocks up to 32 MiB come from the heap, and the main heap keeps
up to 128 MiB of freed memory at its top for the next call (what lies beyond goes back to the
system; glibc's default keeps 128 KiB, raised as it meets larger blocks). The arenas of other
threads (convcore's pool, a worker's fast lane) keep what they freed, up to their peak, until
``release()`` hands it back (every arena; a worker calls it between jobs).

``CONVCORE_MALLOC=0`` (or false / no / off), glibc's own ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` in the environment, or malloc tunables in
``GLIBC_TUNABLES`` leave the allocator as it is, and ``release()`` then does nothing. Applied once
per process, at the first convolution on the host (importing convcore changes nothing).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20   # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit; mallopt refuses more)
# An FFT layer frees more than 32 MiB a call at the heap's top ((2, 8, 32^3) with 9^3 filters):
# at 32 MiB it faulted 6789 pages a call (glibc's defaults: 4776), at 128 MiB 2. The other threads'
# arenas keep their peak whatever this is (until release()).
TRIM_THRESHOLD = 128 * 2**20
TOP_PAD = 16 * 2**20
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def _glibc():
    """glibc's handle, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version   # only glibc has it (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return None
    return libc


def wanted() -> bool:
    """Whether convcore should set the allocator: not when told not to, or when the user has."""
    if os.environ.get("CONVCORE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return not any(name in os.environ for name in GLIBC_VARIABLES)


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds above (once per process); True where they took effect."""
    libc = _glibc()
    if libc is None or not wanted():
        return False
    refused = [name for name, param, value in (
        ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("M_TOP_PAD", M_TOP_PAD, TOP_PAD)) if libc.mallopt(param, value) != 1]
    if refused:
        log.info("glibc refused convcore's allocator settings %s: those keep its defaults", refused)
    return not refused


def release() -> None:
    """Give freed heap memory back to the system now (glibc's malloc_trim, every arena): what the
    settings keep between calls, handed back between jobs. Nothing where they were not applied."""
    if keep_freed_memory.cache_info().currsize and keep_freed_memory():
        _glibc().malloc_trim(0)

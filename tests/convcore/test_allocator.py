"""convcore's allocator settings (allocator.py), seen from outside: page faults counted by the kernel.

Each case runs in a fresh interpreter (the settings are per process and applied once): it runs a
3-D layer's forward and backward (direct engine, 32 -> 16 channels on 8^3, batch 8) ten times and
reports the minor page faults (getrusage) per call. With glibc's defaults the engine's fresh arrays
are mapped from the system call after call (about 650 faults a call); with the settings the heap
keeps them (none after the first calls).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from convcore import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="the settings are glibc's (Linux); a no-op here")

PROBE = """
import json, resource
import numpy as np
import convcore
x = np.ones((8, 32, 8, 8, 8), np.float32)
W = np.ones((16, 32, 3, 3, 3), np.float32)
gy = np.ones((8, 16, 8, 8, 8), np.float32)
def call():
    op = convcore.Convolution(padding=1, algorithm="direct")
    op.forward(x, W)
    op.backward(gy)
for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    call()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"faults": faults, "applied": convcore.allocator.keep_freed_memory()}))
"""


def _probe(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "CONVCORE_MALLOC" and not k.startswith("MALLOC_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_arrays_are_reused_without_page_faults():
    result = _probe()
    assert result["applied"] is True
    assert result["faults"] < 50, result


def test_convcore_malloc_0_leaves_glibcs_defaults():
    result = _probe(CONVCORE_MALLOC="0")
    assert result["applied"] is False
    assert result["faults"] > 200, result


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                 {"CONVCORE_MALLOC": "off"}])
def test_the_users_own_glibc_settings_win(env):
    result = _probe(**env)
    assert result["applied"] is False
    assert result["faults"] > 200, result   # glibc's behaviour, as with CONVCORE_MALLOC=0


def test_release_hands_freed_heap_memory_back():
    """A pool thread's arena keeps what it freed (glibc never shrinks those heaps under the
    settings); release_memory on the host hands it back."""
    code = """
import threading
import numpy as np, convcore
from convcore import allocator
allocator.keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def work():
    arrays = [np.ones(2**20, np.float32) for _ in range(32)]   # 128 MiB in 4 MiB blocks, from the heap
    del arrays
base = rss()
thread = threading.Thread(target=work)
thread.start()
thread.join()
kept = rss() - base
convcore.release_memory(None)
print(kept, rss() - base)
"""
    environ = {k: v for k, v in os.environ.items() if k != "CONVCORE_MALLOC" and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, after = map(int, out.stdout.split())
    assert kept > 64 * 2**20          # freed, but still the process's
    assert after < kept - 64 * 2**20  # handed back

"""Numba's disk cache shared by processes (convcore/numba_cache.py): saves wait for the lock, and a
cache whose index sends one signature to another's code is bypassed, not fatal. Real processes,
real Numba caches in temporary folders."""
from __future__ import annotations

import glob
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from convcore import direct_kernel, numba_cache

if not direct_kernel.available(np, np.float32):   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here", allow_module_level=True)


def _env(cache_dir) -> dict:
    return {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1", "CONVCORE_NUM_THREADS": "2"}


def test_a_save_waits_for_the_lock(tmp_path):
    """While another process holds the cache folder's lock, a process that has compiled a loop does
    not write it to the index; it does once the lock is let go."""
    (tmp_path / "snippet.py").write_text(textwrap.dedent("""
        import numba
        @numba.njit(cache=True)
        def twice(a):
            return 2.0 * a
    """))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import snippet
        from convcore import numba_cache
        numba_cache.lock_saves(snippet.twice)
        print(numba_cache.lock_path(snippet.twice), flush=True)
        assert snippet.twice(1.5) == 3.0
        print("saved", flush=True)
    """)
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = {}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env(cache))
    try:
        lock["path"] = proc.stdout.readline().strip()
        assert lock["path"].startswith(str(cache)) and lock["path"].endswith(numba_cache.LOCK_NAME)
        os.makedirs(os.path.dirname(lock["path"]), exist_ok=True)
        with numba_cache.held(lock["path"]):
            time.sleep(3.0)   # compiling twice() takes well under a second
            assert proc.poll() is None
            assert not glob.glob(str(cache / "**" / "*twice*.nbi"), recursive=True)
        assert proc.stdout.readline().strip() == "saved"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert glob.glob(str(cache / "**" / "*twice*.nbi"), recursive=True)


CONV = textwrap.dedent("""
    import logging, sys
    import numpy as np, torch, convcore
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rng = np.random.default_rng(5)
    worst = 0.0
    # first a layer whose passes split over two threads (both fail on a poisoned loop at once), then
    # a small one (one thread)
    for dtype, (n, length) in ((np.float32, (8, 4000)), (np.float64, (8, 4000)), (np.float32, (2, 40)),
                               (np.float64, (2, 40))):
        x = rng.standard_normal((n, 8, length)).astype(dtype)
        W = rng.standard_normal((16, 8, 3)).astype(dtype)
        gy = rng.standard_normal((n, 16, length)).astype(dtype)
        tx, tW = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
        ty = torch.nn.functional.conv1d(tx, tW, padding=1)
        ty.backward(torch.tensor(gy))
        for algorithm in ("direct", "fft"):   # the direct passes; the FFT engine's channel sums
            op = convcore.Convolution(padding=1, algorithm=algorithm)
            y = op.forward(x, W)
            gx, gW, _ = op.backward(gy)
            for ours, theirs in ((y, ty.detach()), (gx, tx.grad), (gW, tW.grad)):
                theirs = theirs.numpy()
                worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
    print(worst)
""")


def test_a_poisoned_cache_is_compiled_around(tmp_path):
    """The outcome of the race the lock prevents (or of a cache written by an older convcore): each
    cached loop's index sends every signature to another signature's code (the direct passes'
    float32 output loop to the float64 one's, the FFT channel sums' likewise). A later process
    still computes the layers right (against PyTorch), compiling those loops without the cache and
    saying so."""
    cache = tmp_path / "cache"
    first = subprocess.run([sys.executable, "-c", CONV], capture_output=True, text=True, env=_env(cache), timeout=600)
    assert first.returncode == 0, first.stderr
    assert float(first.stdout) < 1e-5

    rotated = []
    for index in glob.glob(str(cache / "**" / "*.nbi"), recursive=True):
        with open(index, "rb") as f:   # Numba's own index format (pickle; its files only)
            version = pickle.load(f)
            stamp, overloads = pickle.loads(f.read())
        if len(set(overloads.values())) < 2:
            continue
        keys = sorted(overloads, key=str)
        names = [overloads[k] for k in keys]
        with open(index, "wb") as f:
            pickle.dump(version, f, protocol=-1)
            f.write(pickle.dumps((stamp, dict(zip(keys, names[1:] + names[:1]))), protocol=-1))
        rotated.append(os.path.basename(index))
    assert any("_output_loop" in name for name in rotated) and any("_sum_products" in name for name in rotated)

    second = subprocess.run([sys.executable, "-c", CONV], capture_output=True, text=True, env=_env(cache), timeout=600)
    assert second.returncode == 0, second.stderr
    assert float(second.stdout) < 1e-5
    assert "holds another loop's code for this signature" in second.stderr


def test_without_locks_the_cache_is_used_unlocked(tmp_path, monkeypatch):
    """A file system whose flock fails (NFS without a lock daemon) or a folder this user cannot
    write: the block runs without the lock instead of failing."""
    import fcntl

    def refuse(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    ran = []
    with numba_cache.held(str(tmp_path / "lock")):
        ran.append(1)
    with numba_cache.held(str(tmp_path / "missing" / "lock")):   # cannot be created
        ran.append(2)
    assert ran == [1, 2]


def test_a_child_forked_under_the_lock_does_not_keep_it(tmp_path):
    """A process forked while its parent holds the lock (a DataLoader's workers forked mid-compile)
    drops the inherited descriptor: the child's own wait for the lock ends when the parent lets go,
    and the parent's release is not held up by the child."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from convcore import numba_cache
        path = {str(tmp_path / "lock")!r}
        with numba_cache.held(path):
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)   # a child stuck on its own inherited lock dies here (exit by signal)
                with numba_cache.held(path):
                    os._exit(0)
            time.sleep(0.5)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"

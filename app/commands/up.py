"""``convnd up``: embedded Redis-protocol server + one worker + the API, stopped together."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from app.core import processes
from app.core.config import get_settings


def register(sub) -> None:
    s = get_settings()
    up = sub.add_parser("up", help="run everything on this machine: Redis (embedded unless REDIS_URL), "
                                   "one worker, the API")
    up.add_argument("--host", default=s.host, help=f"API bind address (default {s.host})")
    up.add_argument("--port", type=processes.port_number, default=s.port, help=f"API port (default {s.port})")
    up.add_argument("--redis-port", type=processes.port_number, default=0,
                    help="embedded server port (default: a free one)")
    up.add_argument("--data-dir", type=Path, default=None,
                    help="where the embedded server keeps jobs, models and datasets between runs "
                         f"(default $CONVND_DATA_DIR, else {processes.default_data_dir()})")
    up.set_defaults(func=run)


def run(args) -> int:
    settings = get_settings()
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    children = []  # started in order, stopped in reverse
    lock = None
    try:
        # Fail before starting anything: a taken port would otherwise surface as a dead API
        # after Redis and a worker were already up.
        processes.check_port_free(args.host, args.port)
        env = dict(os.environ)
        if "redis_url" in settings.model_fields_set:
            print(f"convnd up: using Redis at {settings.redis_url}", flush=True)
        else:
            if args.redis_port:
                processes.check_port_free("127.0.0.1", args.redis_port, "--redis-port")
            data_dir = (args.data_dir or Path(settings.data_dir or processes.default_data_dir())).expanduser()
            lock = processes.lock_data_dir(data_dir)
            maxmemory = settings.redis_maxmemory or processes.default_maxmemory()
            proc, url = processes.start_redis(args.redis_port or processes.free_port(), data_dir=data_dir,
                                              maxmemory=maxmemory)
            children.append(("redis", proc))
            env["REDIS_URL"] = url
            print(f"convnd up: embedded Redis-protocol server at {url}, data in {data_dir}, "
                  f"memory limit {_readable(maxmemory)}", flush=True)
        cli = [sys.executable, "-m", "app.cli"]
        worker = cli + ["worker"]
        if _is_root():
            # Celery's warning targets workers that accept pickle from a broker others can write to;
            # ours accepts JSON only, from a server bound to 127.0.0.1. Say it once, not per start.
            print("convnd up: running as root; a normal user is safer (the Docker image uses one)", flush=True)
            worker.append("--no-root-warning")
        children.append(("worker", processes.spawn(worker, env)))
        children.append(("api", processes.spawn(cli + ["api", "--host", args.host, "--port", str(args.port)], env)))
        print(f"convnd up: API on http://{args.host}:{args.port} (docs at /docs); Ctrl-C stops everything",
              flush=True)
        while not stopping:
            dead = [(name, p.returncode) for name, p in children if p.poll() is not None]
            if dead:
                print(f"convnd up: {dead[0][0]} exited with code {dead[0][1]}; stopping the rest", flush=True)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"convnd up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave children half-stopped
        for name, proc in reversed(children):
            processes.stop(proc)
        if lock is not None:
            lock.close()
        print("convnd up: stopped", flush=True)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _readable(maxmemory) -> str:
    return f"{maxmemory // 2**20} MiB" if isinstance(maxmemory, int) else str(maxmemory)

"""``convnd up``: embedded Redis-protocol server + one worker + the API, stopped together."""
from __future__ import annotations

import os
import signal
import sys
import time

from app.core import processes
from app.core.config import get_settings


def register(sub) -> None:
    s = get_settings()
    up = sub.add_parser("up", help="run everything on this machine: Redis (embedded unless REDIS_URL), "
                                   "one worker, the API")
    up.add_argument("--host", default=s.host, help=f"API bind address (default {s.host})")
    up.add_argument("--port", type=int, default=s.port, help=f"API port (default {s.port})")
    up.add_argument("--redis-port", type=int, default=0, help="embedded server port (default: a free one)")
    up.set_defaults(func=run)


def run(args) -> int:
    settings = get_settings()
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    children = []  # started in order, stopped in reverse
    try:
        env = dict(os.environ)
        if "redis_url" in settings.model_fields_set:
            print(f"convnd up: using Redis at {settings.redis_url}", flush=True)
        else:
            proc, url = processes.start_redis(args.redis_port or processes.free_port())
            children.append(("redis", proc))
            env["REDIS_URL"] = url
            print(f"convnd up: embedded Redis-protocol server at {url}", flush=True)
        cli = [sys.executable, "-m", "app.cli"]
        children.append(("worker", processes.spawn(cli + ["worker"], env)))
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
        print("convnd up: stopped", flush=True)

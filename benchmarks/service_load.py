"""Service under load (issue 7): many small forwards from concurrent clients, then Redis memory.

Starts its own stack on loopback (the embedded Redis-protocol server, one worker, the API) with a
short result TTL, sends N small forward requests (x 1x4x16x16, W 8x4x3x3, padding 1) from C client
threads, checks every answer's size, and prints:

  - requests, errors, requests/s, p50 and p99 latency;
  - the server's used_memory before the load, right after it (a finished job keeps its result and
    drops its inputs) and once the results' TTL has passed (everything expired: memory back to the
    start, no keys left behind).

    python3 benchmarks/service_load.py [--requests 1000] [--clients 12] [--ttl-s 10] [--maxmemory 256mb]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import redis

from app.core import processes

STARTUP_S = 90


def tensor(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}


def start_stack(ttl_s: int, maxmemory: str | None):
    """(processes, redis url, API url): embedded server, one worker, one open API, all ready."""
    redis_proc, url = processes.start_redis(processes.free_port(), maxmemory=maxmemory)
    port = processes.free_port()
    tag = uuid.uuid4().hex[:6]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVND_")}
    env.update(REDIS_URL=url, CONVND_KEY_PREFIX=f"load-{tag}", CONVND_QUEUE=f"load-{tag}",
               CONVND_RESULT_TTL_S=str(ttl_s), CONVND_LOG_LEVEL="WARNING")
    cli, quiet = [sys.executable, "-m", "app.cli"], {"stdout": processes.subprocess.DEVNULL,
                                                      "stderr": processes.subprocess.DEVNULL}
    procs = [redis_proc, processes.spawn(cli + ["worker", "--concurrency", "1"], env, **quiet),
             processes.spawn(cli + ["api", "--port", str(port)], env, **quiet)]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:  # /readyz is 200 once a worker's heartbeat is in Redis
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return procs, url, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    for proc in reversed(procs):
        processes.stop(proc)
    raise SystemExit(f"the stack was not ready after {STARTUP_S} s")


def run_load(base: str, body: str, requests: int, clients: int, out_values: int):
    """(latencies in s, errors, wall s): ``requests`` POSTs split over ``clients`` threads."""
    latencies, errors = [], []

    def client_loop(count: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(count):
                start = time.perf_counter()
                try:
                    resp = client.post("/v1/conv/forward", content=body, headers={"Content-Type": "application/json"})
                    if resp.status_code != 200 or len(resp.json()["y"]["data"]) != out_values:
                        errors.append(resp.status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - start)

    per, extra = divmod(requests, clients)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, [per + (i < extra) for i in range(clients)]))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--ttl-s", type=int, default=10, help="CONVND_RESULT_TTL_S of the stack")
    parser.add_argument("--maxmemory", default="256mb", help="the embedded server's memory cap")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    W = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    body = json.dumps({"x": tensor(x), "W": tensor(W), "padding": 1})
    procs, url, base = start_stack(args.ttl_s, args.maxmemory)
    try:
        r = redis.Redis.from_url(url)
        with httpx.Client(base_url=base, timeout=60) as client:  # warm-up: imports, first connections
            for _ in range(10):
                client.post("/v1/conv/forward", content=body, headers={"Content-Type": "application/json"})
        time.sleep(args.ttl_s + 2)  # the warm-up's results expire, so "before" is a clean store
        before = int(r.info("memory")["used_memory"])
        latencies, errors, wall = run_load(base, body, args.requests, args.clients, out_values=8 * 16 * 16)
        after = int(r.info("memory")["used_memory"])
        ms = np.asarray(latencies) * 1e3
        print(f"{len(latencies)} requests, {args.clients} clients: errors {len(errors)} {errors[:5]}, "
              f"{len(latencies) / wall:.1f} req/s, p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
        print(f"used_memory before {before / 2**20:.2f} MiB, right after {after / 2**20:.2f} MiB "
              f"(+{(after - before) / 2**10:.0f} KiB for {len(latencies)} results kept {args.ttl_s:.0f} s)")
        time.sleep(args.ttl_s + 3)
        print(f"used_memory {args.ttl_s + 3:.0f} s later (results expired): "
              f"{int(r.info('memory')['used_memory']) / 2**20:.2f} MiB; keys in the server {r.dbsize()} "
              f"(worker heartbeat and broker bindings)")
    finally:
        for proc in reversed(procs):
            processes.stop(proc)


if __name__ == "__main__":
    main()

"""Service latency: a small forward request end to end vs convcore in-process; throughput; JSON vs binary.

Starts its own embedded Redis-protocol server, one worker (prefork, 1 child) and the API on
loopback, then prints figures.  Usage:  python3 benchmarks/service_latency.py [--requests 300]
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

import convcore
from app.core import processes


def percentiles(times) -> str:
    t = np.asarray(times) * 1e3
    return f"p50 {np.percentile(t, 50):7.2f} ms   p99 {np.percentile(t, 99):7.2f} ms"


def tensor(a):
    return {"shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}


def start_service():
    redis_proc, url = processes.start_redis(processes.free_port())
    port = processes.free_port()
    env = {**os.environ, "REDIS_URL": url, "CONVND_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
           "CONVND_LOG_LEVEL": "WARNING"}
    cli = [sys.executable, "-m", "app.cli"]
    procs = [redis_proc, processes.spawn(cli + ["worker"], env, stdout=processes.subprocess.DEVNULL,
                                         stderr=processes.subprocess.DEVNULL),
             processes.spawn(cli + ["api", "--port", str(port)], env, stdout=processes.subprocess.DEVNULL,
                             stderr=processes.subprocess.DEVNULL)]
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/readyz").status_code == 200:
                return procs, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("service did not become ready")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    W = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    body = {"x": tensor(x), "W": tensor(W), "padding": 1}

    local = []
    for _ in range(args.requests):
        t = time.perf_counter()
        convcore.conv_forward(x, W, padding=1)
        local.append(time.perf_counter() - t)

    procs, base = start_service()
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(20):  # warm-up: connections, FFT plans, algorithm choice
                c.post("/v1/conv/forward", json=body).raise_for_status()
            remote = []
            for _ in range(args.requests):
                t = time.perf_counter()
                c.post("/v1/conv/forward", json=body).raise_for_status()
                remote.append(time.perf_counter() - t)
        print(f"small forward x{x.shape} W{W.shape}, {args.requests} sequential requests")
        print(f"  convcore in-process : {percentiles(local)}")
        print(f"  HTTP->Celery->HTTP  : {percentiles(remote)}")
        print(f"  overhead (p50)      : {1e3 * (np.median(remote) - np.median(local)):7.2f} ms")

        def client_loop(n):
            with httpx.Client(base_url=base, timeout=60) as c:
                for _ in range(n):
                    c.post("/v1/conv/forward", json=body).raise_for_status()

        per = max(1, args.requests // args.clients)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, [per] * args.clients))
        print(f"  throughput          : {per * args.clients / (time.perf_counter() - t):7.1f} requests/s "
              f"with {args.clients} concurrent clients, 1 worker")

        big = rng.standard_normal((1, 1, 2048, 2048)).astype(np.float32)  # 16 MiB
        k = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
        with httpx.Client(base_url=base, timeout=300) as c:
            t = time.perf_counter()
            json_body = json.dumps({"x": tensor(big), "W": tensor(k)}).encode()
            r = c.post("/v1/conv/forward", content=json_body, headers={"Content-Type": "application/json"})
            r.raise_for_status()
            np.asarray(r.json()["y"]["data"], dtype=np.float32)
            t_json = time.perf_counter() - t
            t = time.perf_counter()
            head = json.dumps({"x": {"shape": list(big.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": big.nbytes}},
                               "W": tensor(k), "binary_data_output": True}).encode()
            r = c.post("/v1/conv/forward", content=head + big.tobytes(),
                       headers={"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(len(head))})
            r.raise_for_status()
            n = int(r.headers["Inference-Header-Content-Length"])
            np.frombuffer(r.content[n:], dtype="<f4")
            t_bin = time.perf_counter() - t
        print(f"16 MiB input x{big.shape} FP32, round trip incl. client encode/decode")
        print(f"  JSON   : {t_json:6.2f} s  (request body {len(json_body) / 2**20:6.1f} MiB)")
        print(f"  binary : {t_bin:6.2f} s  (request body {(len(head) + big.nbytes) / 2**20:6.1f} MiB)")
    finally:
        for p in reversed(procs):
            processes.stop(p)


if __name__ == "__main__":
    main()

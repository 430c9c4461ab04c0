"""Service latency: a small forward request end to end vs convcore in-process, where the time
goes (the breakdown docs/benchmarks.md quotes), throughput, JSON vs binary.

Starts its own embedded Redis-protocol server, one worker (the configured pool, CONVND_WORKER_POOL)
and the API on loopback, then prints figures.

    python3 benchmarks/service_latency.py [--requests 300] [--clients 8] [--skip-large] [--api-processes 1]

Throughput is measured twice: with this script's own httpx clients, and with ApacheBench (``ab``)
when it is installed, whose CPU cost per request is negligible beside the service's.

A small forward takes the fast lane (worker/fastlane.py: no Celery message); run the worker with
CONVND_FAST_LANE_MAX_MADDS=0 to measure Celery's path instead. The request body is encoded once,
as a load generator would (the client's json.dumps of it is printed, not counted).

Breakdown of a small synchronous forward (p50 of each part, measured separately on the same stack):
  HTTP floor   GET /healthz: HTTP + uvicorn + FastAPI, no work
  queued       job created -> worker started it (job timings of "async" submits): on the fast lane
               the RPUSH, the worker thread's wake-up and its claim; on Celery's path the publish,
               broker delivery and the worker's hand-off to its pool
  worker       worker started -> finished (job timings): reading arrays, convolution, storing the result
  API rest     sync p50 - (HTTP floor + queued + worker): validation, job-store writes, waiting
               for the result and encoding the answer
  Celery publish  send_task to the same broker, timed in this process (to a queue no worker reads,
               emptied afterwards): what the API pays to queue a job on Celery's path, for scale

The sequential latency is measured twice: with httpx (a typical Python client, whose own CPU per
request is part of the figure on a 2-core machine) and with the standard library's http.client on
one kept-alive connection (a lean client: nearly all of its p50 is the service's).

CPU per request (read from /proc around the sequential and the concurrent runs) for each process:
the API, the worker's parent and its pool children, Redis and this client. On a busy machine wall
times wander; CPU time per request is what an A/B comparison should read.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

import convcore
from app.core import processes

JSON = {"Content-Type": "application/json"}


def percentiles(times) -> str:
    t = np.asarray(times) * 1e3
    return f"p50 {np.percentile(t, 50):7.2f} ms   p99 {np.percentile(t, 99):7.2f} ms"


def tensor(a):
    return {"shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}


def p50(values) -> float:
    return float(np.median(values)) * 1e3


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S   # utime, stime


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a prefork worker's pool processes)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def cpu_snapshot(procs) -> dict:
    """CPU seconds so far of Redis, the worker parent, its children, the API and this client."""
    redis_proc, worker, api = procs
    kids = children(worker.pid)
    # `convnd worker` runs Celery's main in its own process: the pool children are its children.
    # With several API processes, uvicorn's supervisor forks them: the API is the supervisor and its children.
    return {"api": cpu_s(api.pid) + sum(cpu_s(k) for k in children(api.pid)), "worker parent": cpu_s(worker.pid),
            "worker children": sum(cpu_s(k) for k in kids), "redis": cpu_s(redis_proc.pid),
            "client": sum(os.times()[:2])}


def print_cpu(before: dict, after: dict, requests: int, label: str) -> None:
    parts = {k: 1e3 * (after[k] - before[k]) / requests for k in before}
    shown = "  ".join(f"{k} {v:5.2f}" for k, v in parts.items())
    print(f"  CPU per request ({label}), ms: {shown}  | service total {sum(parts.values()) - parts['client']:5.2f}")


def start_service(api_processes: int | None = None):
    redis_proc, url = processes.start_redis(processes.free_port())
    port = processes.free_port()
    env = {**os.environ, "REDIS_URL": url, "CONVND_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
           "CONVND_LOG_LEVEL": "WARNING"}
    os.environ["REDIS_URL"] = url   # for the in-process publish timing (breakdown)
    cli = [sys.executable, "-m", "app.cli"]
    procs = [redis_proc, processes.spawn(cli + ["worker"], env, stdout=processes.subprocess.DEVNULL,
                                         stderr=processes.subprocess.DEVNULL),
             processes.spawn(cli + ["api", "--port", str(port)]
                             + ([] if api_processes is None else ["--workers", str(api_processes)]), env,
                             stdout=processes.subprocess.DEVNULL,
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
    parser.add_argument("--skip-large", action="store_true", help="skip the 16 MiB JSON vs binary round trip")
    parser.add_argument("--api-processes", type=int, default=None,
                        help="`convnd api --workers` (default: the service's own, CONVND_API_PROCESSES)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    W = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    body = {"x": tensor(x), "W": tensor(W), "padding": 1}
    # The body is encoded once, as a load generator would: re-encoding the same 1312 floats with the
    # standard json module took the client ~1.8 ms a request, time that is not the service's (printed below).
    raw = json.dumps(body).encode()
    encode = []
    for _ in range(50):
        t = time.perf_counter()
        json.dumps(body)
        encode.append(time.perf_counter() - t)

    local = []
    for _ in range(args.requests):
        t = time.perf_counter()
        convcore.conv_forward(x, W, padding=1)
        local.append(time.perf_counter() - t)

    procs, base = start_service(args.api_processes)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(20):  # warm-up: connections, FFT plans, algorithm choice
                c.post("/v1/conv/forward", content=raw, headers=JSON).raise_for_status()
            remote = []
            cpu_before = cpu_snapshot(procs)
            for _ in range(args.requests):
                t = time.perf_counter()
                c.post("/v1/conv/forward", content=raw, headers=JSON).raise_for_status()
                remote.append(time.perf_counter() - t)
            cpu_after = cpu_snapshot(procs)
        lean = lean_client_times(base, raw, args.requests)
        print(f"small forward x{x.shape} W{W.shape}, {args.requests} sequential requests")
        print(f"  convcore in-process : {percentiles(local)}")
        print(f"  HTTP->worker->HTTP  : {percentiles(remote)}   (httpx)")
        print(f"  overhead (p50)      : {1e3 * (np.median(remote) - np.median(local)):7.2f} ms   (httpx)")
        print(f"  HTTP->worker->HTTP  : {percentiles(lean)}   (http.client)")
        print(f"  overhead (p50)      : {1e3 * (np.median(lean) - np.median(local)):7.2f} ms   (http.client)")
        print(f"  (not counted: the client's json.dumps of this body, p50 {p50(encode):.2f} ms, done once)")
        print_cpu(cpu_before, cpu_after, args.requests, "sequential")
        breakdown(base, json.dumps({**body, "async": True}).encode(), remote, args.requests)

        def client_loop(n):
            with httpx.Client(base_url=base, timeout=60) as c:
                for _ in range(n):
                    c.post("/v1/conv/forward", content=raw, headers=JSON).raise_for_status()

        per = max(1, args.requests // args.clients)
        cpu_before = cpu_snapshot(procs)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, [per] * args.clients))
        print(f"  throughput          : {per * args.clients / (time.perf_counter() - t):7.1f} requests/s "
              f"with {args.clients} concurrent clients, 1 worker")
        print_cpu(cpu_before, cpu_snapshot(procs), per * args.clients, f"{args.clients} clients")
        native_load(procs, base, raw, args.clients, max(args.requests, 1000))

        if args.skip_large:
            return
        big = rng.standard_normal((1, 1, 2048, 2048)).astype(np.float32)  # 16 MiB
        k = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
        with httpx.Client(base_url=base, timeout=300) as c:
            t = time.perf_counter()
            json_body = json.dumps({"x": tensor(big), "W": tensor(k)}).encode()
            r = c.post("/v1/conv/forward", content=json_body, headers={"Content-Type": "application/json"})
            t_json = None   # a JSON body over the service's JSON size cap is refused (413): that is the point
            if r.status_code != 413:
                r.raise_for_status()
                np.asarray(r.json()["y"]["data"], dtype=np.float32)
                t_json = time.perf_counter() - t
            json_answer = f"{t_json:6.2f} s" if t_json is not None else f"refused ({r.status_code}: {r.text[:80]})"
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
        print(f"  JSON   : {json_answer}  (request body {len(json_body) / 2**20:6.1f} MiB)")
        print(f"  binary : {t_bin:6.2f} s  (request body {(len(head) + big.nbytes) / 2**20:6.1f} MiB)")
    finally:
        for p in reversed(procs):
            processes.stop(p)


def native_load(procs, base: str, raw: bytes, clients: int, requests: int) -> None:
    """Throughput with ApacheBench (``ab``, C) as the load generator, when it is installed: the Python
    client above spends ~3 ms of CPU a request on the same cores as the service, ab a few hundredths.
    ab speaks HTTP/1.0, so every request opens a connection (uvicorn keeps none alive for 1.0)."""
    if shutil.which("ab") is None:
        print("  throughput (ab)     : skipped: ApacheBench is not installed (Debian: apt install apache2-utils)")
        return
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(raw)
        body.flush()
        cpu_before = cpu_snapshot(procs)
        out = subprocess.run(["ab", "-q", "-c", str(clients), "-n", str(requests), "-p", body.name,
                              "-T", "application/json", base + "/v1/conv/forward"],
                             capture_output=True, text=True, check=True).stdout
        cpu_after = cpu_snapshot(procs)
    # ab counts answers whose length differs from the first as "failed" (job ids and timings vary);
    # what matters is that none was an error status.
    rate = re.search(r"Requests per second:\s+([\d.]+)", out).group(1)
    errors = re.search(r"Non-2xx responses:\s+(\d+)", out)
    print(f"  throughput (ab)     : {float(rate):7.1f} requests/s with {clients} concurrent clients, 1 worker"
          f"{f'; {errors.group(1)} non-2xx answers' if errors else ''}")
    print_cpu(cpu_before, cpu_after, requests, f"ab, {clients} clients")


def breakdown(base, raw_async: bytes, remote, requests: int) -> None:
    """Print where a small synchronous forward's time goes (see the module docstring)."""
    n = max(20, requests // 3)
    with httpx.Client(base_url=base, timeout=60) as c:
        floor = []
        for _ in range(n):
            t = time.perf_counter()
            c.get("/healthz").raise_for_status()
            floor.append(time.perf_counter() - t)
        submit, ids = [], []
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/v1/conv/forward", content=raw_async, headers=JSON)
            submit.append(time.perf_counter() - t)
            if r.status_code != 202:
                raise SystemExit(f"async submit answered {r.status_code}: {r.text[:200]}")
            ids.append(r.json()["id"])
            wait_finished(c, ids[-1])   # one job at a time: no queueing behind each other
        views = [c.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    lanes = {v["lane"] for v in views}
    queued = [v["timings"]["queued_s"] for v in views]
    run = [v["timings"]["run_s"] for v in views]
    publish = publish_seconds(n)
    print(f"breakdown of the sync p50 ({p50(remote):.2f} ms), p50 of each part, {n} samples each:")
    print(f"  HTTP floor (GET /healthz)      : {p50(floor):7.2f} ms")
    print(f"  async submit (202, for scale)  : {p50(submit):7.2f} ms")
    print(f"  queued (created -> started)    : {p50(queued):7.2f} ms   (lane: {', '.join(sorted(lanes))})")
    print(f"  worker (started -> finished)   : {p50(run):7.2f} ms")
    print(f"  API rest (sync - floor - queued - worker): "
          f"{p50(remote) - p50(floor) - p50(queued) - p50(run):7.2f} ms")
    print(f"  Celery publish (send_task)     : {p50(publish):7.2f} ms   (Celery's path only, for scale)")


def lean_client_times(base: str, raw: bytes, requests: int) -> list:
    """Seconds of each of ``requests`` sequential small forwards from the standard library's
    ``http.client`` on one kept-alive connection (after 20 to warm up): a client that spends ~0.1 ms
    of CPU a request, where httpx spends 1.5-2.5 ms on the same two cores, so this p50 is the
    service's own latency with little of the client's in it."""
    url = httpx.URL(base)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=60)
    times = []
    try:
        for i in range(requests + 20):
            start = time.perf_counter()
            conn.request("POST", "/v1/conv/forward", body=raw, headers=JSON)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"forward answered {answer.status}")
            if i >= 20:
                times.append(time.perf_counter() - start)
    finally:
        conn.close()
    return times


def wait_finished(client, job_id: str, deadline_s: float = 60.0) -> None:
    """Poll until the job has ended. Unhurried: the timings read afterwards were stamped by the
    service, and each poll is a request the API serves while the job is handed off and run (on a
    2-core machine a poll every 2 ms inflated queued and worker by competing with them)."""
    end = time.monotonic() + deadline_s
    time.sleep(0.03)
    while time.monotonic() < end:
        state = client.get(f"/v1/jobs/{job_id}").json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            if state != "succeeded":
                raise SystemExit(f"job {job_id} ended {state}")
            return
        time.sleep(0.01)
    raise SystemExit(f"job {job_id} did not finish within {deadline_s} s")


def publish_seconds(n: int) -> list:
    """Celery publish time to the benchmark's broker, on a queue no worker reads (deleted after)."""
    import redis

    from worker.celery_app import make_celery
    from worker.settings import get_runtime_settings

    settings = get_runtime_settings()
    app = make_celery(settings)
    queue = f"bench-sink-{uuid.uuid4().hex[:8]}"
    times = []
    try:
        for i in range(n + 5):   # the first publishes open connections: not counted
            t = time.perf_counter()
            app.send_task("bench.never_consumed", args=[f"job-{i}"], queue=queue)
            if i >= 5:
                times.append(time.perf_counter() - t)
    finally:
        redis.Redis.from_url(settings.redis_url).delete(queue)
    return times


if __name__ == "__main__":
    main()

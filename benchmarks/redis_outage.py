"""A Redis outage during training (issue 7): the job must end, resumed or failed with a reason.

Starts its own stack on loopback: a Redis-protocol server keeping its data in an append-only file
(as in docker-compose and ``convnd up``), one worker and the API. It submits a small digits training
job, waits for two epochs, stops the server for ``--outage-s`` seconds, restarts it on the same port
and data folder, and prints each state change of the job until it ends, then its attempts, the epoch
it resumed from, the epochs in its result, and one forward afterwards (the service is usable again).
A job that stays ``running`` until the deadline is the failure this script exists to show.

    python3 benchmarks/redis_outage.py [--outage-s 15] [--epochs 12] [--deadline-s 240] [--keep]

The server's data folder and the worker's and API's logs go in a temporary folder, deleted at the
end unless ``--keep`` (then its path is printed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.core import processes

STARTUP_S = 90
TINY_NET = [{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
            {"type": "maxpool", "kernel_size": 2}, {"type": "flatten"}, {"type": "dense", "out_features": 10}]
ENDED = ("succeeded", "failed", "cancelled")


def wait_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the stack was not ready after {STARTUP_S} s")


def follow(client: httpx.Client, job_id: str, t0: float, deadline_s: float) -> dict:
    """Print each state change of the job until it ends (or the deadline); returns the last record."""
    states, job = [], {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            job = client.get(f"/v1/jobs/{job_id}").json()
        except httpx.HTTPError as exc:
            job = {"state": f"(no answer: {type(exc).__name__})"}
        if not states or states[-1] != job.get("state"):
            states.append(job.get("state"))
            print(f"{time.monotonic() - t0:6.1f} s: {job.get('state')}", flush=True)
        if job.get("state") in ENDED:
            break
        time.sleep(0.5)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage-s", type=float, default=15.0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--deadline-s", type=float, default=240.0, help="how long to wait for the job to end")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and the logs")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="convnd-outage-"))
    port, api_port = processes.free_port(), processes.free_port()
    redis_proc, url = processes.start_redis(port, data_dir=data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVND_")}
    env.update(REDIS_URL=url, CONVND_KEY_PREFIX="outage", CONVND_QUEUE="outage", CONVND_LOG_LEVEL="WARNING")
    logs = {name: open(data_dir / f"{name}.log", "w") for name in ("worker", "api")}  # noqa: SIM115 - closed below
    cli = [sys.executable, "-m", "app.cli"]
    worker = processes.spawn(cli + ["worker", "--concurrency", "1"], env, stdout=logs["worker"], stderr=logs["worker"])
    api = processes.spawn(cli + ["api", "--port", str(api_port)], env, stdout=logs["api"], stderr=logs["api"])
    client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
    try:
        wait_ready(client)
        spec = {"model": TINY_NET, "dataset": {"name": "digits"}, "optimizer": {"type": "adam", "lr": 0.01},
                "epochs": args.epochs, "batch_size": 32, "seed": 3}
        job_id = client.post("/v1/train", json=spec).json()["id"]
        while len((client.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("history") or []) < 2:
            time.sleep(0.2)
        print("two epochs done; stopping the server", flush=True)
        t0 = time.monotonic()
        processes.stop(redis_proc)
        time.sleep(args.outage_s)
        redis_proc, _ = processes.start_redis(port, data_dir=data_dir)
        print(f"server back after {time.monotonic() - t0:.1f} s (same port, append-only file reloaded)", flush=True)
        job = follow(client, job_id, t0, args.deadline_s)
        result, progress = job.get("result") or {}, job.get("progress") or {}
        print(f"final: {job.get('state')}; attempts {result.get('attempts')}; resumed_from_epoch "
              f"{progress.get('resumed_from_epoch')}; error {job.get('error')}")
        print("epochs in the result:", [h["epoch"] for h in result.get("history", [])])
        forward = client.post("/v1/conv/forward", json={"x": {"shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                                                        "W": {"shape": [1, 1, 2], "datatype": "FP32", "data": [1, 1]}})
        print(f"a forward afterwards: {forward.status_code} {forward.json().get('y')}")
    finally:
        client.close()
        for proc in (api, worker, redis_proc):
            processes.stop(proc)
        for log in logs.values():
            log.close()
        if args.keep:
            print(f"logs and data: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

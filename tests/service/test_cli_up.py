"""``convnd up`` starts Redis, a worker and the API, answers /readyz, stops all of it on a signal,
keeps its data in its data folder across restarts, and refuses a taken port before starting anything."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis
from up_helpers import FORWARD, Up, expected_forward, up_env

from app.core import processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the processes")


def embedded_server_url(up: Up) -> str:
    return re.search(r"embedded Redis-protocol server at (redis://\S+?),", up.log()).group(1)


def test_up_serves_stops_cleanly_and_keeps_its_data(tmp_path):
    data_dir = tmp_path / "data"
    first = Up(tmp_path, "first", data_dir, env=up_env(CONVND_REDIS_MAXMEMORY="64mb"))
    try:
        worker = first.wait_ready()["workers"][0]  # on the CPU or a GPU, whichever this machine has
        assert worker["selftest"]["ok"] and worker["device_kind"] in ("cpu", "gpu")
        r = httpx.post(f"{first.url}/v1/conv/forward", json=FORWARD, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["y"]["data"] == pytest.approx(expected_forward())
        job_id = r.json()["job_id"]

        # The server keeps an append-only file in the data folder, under a memory cap that refuses writes.
        with redis.Redis.from_url(embedded_server_url(first), decode_responses=True) as server:
            config = server.config_get("*")
        assert (config["dir"], config["appendonly"]) == (str(data_dir), "yes"), config
        assert (config["maxmemory"], config["maxmemory-policy"]) == (str(64 * 2**20), "noeviction"), config

        # A second `convnd up` on the same folder would corrupt the file: it stops before starting anything.
        second = subprocess.run([sys.executable, "-m", "app.cli", "up", "--port", str(processes.free_port()),
                                 "--data-dir", str(data_dir)], env=up_env(), capture_output=True, text=True,
                                timeout=60, check=False)
        assert second.returncode == 1 and "in use by another convnd up" in second.stderr, second
        assert "embedded" not in second.stdout

        if os.geteuid() == 0:  # Celery's root warning is replaced by one line of ours
            assert "running as root" in first.log() and "superuser privileges" not in first.log()
        first.stop(signal.SIGTERM)
    finally:
        first.close()
    assert (data_dir / "appendonlydir").is_dir()

    again = Up(tmp_path, "again", data_dir)
    try:
        again.wait_ready()
        job = httpx.get(f"{again.url}/v1/jobs/{job_id}", timeout=10)
        assert job.status_code == 200 and job.json()["state"] == "succeeded", job.text
        result = httpx.get(f"{again.url}/v1/jobs/{job_id}/result", timeout=10)
        assert result.status_code == 200, result.text
        assert result.json()["y"]["data"] == pytest.approx(expected_forward())
        again.stop(signal.SIGINT)
    finally:
        again.close()


def test_up_on_a_taken_port_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "app.cli", "up", "--port", str(port),
                              "--data-dir", str(tmp_path / "data")], env=up_env(), capture_output=True, text=True,
                             timeout=60, check=False)
    assert run.returncode == 1, run
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr, run
    assert "embedded" not in run.stdout and "worker" not in run.stdout, run  # nothing was started
    assert not (tmp_path / "data").exists()
    assert "Traceback" not in run.stderr
    assert time.monotonic() - started < 30


def test_an_ephemeral_server_leaves_no_folder_behind():
    """Without a data folder (the test fixtures' servers) nothing stays on disk after stop."""
    proc, url = processes.start_redis(processes.free_port())
    scratch = proc.convnd_scratch_dir
    with redis.Redis.from_url(url, decode_responses=True) as server:
        assert server.config_get("dir")["dir"] == scratch and server.config_get("appendonly")["appendonly"] == "no"
    processes.stop(proc)
    assert not os.path.exists(scratch)

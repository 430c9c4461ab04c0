"""``convnd up`` starts Redis, a worker and the API, answers /readyz, and stops all of it on a signal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from app.core import processes


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (reads /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find leftover processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_serves_and_stops_cleanly(sig, tmp_path):
    port = processes.free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("CONVND_")}
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port)], env=env,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, ready = time.monotonic() + 60, None
        while time.monotonic() < deadline and up.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, (tmp_path / "up.log").read_text()
        assert ready.json()["workers"][0]["device"] == "cpu"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/conv/forward", timeout=30, json={
            "x": {"shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            "W": {"shape": [1, 1, 1], "datatype": "FP32", "data": [2]}})
        assert r.json()["y"]["data"] == [2.0, 4.0, 6.0]
        family = descendants(up.pid)
        assert len(family) >= 4  # redis, worker, worker child, api
        up.send_signal(sig)
        assert up.wait(30) == 0
        time.sleep(0.2)
        assert [p for p in family if alive(p)] == []
        assert "convnd up: stopped" in (tmp_path / "up.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()
        log.close()

"""Running and watching ``convnd up`` in a test: start it, wait for readiness, stop it and check
that no process of its family survives (reads /proc; Linux only)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from app.core import processes

STARTUP_S = 90
FORWARD = {"x": {"shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
           "W": {"shape": [1, 1, 2], "datatype": "FP32", "data": [1, -1]},
           "b": {"shape": [1], "datatype": "FP32", "data": [0.5]}}


def expected_forward() -> list[float]:
    """NumPy's correlation (not convcore) of FORWARD's x and W, plus b."""
    return list(np.correlate(FORWARD["x"]["data"], FORWARD["W"]["data"], "valid") + 0.5)


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


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def up_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("CONVND_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Up:
    """One ``convnd up`` subprocess with its log."""

    def __init__(self, tmp_path, name: str, data_dir, convnd=(sys.executable, "-m", "app.cli"), cwd=None,
                 env=None, startup_s: float = STARTUP_S):
        self.port = processes.free_port()
        self.startup_s = startup_s
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*convnd, "up", "--port", str(self.port), "--data-dir", str(data_dir)],
                                     env=env or up_env(), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> dict:
        """/readyz's answer once it is 200 with a worker; fails with the log after STARTUP_S."""
        deadline, last = time.monotonic() + self.startup_s, None
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                last = httpx.get(f"{self.url}/readyz", timeout=2)
                if last.status_code == 200 and last.json().get("workers"):
                    return last.json()
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        pytest.fail(f"convnd up not ready after {self.startup_s} s (exit code {self.proc.poll()}, last answer "
                    f"{last!r}); its log:\n{self.log()}")

    def stop(self, sig) -> None:
        """Signal it; it must exit 0 and leave no process of its family behind."""
        family = descendants(self.proc.pid)
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"convnd up still running 45 s after {sig!r}; its log:\n{self.log()}")
        assert code == 0, self.log()
        wait_gone(family, self.log)
        assert "convnd up: stopped" in self.log()

    def close(self) -> None:
        if self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
        self._log.close()


def wait_gone(pids: set[int], log, timeout_s: float = 10.0) -> None:
    """Wait for every pid to exit; fail naming the survivors after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return
        time.sleep(0.05)
    left = {p: " ".join(cmdline(p)) for p in pids if alive(p)}
    pytest.fail(f"still running {timeout_s} s after convnd up exited: {left}; its log:\n{log()}")

"""The quick start on a fresh machine: a new virtual environment (no system packages), the
project installed WITHOUT test extras, then ``convnd up`` serves a correct forward and stops.

The test suite's own environment has the test extras, which pull in packages the service
needs but might forget to declare (``packaging`` for kombu's Redis transport was one); only
a clean install shows such a gap.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from up_helpers import FORWARD, Up, expected_forward

ROOT = Path(__file__).resolve().parents[2]
INSTALL_S = 900  # pip may download every dependency (about 150 MB) where no local cache has them
# What a clean install needs, as the Dockerfile copies it: the build files and the packages.
SOURCES = ("pyproject.toml", "README.md", "app", "worker", "convcore")

pytestmark = [
    pytest.mark.slow(reason="creates a virtual environment and installs the project into it: a minute or more"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the processes"),
]


def clean_env(**extra) -> dict:
    """This process's environment minus anything that would reach outside the new venv or the service."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REDIS_URL", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CONVND_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(argv, what: str, timeout_s: float, **kw) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not finish in {timeout_s} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    if done.returncode != 0:
        pytest.fail(f"{what} failed with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def copy_sources(dst: Path) -> None:
    dst.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst / name)


def test_clean_install_without_test_extras_serves(tmp_path):
    src, venv, home = tmp_path / "convnd", tmp_path / "venv", tmp_path / "home"
    copy_sources(src)
    home.mkdir()
    env = clean_env()  # pip keeps its configuration and cache: a user's machine has them too
    run([sys.executable, "-m", "venv", str(venv)], "python -m venv", 120, env=env)
    python, convnd = venv / "bin" / "python", venv / "bin" / "convnd"
    started = time.monotonic()
    # the README's quick start: python3 -m pip install --no-compile -e .
    run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-e", str(src)], "pip install -e . (no extras)",
        INSTALL_S, env=env)
    install_s = time.monotonic() - started

    # Isolated from this interpreter's packages, and without the test extras.
    probe = subprocess.run([str(python), "-c", "import pytest"], capture_output=True, env=env, check=False)
    assert probe.returncode != 0, "the new venv sees the test environment's packages"
    assert run([str(convnd), "--version"], "convnd --version", 60, env=env).stdout.startswith("convnd ")

    # Started from an empty folder, so nothing is imported from a source tree but the installed one.
    up = Up(tmp_path, "up", home / "data", convnd=(str(convnd),), cwd=str(home), env=env, startup_s=180)
    try:
        ready = up.wait_ready()
        assert ready["workers"], ready
        r = httpx.post(f"{up.url}/v1/conv/forward", json=FORWARD, timeout=60)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{up.log()}"
        assert r.json()["y"]["data"] == pytest.approx(expected_forward())
        up.stop(signal.SIGTERM)
    finally:
        up.close()
    assert "Traceback" not in up.log(), up.log()
    print(f"clean install: {install_s:.0f} s")

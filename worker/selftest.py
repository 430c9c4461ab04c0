"""The start-up self-test of a worker's device: does each piece the jobs need really run there?

Four small checks against NumPy, each of which has failed on real GPU set-ups in its own way
(issue 9): a real N-D FFT (cuFFT loaded), a batched matmul (cuBLAS loaded), an elementwise
kernel (NVRTC compiles it, which needs the CUDA headers) and a convolution forward +
backward through convcore, checked against a sliding-window einsum written here in NumPy.
On the CPU the same checks run in milliseconds, so every worker reports one.

``python -m worker.selftest --gpus 0,1`` runs it on those GPUs in a fresh process and prints
one JSON document: the worker's parent uses it to choose its queue without touching CUDA
itself (a CUDA context does not survive ``fork``). Imports only NumPy and convcore, so a GPU
check script can run it without the service's packages.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import convcore
from convcore import backend

RTOL = 1e-4  # float32 sums of a few dozen terms, relative to the largest entry


def run(xp) -> dict:
    """Every check on ``xp``'s current device: ``{"ok", "device", "checks": [...], "seconds"}``.

    Never raises: a check that throws is a failed check, its exception named.
    """
    start = time.perf_counter()
    try:
        device = backend.device_name(xp)
    except Exception as exc:  # noqa: BLE001 - a broken driver fails here already
        return {"ok": False, "device": "unknown", "seconds": 0.0,
                "checks": [{"name": "device", "ok": False, "error": _describe(exc)}]}
    rng = np.random.default_rng(0)
    checks = [_check(name, fn, xp, rng) for name, fn in CHECKS]
    backend.synchronize(xp)
    return {"ok": all(c["ok"] for c in checks), "device": device, "checks": checks,
            "seconds": round(time.perf_counter() - start, 4)}


def summary(result: dict) -> str:
    """One line: 'passed' or the failed checks and why."""
    if result["ok"]:
        return "passed"
    return "failed: " + "; ".join(f"{c['name']}: {c.get('error') or 'wrong result'}"
                                  for c in result["checks"] if not c["ok"])


def _check(name, fn, xp, rng) -> dict:
    t = time.perf_counter()
    try:
        err = fn(xp, rng)
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return {"name": name, "ok": False, "error": _describe(exc), "seconds": round(time.perf_counter() - t, 4)}
    ok = bool(err <= RTOL)
    out = {"name": name, "ok": ok, "max_rel_err": float(err), "seconds": round(time.perf_counter() - t, 4)}
    if not ok:
        out["error"] = f"result differs from NumPy's by {err:.3g} (relative), over {RTOL}"
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _rel_err(got, want: np.ndarray) -> float:
    got = backend.to_host(got)
    scale = float(np.max(np.abs(want))) or 1.0
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale


def _fft(xp, rng) -> float:
    """Real 3-D FFT of a (2, 6, 10, 12) array, over the last three axes."""
    a = rng.standard_normal((2, 6, 10, 12)).astype(np.float32)
    got = backend.rfftn(xp, xp.asarray(a), (6, 10, 12), (1, 2, 3))
    want = np.fft.rfftn(a.astype(np.float64), s=(6, 10, 12), axes=(1, 2, 3))
    return max(_rel_err(got.real, want.real), _rel_err(got.imag, want.imag))


def _matmul(xp, rng) -> float:
    """A stack of 8 (17, 33) @ (33, 9) products, as the per-frequency channel mixing runs."""
    a = rng.standard_normal((8, 17, 33)).astype(np.float32)
    b = rng.standard_normal((8, 33, 9)).astype(np.float32)
    got = backend.matmul(xp, xp.asarray(a), xp.asarray(b))
    return _rel_err(got, a.astype(np.float64) @ b.astype(np.float64))


def _elementwise(xp, rng) -> float:
    """A user-defined elementwise kernel on CuPy (compiled by NVRTC at first use), else the same
    arithmetic as array expressions."""
    a = rng.standard_normal(1000).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    da, db = xp.asarray(a), xp.asarray(b)
    kernel_type = getattr(xp, "ElementwiseKernel", None)
    if kernel_type is not None:
        kernel = kernel_type("float32 a, float32 b", "float32 z", "z = a * b + 1.0f", "convnd_selftest_fma")
        got = kernel(da, db)
    else:
        got = da * db + 1.0
    return _rel_err(got, a.astype(np.float64) * b + 1.0)


def _conv(xp, rng) -> float:
    """convcore forward + all gradients, fft and direct, against a NumPy sliding-window reference."""
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    gy = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    want = _reference_conv(x, W, b, gy)
    worst = 0.0
    for algorithm in ("fft", "direct"):
        op = convcore.Convolution(padding=1, algorithm=algorithm, autotune=False)
        y = op.forward(xp.asarray(x), xp.asarray(W), xp.asarray(b))
        grads = op.backward(xp.asarray(gy), xp.asarray(x), xp.asarray(W))
        for got, ref in zip((y, grads.gx, grads.gW, grads.gb), want):
            worst = max(worst, _rel_err(got, ref))
    return worst


def _reference_conv(x, W, b, gy):
    """y, gx, gW, gb of a stride-1, padding-1 2-D cross-correlation, in float64 NumPy."""
    x, W, gy = x.astype(np.float64), W.astype(np.float64), gy.astype(np.float64)
    k = W.shape[-1]
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xpad, (k, k), axis=(2, 3))  # (n, c, h, w, k, k)
    y = np.einsum("nchwij,ocij->nohw", windows, W) + b[None, :, None, None]
    gW = np.einsum("nohw,nchwij->ocij", gy, windows)
    gxpad = np.zeros_like(xpad)
    h, w = gy.shape[2:]
    for i in range(k):
        for j in range(k):
            gxpad[:, :, i:i + h, j:j + w] += np.einsum("nohw,oc->nchw", gy, W[:, :, i, j])
    return y, gxpad[:, :, 1:-1, 1:-1], gW, gy.sum(axis=(0, 2, 3))


CHECKS = (("rfftn", _fft), ("batched_matmul", _matmul), ("elementwise_kernel", _elementwise),
          ("conv_forward_backward", _conv))


def run_on_gpus(ids) -> dict:
    """The self-test on each GPU of ``ids`` in this process: ``{"count", "gpus": {id: result}}``.

    ``count`` is the number of visible GPUs (0 and an ``error`` when CuPy or the driver is missing).
    """
    try:
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        return {"count": 0, "error": _describe(exc), "gpus": {}}
    results = {}
    for gpu in (ids if ids else range(count)):
        if not 0 <= gpu < count:
            results[str(gpu)] = {"ok": False, "device": "unknown", "checks": [],
                                 "error": f"GPU {gpu} does not exist ({count} visible)"}
            continue
        with cupy.cuda.Device(gpu):
            results[str(gpu)] = run(cupy)
            convcore.release_memory(cupy)
    return {"count": count, "gpus": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Self-test of the GPUs (CuPy) a worker would use; prints JSON.")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids (default: every visible one)")
    args = parser.parse_args(argv)
    ids = [int(i) for i in args.gpus.split(",") if i.strip()]
    json.dump(run_on_gpus(ids), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``backend.thread_stream``: a thread's own non-blocking CUDA stream, and ``backend.synchronize``
waiting for the calling thread's stream only.

Why: a worker's fast-lane thread runs small jobs beside the training job its process's Celery task
runs on the same GPU (worker/fastlane.py); on one stream each would queue behind the other's kernels.
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

import convcore
from convcore import backend


def test_the_host_has_no_stream():
    with backend.thread_stream(np) as stream:
        assert stream is None


def test_each_thread_gets_one_stream_of_its_own(gpu_backend):
    xp = gpu_backend.xp
    seen = {}

    def body(name):
        inside = []
        for _ in range(2):   # a second job of the same thread reuses its stream
            with backend.thread_stream(xp) as stream:
                inside.append((stream, xp.cuda.get_current_stream()))
        seen[name] = (inside, xp.cuda.get_current_stream())

    threads = [threading.Thread(target=body, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for inside, after in seen.values():
        (first, current), (second, _) = inside
        assert first is second and current is first and first.ptr != 0   # not the null stream
        assert after.ptr == 0                                           # restored after the block
    assert seen["a"][0][0][0] is not seen["b"][0][0][0]


def test_a_convolution_on_a_thread_stream_matches_numpys_correlate(gpu_backend):
    xp, rng = gpu_backend.xp, np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 300)).astype(np.float32)
    W = rng.standard_normal((1, 1, 7)).astype(np.float32)
    out = {}

    def body():
        with backend.thread_stream(xp):
            out["y"] = backend.to_host(convcore.conv_forward(xp.asarray(x), xp.asarray(W)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    np.testing.assert_allclose(out["y"][0, 0], np.correlate(x[0, 0], W[0, 0], mode="valid"), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy with a CUDA device: the point is real "
                    "concurrency of two CUDA streams, which the CPU stand-in cannot show")
def test_a_small_job_on_its_stream_does_not_wait_for_a_long_one_on_the_default_stream():
    import cupy as cp

    x = cp.asarray(np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32))
    W = cp.asarray(np.ones((8, 4, 3, 3), np.float32))
    big = cp.random.standard_normal((4096, 4096), dtype=cp.float32)
    cp.cuda.Stream.null.synchronize()   # made on the default stream, read on the lane's: complete them first

    # One long-lived thread runs the small jobs, as a worker's lane thread does: its stream, memory
    # pool blocks, cuBLAS handle and FFT plans are made once, in the warm-up.
    asks, answers = queue.Queue(), queue.Queue()

    def lane():
        while (on_own_stream := asks.get()) is not None:
            start = time.perf_counter()
            if on_own_stream:
                with backend.thread_stream(cp):
                    backend.to_host(convcore.conv_forward(x, W, padding=1))
            else:
                backend.to_host(convcore.conv_forward(x, W, padding=1))
            answers.put(time.perf_counter() - start)

    thread = threading.Thread(target=lane)
    thread.start()

    def small(on_own_stream: bool) -> float:
        asks.put(on_own_stream)
        return answers.get(timeout=60)

    try:
        small(True), small(False)   # warm-up: kernels compiled, the algorithm chosen
        long_s, took = [], {}
        for on_own_stream in (True, False):
            start = time.perf_counter()
            for _ in range(60):   # about 8 TFLOP queued on the default stream: hundreds of milliseconds
                big @ big
            took[on_own_stream] = small(on_own_stream)
            cp.cuda.Stream.null.synchronize()
            long_s.append(time.perf_counter() - start)
    finally:
        asks.put(None)
        thread.join()
    own, shared = took[True], took[False]
    print(f"small job: own stream {own * 1e3:.2f} ms, default stream {shared * 1e3:.2f} ms; "
          f"long job {long_s[0] * 1e3:.0f} / {long_s[1] * 1e3:.0f} ms")
    assert own < 0.25 * long_s[0], (own, long_s)
    assert shared > 0.5 * long_s[1], (shared, long_s)   # the control: on one stream it does wait

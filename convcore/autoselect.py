"""``algorithm="auto"``: the registered engine with the cheapest estimate, refined by timing.

Every engine in the registry (engines.py) estimates the seconds of one forward pass
plus all gradients with the rates of the device at hand (costs.py). When others come
within ``AMBIGUOUS`` of the cheapest (or are cheap whatever the ratio: ``ALWAYS_TIMED_SECONDS``),
the first call for that geometry times them
(forward + backward) on the real arrays, and the winner is cached per geometry,
dtype, device, budget and set of engines for the rest of the process.
"""
from __future__ import annotations

import collections
import math
import sys
import time

try:
    import resource
except ImportError:   # Windows: no peak to read there, no run repeated for it
    resource = None

from . import backend, costs, frequency_kernel, resources
from .engines import engine_names, get_engine, make_engine, no_engine_runs

AMBIGUOUS = 3.0
# ... and every engine estimated under this is timed however far from the cheapest: the model is
# off by more than AMBIGUOUS on some small layers (a 1-channel 4-D 3^4 layer: direct estimated at
# 30 ms, 5.6x the FFT engine's 5.3, ran in 4.3 against the FFT engine's 8.9), and timing one costs
# a few of its runs
ALWAYS_TIMED_SECONDS = 0.05
MAX_TIMED_SECONDS = 2.0  # don't time configurations estimated to take longer than this
MAX_DECISIONS = 4096     # geometries remembered; the oldest is forgotten first
LOSING = 1.5             # a timed run this much slower than the best so far is not repeated,
LOSING_MIN_S = 0.1       # ... when it took this long (cheap runs are repeated: noise decides those)
# A run that raised the process's peak memory by this much is run once more: memory a process has
# never used costs it about 20x more the first time (here, a VM: 2.4 ms per MiB against 0.12 ms after),
# so a 4-D 5^4 layer (4 x 32 -> 32 x 10^4) took 1.09 s on the FFT engine timed first and 0.31 s after,
# and auto kept the direct engine (0.71 s)
NEW_MEMORY_BYTES = 32 * 2**20
# Candidates estimated under CHEAP_S get CHEAP_ROUNDS timed runs (three above, one from 0.5 s): the
# FFT engine's first runs of a small layer are slower than its later ones (2-D 11x11 16 -> 16 on
# 64^2: 33, 12.6, 10.0, then 9.4 ms), and with three runs each `auto` chose the direct engine (10.4
# ms) in 2 processes of 6; with five, the FFT engine in 8 of 8
CHEAP_S = 0.05
CHEAP_ROUNDS = 5

_decisions: collections.OrderedDict = collections.OrderedDict()


def estimate_seconds(geom, itemsize: int, budget: int | None = None, rates: costs.Rates = costs.CPU_RATES) -> dict:
    """Estimated seconds of forward + all gradients, {engine name: s} over every registered engine."""
    budget = budget or 2**62
    return {name: get_engine(name).estimate(geom, itemsize, budget, rates).seconds for name in engine_names()}


def choose(xp, geom, x, W, budget: int, autotune: bool | None = None):
    """(engine name, engine or None): the algorithm for this call, cached.

    When it was decided by timing, the winning engine (already holding its spectra
    or packed input for these x and W) is returned for reuse. ``autotune=None``
    reads ``CONVCORE_AUTOTUNE``; a timed choice is cached apart from an untimed one.
    """
    autotune = resources.autotune_enabled() if autotune is None else autotune
    names = engine_names()
    key = (geom, str(x.dtype), backend.device_name(xp), budget.bit_length(), names, autotune)
    if key in _decisions:
        _decisions.move_to_end(key)
        return _decisions[key], None
    why = no_engine_runs(geom, "cpu" if backend.is_host_module(xp) else "gpu")
    if why:
        raise ValueError(why)
    est = estimate_seconds(geom, x.dtype.itemsize, budget, costs.rates_for(xp))
    best, engine = _ready_best(xp, est), None
    close = [name for name in close_calls(est, best) if _ready(xp, name)]
    if autotune and close:
        best, engine = _time_engines(xp, geom, x, W, budget, {n: est[n] for n in [best] + close})
    _decisions[key] = best
    if len(_decisions) > MAX_DECISIONS:
        _decisions.popitem(last=False)
    return best, engine


def close_calls(seconds: dict, best: str) -> list:
    """The engines timed against ``best`` (estimated seconds by name): within ``AMBIGUOUS`` of it or
    under ``ALWAYS_TIMED_SECONDS``, and never over ``MAX_TIMED_SECONDS``."""
    return [name for name, s in seconds.items() if name != best and s < MAX_TIMED_SECONDS
            and (s < AMBIGUOUS * seconds[best] or s < ALWAYS_TIMED_SECONDS)]


def _ready(xp, name: str) -> bool:
    """An engine's optional ``ready(xp)`` hook: builds what it compiles (so no timing or first call
    pays for that) and says whether it can run after all."""
    hook = getattr(get_engine(name), "ready", None)
    return hook is None or bool(hook(xp))


def _ready_best(xp, est: dict) -> str:
    """The cheapest estimate among engines that are ready (``est`` loses the others: math.inf)."""
    while True:
        best = min(est, key=est.get)
        if math.isinf(est[best]) or _ready(xp, best):
            return best
        est[best] = math.inf


def _time_engines(xp, geom, x, W, budget, estimates: dict):
    """Time forward + backward of each candidate on the real arrays; (winner, its engine).

    Each time ends with a device sync. On a device, one untimed warm-up run per
    engine first takes kernel compilation and FFT plan creation out of the timing (on the host,
    one of the FFT engine where FFTW plans its transforms).
    The candidates run in turns (one run each per round, the cheapest estimate first, then the
    others in registry order), so a burst of load from elsewhere falls on all of them rather than
    on whichever was being timed; each keeps its best time. On the host, calls estimated under
    ``CHEAP_S`` get ``CHEAP_ROUNDS`` rounds; under 0.5 s three (two let one unlucky run in eight
    pick a 1.4x slower engine for a 4-D layer), longer ones one; a run over 0.1 s and 1.5x slower
    than the best so far drops out (repeating it only spends time), but not the first run of one
    estimated under ``CHEAP_S`` on the host (it may have loaded compiled loops: the direct engine's
    first run of a 5-D 3^5 layer took 109 ms, its next ones 9, and auto kept the FFT engine's 12 ms),
    and not one that raised the process's
    peak memory by ``NEW_MEMORY_BYTES``: then it paid for memory the process had not used before and
    runs once more. Only the fastest engine so far is kept alive, so timing never holds more than
    two engines' buffers.
    """
    gy = xp.ones(geom.out_shape, dtype=x.dtype)
    # the host's first load of the compiled sums (~0.3-1 s; about a second a vector loop to compile
    # where nothing is cached), not timed
    if frequency_kernel.available(xp) and "fft" in estimates:
        frequency_kernel.warm(x.dtype.itemsize)
    if not backend.is_host_module(xp):
        for name in estimates:
            _run(make_engine(name, xp, geom, x, W, budget), gy)
            backend.synchronize(xp)
    elif "fft" in estimates and backend.plans_on_first_call(xp):
        # FFTW's first call of a shape measures plans (0.15-0.65 s): timed, it would drop the FFT
        # engine after one run as "clearly slower"
        _run(make_engine("fft", xp, geom, x, W, budget), gy)
    host = backend.is_host_module(xp)
    rounds = {name: _rounds(estimate, host) for name, estimate in estimates.items()}
    times = {name: math.inf for name in estimates}
    best, best_engine, repeated = None, None, set()
    round_ = 0
    while round_ < max(rounds.values()):
        for name in estimates:
            if round_ >= rounds[name]:
                continue
            peak = _peak_bytes()
            start = time.perf_counter()
            engine = make_engine(name, xp, geom, x, W, budget)
            _run(engine, gy)
            backend.synchronize(xp)
            seconds = time.perf_counter() - start
            times[name] = min(times[name], seconds)
            if best is None or times[name] < times[best]:
                best, best_engine = name, engine
            del engine
            if name not in repeated and _peak_bytes() - peak > NEW_MEMORY_BYTES:
                repeated.add(name)   # it paid for fresh memory: once more (once: later peaks are small)
                rounds[name] = max(rounds[name], round_ + 2)
            elif best != name and seconds > max(LOSING * times[best], LOSING_MIN_S) and not (
                    host and round_ == 0 and estimates[name] < CHEAP_S):
                rounds[name] = round_   # clearly and costly slower than the best so far: no more runs
        round_ += 1
    return best, best_engine


def _rounds(estimate: float, host: bool) -> int:
    """Timed runs of a candidate estimated at ``estimate`` seconds (see ``_time_engines``): on a device
    each has had an untimed run first, and three are enough under 0.5 s."""
    return CHEAP_ROUNDS if host and estimate < CHEAP_S else 3 if estimate < 0.5 else 1


def _peak_bytes() -> int:
    """The process's peak resident memory so far (0 where the platform does not say): Linux's VmHWM,
    which a fork or exec starts afresh (``ru_maxrss`` carries the parent's over: under pytest a child
    started at the parent's 1-2 GB and never rose), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024   # kB
    except (OSError, ValueError, IndexError):
        pass
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, KiB on BSD


def _run(engine, gy) -> None:
    engine.forward()
    engine.backward(gy, True, True)


def clear_cache() -> None:
    _decisions.clear()

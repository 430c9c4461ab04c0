"""The engines ``Convolution`` can run, by name: a written protocol and a registry.

Like SciPy's ``choose_conv_method`` beside the methods it picks from, ``auto``
(autoselect.py) considers every registered engine by its ``estimate``. Adding an
algorithm is one new module with a class that follows ``Engine`` plus one line:
``register_engine("name", TheClass)``.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from . import allocator, backend, frequency_kernel, resources
from .costs import Estimate, Rates
from .direct_conv import DirectConv
from .fft_conv import FFTConv
from .geometry import ConvGeometry
from .winograd import WinogradConv


@runtime_checkable
class Engine(Protocol):
    """One convolution on fixed arrays: forward, then any gradients, reusing its own work.

    Shapes: x (n, c_I, d_1..d_N), W (c_O, c_I // groups, k_1..k_N), gy (n, c_O, o_1..o_N).
    The constructor takes ``(xp, geom, x, W, budget)`` and must keep ``x`` and ``W`` as
    attributes; it splits its work so its working set stays under ``budget`` bytes.
    """

    x: object
    W: object

    def forward(self):
        """y (n, c_O, o...) without bias, in x's dtype and on x's device."""

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx (n, c_I, d...) or None, gW (c_O, c_I/g, k...) or None) for gy."""

    @staticmethod
    def estimate(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> Estimate:
        """Modelled seconds of forward + all gradients and the bytes of every array it allocates
        (math.inf seconds: it cannot run this layer there, and ``auto`` passes it over)."""

# Optional, for engines that do not run everything everywhere (winograd.py):
# - ``devices``: the device kinds it runs on (default ("cpu", "gpu"));
# - ``unsupported(geom, device_kind) -> str | None``: why it cannot run a layer on "cpu" or "gpu"
#   (None: it can). Cheap, no compiling. Asked for by name, the engine is refused with that reason
#   (``unsupported_reason``, which the service checks before queueing); its estimate is math.inf;
# - ``ready(xp) -> bool``: build what it compiles, and whether it runs after all. ``auto`` calls it
#   before running or timing the engine (a build failing there makes auto pass the engine over).
# - ``forward.adds_bias = True`` (an attribute of the method): ``forward(bias=b)`` returns y + b, b
#   (c_O,) in x's dtype and on its device (direct_conv.py adds it as its threads write y); otherwise
#   ``Convolution`` adds it after. A subclass that overrides ``forward`` does not inherit the mark
#   (a wrapper made with ``functools.wraps`` copies it, but its ``__wrapped__`` is seen and passed over).


_ENGINES: dict = {}


def register_engine(name: str, cls: type) -> type:
    """Make ``cls`` available as ``Convolution(algorithm=name)`` and to ``auto``; returns ``cls``."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"an engine name must be a non-empty string other than 'auto', got {name!r}")
    if name in _ENGINES:
        raise ValueError(f"engine {name!r} is already registered ({_ENGINES[name].__name__})")
    missing = [a for a in ("forward", "backward", "estimate") if not callable(getattr(cls, a, None))]
    if missing:
        raise TypeError(f"engine class {cls.__name__} lacks {missing} (see convcore.engines.Engine)")
    _ENGINES[name] = cls
    return cls


def unregister_engine(name: str) -> None:
    del _ENGINES[name]


def engine_names() -> tuple:
    """Registered engine names, in registration order."""
    return tuple(_ENGINES)


def get_engine(name: str) -> type:
    try:
        return _ENGINES[name]
    except KeyError:
        raise ValueError(f"no engine named {name!r}; registered: {engine_names()}") from None


def engine_devices(name: str) -> tuple:
    """The device kinds ("cpu", "gpu") engine ``name`` runs on."""
    return tuple(getattr(get_engine(name), "devices", ("cpu", "gpu")))


def unsupported_reason(name: str, geom: ConvGeometry, device_kind: str) -> str | None:
    """Why engine ``name`` cannot run ``geom`` on a "cpu" or "gpu" device; None when it can."""
    check = getattr(get_engine(name), "unsupported", None)
    return check(geom, device_kind) if check is not None else None


def no_engine_runs(geom: ConvGeometry, device_kind: str) -> str | None:
    """Each engine's reason when none of them can run ``geom`` there (``auto`` has nothing to pick
    from: a 62-D layer, or winograd alone registered and a 5x5 kernel), else None."""
    reasons = {name: unsupported_reason(name, geom, device_kind) for name in engine_names()}
    if all(reasons.values()):
        return "no engine runs this layer: " + "; ".join(f"{name}: {why}" for name, why in reasons.items())
    return None


def warm_up(xp=None) -> None:
    """Build (or load from Numba's disk cache) every engine's compiled loops for ``xp`` (default
    NumPy) now, so that no convolution pays for it later: a service worker calls this at start."""
    xp = np if xp is None else xp
    if frequency_kernel.available(xp):
        frequency_kernel.warm()
    for name in engine_names():
        hook = getattr(get_engine(name), "ready", None)
        if hook is not None:
            hook(xp)


def make_engine(name: str, xp, geom: ConvGeometry, x, W, budget: int):
    """The engine ``name`` for these arrays; it splits its work to stay under ``budget`` bytes.
    ValueError with the engine's own reason where it cannot run this layer on this device."""
    host = backend.is_host_module(xp)
    why = unsupported_reason(name, geom, "cpu" if host else "gpu")
    if why:
        raise ValueError(why)
    _check_output_fits(xp, geom, x.dtype.itemsize)
    if host:
        allocator.keep_freed_memory()   # once per process: see allocator.py
    return get_engine(name)(xp, geom, x, W, budget)


def _check_output_fits(xp, geom: ConvGeometry, itemsize: int) -> None:
    """MemoryError, before any work, when the output alone is larger than the device's memory (a
    26-D layer of ones with padding 1: 3^26 outputs). NumPy would refuse the array too, but the FFT
    engine would first list its chunks of rows, one per pair of rows: a hang, not an error."""
    out_bytes = math.prod(geom.out_shape) * itemsize
    total = resources.device_total_bytes(xp)
    if total is not None and out_bytes > total:
        raise MemoryError(f"the output {geom.out_shape} needs {out_bytes / 2**30:.3g} GiB, more than this "
                          f"device's {total / 2**30:.3g} GiB of memory ({geom.describe()})")


register_engine("fft", FFTConv)
register_engine("direct", DirectConv)
register_engine("winograd", WinogradConv)

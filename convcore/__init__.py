"""convcore: N-dimensional convolution with correct, fast gradients (FFT and direct, CPU and GPU).

Public entry points: ``conv_forward``, ``conv_backward`` (-> ``ConvGrads``), the reusable
``Convolution`` op that keeps spectra between forward and backward, ``gradcheck``,
``estimate_memory`` (a call's bytes before it runs), the engine registry
(``register_engine``), and the ``nn`` (layers, losses, optimizers) and ``datasets``
subpackages, imported on first use (``convcore.nn.io.load(...)`` works after ``import convcore``).
"""
import importlib

from .conv import ConvGrads, Convolution, algorithms, conv_backward, conv_forward
from .engines import Engine, engine_names, register_engine, unregister_engine, warm_up
from .memory import estimate_memory
from .resources import cpu_count, release_memory
from .geometry import ConvGeometry, make_geometry
from .gradcheck import GradcheckReport, gradcheck
from .transpose import ConvTranspose, conv_transpose_backward, conv_transpose_forward

__all__ = ["conv_forward", "conv_backward", "ConvGrads", "Convolution", "ConvGeometry", "make_geometry",
           "gradcheck", "GradcheckReport",
           "conv_transpose_forward", "conv_transpose_backward", "ConvTranspose",
           "estimate_memory", "warm_up", "Engine", "register_engine", "unregister_engine", "engine_names", "algorithms",
           "cpu_count", "release_memory", "nn", "datasets"]

_SUBPACKAGES = ("nn", "datasets")


def __getattr__(name):
    # nn and datasets load on first use: ``import convcore`` stays light for the array API.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))

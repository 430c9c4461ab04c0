"""convcore: N-dimensional convolution with correct, fast gradients (FFT and direct, CPU and GPU).

Public entry points: ``conv_forward``, ``conv_backward`` (-> ``ConvGrads``), the reusable
``Convolution`` op that keeps spectra between forward and backward, ``gradcheck``, and the
``nn`` (layers, losses, optimizers) and ``datasets`` subpackages.
"""
from .conv import ConvGrads, Convolution, conv_backward, conv_forward
from .geometry import ConvGeometry, make_geometry
from .gradcheck import GradcheckReport, gradcheck

__all__ = ["conv_forward", "conv_backward", "ConvGrads", "Convolution", "ConvGeometry", "make_geometry",
           "gradcheck", "GradcheckReport"]

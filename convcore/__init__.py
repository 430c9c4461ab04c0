"""convcore: N-dimensional convolution with correct, fast gradients (FFT and direct, CPU and GPU)."""
from .conv import ConvGrads, Convolution, conv_backward, conv_forward
from .geometry import ConvGeometry, make_geometry

__all__ = ["conv_forward", "conv_backward", "ConvGrads", "Convolution", "ConvGeometry", "make_geometry"]

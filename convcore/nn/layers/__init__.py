"""The layers of ``convcore.nn``, one concern per module."""
from .activations import LeakyReLU, ReLU, Tanh
from .base import Layer
from .conv import ConvND
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .norm import BatchNorm
from .pooling import AvgPool, GlobalAvgPool, MaxPool

LAYER_TYPES = {cls.type_name: cls for cls in (ConvND, Dense, ReLU, LeakyReLU, Tanh, MaxPool, AvgPool,
                                               GlobalAvgPool, Flatten, Dropout, BatchNorm)}

__all__ = ["Layer", "ConvND", "Dense", "ReLU", "LeakyReLU", "Tanh", "MaxPool", "AvgPool", "GlobalAvgPool",
           "Flatten", "Dropout", "BatchNorm", "LAYER_TYPES"]

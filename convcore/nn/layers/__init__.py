"""The layers of ``convcore.nn``, one concern per module."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .conv import ConvND
from .conv_transpose import ConvTransposeND
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .group_norm import GroupNorm
from .merge import Add, Concat, Merge
from .norm import BatchNorm
from .pooling import AvgPool, GlobalAvgPool, MaxPool
from .upsample import Upsample

LAYER_TYPES = {cls.type_name: cls for cls in (ConvND, ConvTransposeND, Dense, ReLU, LeakyReLU, Tanh, Sigmoid,
                                               Softmax, MaxPool, AvgPool, GlobalAvgPool, Upsample, Flatten,
                                               Dropout, BatchNorm, GroupNorm, Add, Concat)}

__all__ = ["Layer", "Merge", "ConvND", "ConvTransposeND", "Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid",
           "Softmax", "MaxPool", "AvgPool", "GlobalAvgPool", "Upsample", "Flatten", "Dropout", "BatchNorm",
           "GroupNorm", "Add", "Concat", "LAYER_TYPES"]

"""convcore.nn: N-D convolutional networks with explicit forward/backward passes (no autograd).

Layers (layers/), losses, optimizers, a JSON-spec'd Sequential model, .npz I/O and
training loops. Shapes: x (n, c, d_1..d_N); per-sample shapes omit n.
"""
from . import io
from .layers import (LAYER_TYPES, AvgPool, BatchNorm, ConvND, Dense, Dropout, Flatten, GlobalAvgPool, Layer,
                     LeakyReLU, MaxPool, ReLU, Tanh)
from .losses import LOSSES, get_loss, mse, softmax_cross_entropy
from .optim import SGD, Adam, Optimizer, make_optimizer, optimizer_spec
from .sequential import Sequential
from .spec import build_layers, footprint, validate_spec
from .train import (TrainingDiverged, evaluate, fit, get_training_state, set_training_state,
                    train_epoch)

__all__ = ["Layer", "ConvND", "Dense", "ReLU", "LeakyReLU", "Tanh", "MaxPool", "AvgPool", "GlobalAvgPool",
           "Flatten", "Dropout", "BatchNorm", "LAYER_TYPES", "softmax_cross_entropy", "mse", "get_loss", "LOSSES",
           "SGD", "Adam", "Optimizer", "make_optimizer", "optimizer_spec", "Sequential", "build_layers",
           "validate_spec", "footprint", "fit", "train_epoch", "evaluate", "get_training_state", "set_training_state",
           "TrainingDiverged", "io"]

"""convcore.nn: N-D convolutional networks with explicit forward/backward passes (no autograd).

Layers (layers/), losses, metrics, optimizers and training options, models from a JSON spec
(a sequential list or a graph with skip connections), .npz I/O and training loops.
Shapes: x (n, c, d_1..d_N); per-sample shapes omit n.

Entry points for a training service: ``check_job`` (everything but the arrays, errors naming
the field and the node), ``build_model``, ``make_optimizer``, ``TrainOptions.from_spec``,
``fit`` (with ``FitState`` for checkpoints), ``get_training_state`` / ``set_training_state``,
``final_model_arrays`` and ``predict_outputs``.
"""
from . import io
from .graph import Graph
from .job import JobError, check_job, expected_output, predict_outputs
from .layers import (LAYER_TYPES, Add, AvgPool, BatchNorm, Concat, ConvND, ConvTransposeND, Dense, Dropout, Flatten,
                     GlobalAvgPool, GroupNorm, Layer, LeakyReLU, MaxPool, ReLU, Sigmoid, Softmax, Tanh, Upsample)
from .losses import LOSSES, dice_loss, get_loss, l1, mse, softmax_cross_entropy
from .metrics import dice_iou
from .optim import SGD, Adam, Optimizer, make_optimizer, optimizer_spec
from .options import OptionError, Schedule, TrainOptions
from .sequential import Sequential, build_model
from .spec import build_layers, footprint, parse_model, validate_spec
from .train import (FitState, TrainingDiverged, evaluate, evaluation_batch, final_model_arrays, fit,
                    get_training_state, set_training_state, train_epoch)

__all__ = ["Layer", "ConvND", "ConvTransposeND", "Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax",
           "MaxPool", "AvgPool", "GlobalAvgPool", "Upsample", "Flatten", "Dropout", "BatchNorm", "GroupNorm", "Add",
           "Concat", "LAYER_TYPES", "softmax_cross_entropy", "dice_loss", "mse", "l1", "get_loss", "LOSSES",
           "dice_iou", "SGD", "Adam", "Optimizer", "make_optimizer", "optimizer_spec", "Schedule", "TrainOptions",
           "OptionError", "Sequential", "Graph", "build_model", "build_layers", "parse_model", "validate_spec",
           "footprint", "check_job", "JobError", "expected_output", "predict_outputs", "fit", "train_epoch",
           "evaluate", "evaluation_batch", "FitState", "get_training_state", "set_training_state", "final_model_arrays",
           "TrainingDiverged", "io"]

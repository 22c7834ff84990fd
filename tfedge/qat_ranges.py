"""Activation ranges of a fresh QAT model, started from data instead of [-6, 6].

tfmot's ``MovingAverageQuantizer`` (every activation and output range of the
8-bit schemes) starts each range at [-6, 6] and moves it by an exponential
moving average with decay 0.999 per training step. A QAT fine-tune of a few
hundred steps leaves every range close to [-6, 6]: an int8 step of 0.047
whatever the tensor's real spread (EfficientNetB0 on digits: all 250 ranges
had a step of 0.046 after one QAT epoch, and a tensor of spread 0.1 got two
int8 levels). The converter then builds the int8 model with those ranges; the
QAT model and the int8 kernels disagree by a step here and there, and with
steps that coarse a step is a large part of the signal.

:func:`start_ranges` sets the ranges from a few training samples before QAT
trains, as a calibration does: each pass runs the QAT model forward in
training mode once, reads the batch min / max each quantizer saw (tfmot's
moving-average update ``v += (1 - 0.999) (batch - v)`` is solved for
``batch``), puts every other variable back (BatchNormalization statistics,
pruning state) and sets the ranges. Later passes see the ranges of the
earlier layers already set. Training then moves the ranges from there with
tfmot's own moving average, as before.

Example:

>>> start_ranges(qat_model, x_train[:64])  # doctest: +SKIP
243
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge.calibration import dataset_arrays, take_x
from tfedge.quantize import flat_layers
from tfedge._keras import keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

_quantizers = tfmot.quantization.keras.quantizers

# tfmot's MovingAverageQuantizer calls MovingAvgQuantize with ema_decay=0.999 (fixed).
_EMA_DECAY = 0.999
_MIN_WIDTH = 1e-3  # a range never collapses to one point (a zero int8 scale)


def range_variables(model: Any) -> tuple[list[dict], list[dict]]:
    """The ``{"min_var", "max_var"}`` of a QAT model's activation quantizers.

    Returns:
        ``(moving_average, all_values)``: the ranges of tfmot's
        ``MovingAverageQuantizer`` (layer activations and outputs) and of its
        ``AllValuesQuantizer`` (the ``QuantizeLayer`` at the model's inputs).
    """
    moving, all_values = [], []
    for layer in flat_layers(model):
        if isinstance(layer, quantize_layer.QuantizeLayer):
            if isinstance(layer.quantizer, _quantizers.AllValuesQuantizer):
                all_values.append(layer.quantizer_vars)
        elif isinstance(layer, quantize_wrapper.QuantizeWrapper):
            for activation in layer._quantize_activations:  # pylint: disable=protected-access
                if isinstance(activation.quantizer, _quantizers.MovingAverageQuantizer):
                    moving.extend(v for v in (getattr(activation, "_pre_activation_vars", None),
                                              getattr(activation, "_post_activation_vars", None))
                                  if v)
            outputs = getattr(layer, "_output_quantizers", None)
            if outputs and isinstance(outputs[0], _quantizers.MovingAverageQuantizer):
                moving.append(layer._output_quantizer_vars)  # pylint: disable=protected-access
    return moving, all_values


def first_samples(x: Any, count: int) -> Any:
    """Up to ``count`` input samples of ``fit``'s ``x`` (arrays, a list / dict of
    arrays, a ``tf.data.Dataset`` or a ``keras.utils.Sequence``), or None for
    data that cannot be read without consuming it (a generator)."""
    if isinstance(x, tf.data.Dataset):
        return dataset_arrays(x, limit=count)[0]
    if isinstance(x, keras.utils.Sequence):
        return tf.nest.map_structure(np.asarray, take_x(x[0]))
    arrays = tf.nest.flatten(x)
    if arrays and all(hasattr(a, "shape") and hasattr(a, "__getitem__") for a in arrays):
        return tf.nest.map_structure(lambda a: np.asarray(a[:count]), x)
    return None


def start_ranges(model: Any, x: Any, passes: int = 3) -> int:
    """Sets the activation ranges of a QAT model from the input samples ``x``.

    Args:
        model: a model made by tfmot's ``quantize_apply`` (before training).
        x: a batch of inputs (what the model is called on).
        passes: forward passes; each one refines the ranges after those of
            the layers before it are set.

    Returns:
        The number of ranges set (0: the model has no activation quantizers).
    """
    moving, all_values = range_variables(model)
    if not moving and not all_values:
        return 0
    for pair in all_values:  # tfmot's all-values range only widens: start it empty
        for v in pair.values():
            v.assign(tf.zeros_like(v))
    state = [v for v in model.variables if not v.trainable]
    for _ in range(passes):
        before = [v.numpy() for v in state]
        old = [{k: v.numpy().astype("float64") for k, v in pair.items()} for pair in moving]
        model(x, training=True)
        seen = [{k: old_pair[k] + (v.numpy() - old_pair[k]) / (1.0 - _EMA_DECAY)
                 for k, v in pair.items()} for pair, old_pair in zip(moving, old)]
        for pair in seen:  # 0 in the range (as tfmot keeps it); never a single point
            pair["min_var"] = np.minimum(pair["min_var"], 0.0)
            pair["max_var"] = np.maximum(np.maximum(pair["max_var"], 0.0),
                                         pair["min_var"] + _MIN_WIDTH)
        widened = [{k: v.numpy() for k, v in pair.items()} for pair in all_values]
        for v, value in zip(state, before):
            v.assign(value)
        for pair, values in zip(moving + all_values, seen + widened):
            for k, v in pair.items():
                v.assign(np.asarray(values[k], v.dtype.as_numpy_dtype).reshape(v.shape))
    logging.info("tfedge: QAT activation ranges of %r started from %d samples (%d ranges)",
                 model.name, len(tf.nest.flatten(x)[0]), len(moving) + len(all_values))
    return len(moving) + len(all_values)

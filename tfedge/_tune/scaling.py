"""Candidates of one search: a model scaled in width, inputs resized to a resolution."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError


def _width_key(layer: Any) -> str | None:
    config = layer.get_config()
    for key in ("filters", "units"):
        if isinstance(config.get(key), int):
            return key
    return None


def _head_layers(model: Any) -> set[str]:
    """Names of the layers that set each output's width (kept unscaled)."""
    heads: set[str] = set()
    seen: set[int] = set()
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer, node_index, _ = tensor._keras_history
        if _width_key(layer):
            heads.add(layer.name)
            continue
        stack.extend(layer._inbound_nodes[node_index].keras_inputs)
    return heads


def scale_model(model: Any, width: float = 1.0, input_shape: Sequence[int] | None = None) -> Any:
    """A freshly initialized copy of ``model`` with scaled width and input size.

    The ``filters`` / ``units`` of every layer are multiplied by ``width``
    (rounded, at least 1), except the layers that produce the model's outputs,
    so the number of classes stays. Weights are not copied: the copy is for
    training from scratch.

    Args:
        model: a tf_keras functional or Sequential model.
        width: the width multiplier.
        input_shape: the new input shape without the batch dimension
            (default: the model's own).

    Returns:
        The new, untrained model.

    Raises:
        UnsupportedModelError: the model cannot be rebuilt this way (nested
            models, several inputs, or outputs whose shape would change);
            pass a ``build_fn`` to ``tune`` instead.
    """

    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"{model.name!r} has {len(model.inputs)} inputs; tune can rescale only single-"
            "input models. Pass build_fn=... that builds the model for a width and input shape.")
    if width != 1.0 and any(isinstance(layer, keras.Model) for layer in model.layers):
        raise UnsupportedModelError(
            f"{model.name!r} contains nested models, whose layers tune cannot rescale. Pass "
            "build_fn=... that builds the model for a width and input shape.")
    heads = _head_layers(model)

    def clone_layer(layer):
        config = layer.get_config()
        key = _width_key(layer)
        if key and layer.name not in heads and width != 1.0:
            config[key] = max(1, int(round(config[key] * width)))
        return layer.__class__.from_config(config)

    shape = tuple(input_shape) if input_shape is not None else tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape, dtype=model.inputs[0].dtype)
    try:
        scaled = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise UnsupportedModelError(
            f"{model.name!r} could not be rebuilt at width {width} and input {shape}: {err}. "
            "Pass build_fn=... that builds the model for a width and input shape.") from err
    for old, new in zip(model.outputs, scaled.outputs):
        if tuple(old.shape[1:]) != tuple(new.shape[1:]) and input_shape is None:
            raise UnsupportedModelError(
                f"Rescaling {model.name!r} changed an output shape from {tuple(old.shape)} to "
                f"{tuple(new.shape)}. Pass build_fn=... instead.")
    scaled._name = model.name
    return scaled


def resize_images(x: np.ndarray, resolution: int | None) -> np.ndarray:
    """Images (N, H, W, C) resized to ``resolution`` x ``resolution`` (area/bilinear)."""
    if resolution is None or tuple(x.shape[1:3]) == (resolution, resolution):
        return x

    if x.ndim != 4:
        raise ValueError(f"resolution choices need image inputs (N, H, W, C); got shape "
                         f"{x.shape}. Use resolution=[None].")
    return tf.image.resize(x, (resolution, resolution), antialias=True).numpy().astype(x.dtype)

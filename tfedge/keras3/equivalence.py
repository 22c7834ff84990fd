"""Weights and numerical equivalence of a Keras 3 model and its tf_keras twin (both directions)."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge._keras import is_keras3_model, keras
from tfedge.errors import UnsupportedModelError

from tfedge.keras3.translate import (_CHECK_BATCH, _UNKNOWN_DIM, _WAY_OUT, ATOL, RTOL, _keras3,
                                     _short)


def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model) or (is_keras3_model(layer)
                                              and isinstance(layer, _keras3().Model))


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _layer_pairs(src: Any, dst: Any, path: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(path, source layer, destination layer) for matching leaf layers, by name."""
    path = src.name if path is None else path
    by_name = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        where = f"{path}/{layer.name}"
        other = by_name.get(layer.name)
        if other is not None and _is_model(layer) and _is_model(other):
            yield from _layer_pairs(other, layer, where)
        else:
            yield where, other, layer


def _copy_weights(src: Any, dst: Any) -> list[str]:
    """Copies every weight of ``src`` into ``dst`` (matched by layer and weight
    name); returns the problems found."""
    problems = []
    matched = set()
    for where, other, layer in _layer_pairs(src, dst):
        matched.add(id(other))
        if other is None:
            if layer.weights:
                problems.append(f"{where}: no layer of that name in the source model.")
            continue
        theirs, ours = list(other.weights), list(layer.weights)
        if len(theirs) != len(ours):
            problems.append(f"{where}: {len(theirs)} weights in the source but {len(ours)} "
                            "in the copy (the two Keras versions store this layer differently).")
            continue
        names_theirs = [_short(w.name) for w in theirs]
        names_ours = [_short(w.name) for w in ours]
        if len(set(names_ours)) == len(ours) and set(names_ours) == set(names_theirs):
            lookup = dict(zip(names_theirs, theirs))
            theirs = [lookup[n] for n in names_ours]
        for mine, their in zip(ours, theirs):
            value = _numpy(their)
            if tuple(value.shape) != tuple(mine.shape):
                problems.append(f"{where}: weight {_short(mine.name)} has shape {value.shape} "
                                f"in the source but {tuple(mine.shape)} in the copy.")
                continue
            mine.assign(value)
    for where, _, layer in _layer_pairs(dst, src):
        if id(layer) not in matched and layer.weights:
            problems.append(f"{where}: only in the source model (e.g. a training layer "
                            "tfedge added, which the other Keras cannot hold).")
    return problems


def _input_specs(model: Any) -> list[tuple[tuple[int, ...], str]]:
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        specs.append(((_CHECK_BATCH,) + tuple(_UNKNOWN_DIM if d is None else int(d)
                                              for d in shape[1:]), str(dtype)))
    return specs


def _random(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return rng.uniform(-1.0, 1.0, shape).astype("float32").astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 2, shape).astype(dtype)


def _run(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    out = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    return [_numpy(t).astype(np.float64) for t in tf.nest.flatten(out)]


def _differences(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """Per output: max |difference| / allowed; above 1 means not equivalent."""
    ratios = []
    for a, b in zip(reference, candidate):
        if a.shape != b.shape:
            ratios.append(float("inf"))
            continue
        allowed = ATOL + RTOL * float(np.max(np.abs(a))) if a.size else ATOL
        ratios.append(float(np.max(np.abs(a - b))) / allowed if a.size else 0.0)
    return ratios


def max_difference(reference: Any, candidate: Any, *, seed: int = 0) -> float:
    """Largest absolute output difference of two models on the same random inputs.

    Args:
        reference: a Keras 3 or tf_keras model with known input shapes.
        candidate: a model with the same inputs and outputs.
        seed: seed of the random inputs (uniform in [-1, 1) for float inputs,
            0/1 for integer inputs; unknown dimensions are 32).

    Returns:
        The largest absolute difference over all outputs (inference mode).
    """
    rng = np.random.default_rng(seed)
    x = [_random(shape, dtype, rng) for shape, dtype in _input_specs(reference)]
    a, b = _run(reference, x), _run(candidate, x)
    return max((float(np.max(np.abs(u - v))) for u, v in zip(a, b) if u.size), default=0.0)


def _layer_input(layer: Any) -> Any:
    """The input of a layer's first call (tf_keras refuses ``.input`` for shared ones)."""
    return layer.get_input_at(0) if hasattr(layer, "get_input_at") else layer.input


def _check_layers_alone(src: Any, dst: Any,
                        rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Runs each leaf layer pair on the same random input, free of what comes before.

    Returns:
        (the layers that compute differently, with their difference; the
        layers that could not be run alone).
    """
    culprits, unchecked = [], []
    for where, other, layer in _layer_pairs(src, dst):
        if other is None or type(layer).__name__ == "InputLayer":
            continue
        try:
            x = tf.nest.map_structure(
                lambda t: _random((2,) + tuple(_UNKNOWN_DIM if d is None else int(d)
                                               for d in tuple(t.shape)[1:]),
                                  str(getattr(t.dtype, "name", t.dtype)), rng),
                _layer_input(other))
            a = [_numpy(t).astype(np.float64) for t in tf.nest.flatten(other(x, training=False))]
            b = [_numpy(t).astype(np.float64) for t in tf.nest.flatten(layer(x, training=False))]
        except Exception:  # noqa: BLE001 - e.g. a layer that needs more call arguments
            if other.weights or layer.weights or type(other).__name__ != type(layer).__name__:
                unchecked.append(where)
            continue
        ratios = _differences(a, b) if len(a) == len(b) else [float("inf")]
        if any(r > 1 for r in ratios):
            diff = max((float(np.max(np.abs(u - v))) if u.shape == v.shape else float("inf")
                        for u, v in zip(a, b)), default=float("inf"))
            culprits.append(f"{where} ({type(other).__name__}): max abs difference {diff:.3g}")
    return culprits, unchecked


def _layer_output(layer: Any) -> Any:
    """The output of a layer's first call (tf_keras refuses ``.output`` for shared ones)."""
    return layer.get_output_at(0) if hasattr(layer, "get_output_at") else layer.output


def _probed(model: Any, names: list[str]) -> Any:
    """``model`` with the outputs of its top-level layers ``names`` added as outputs."""
    probes = [tf.nest.flatten(_layer_output(model.get_layer(n))) for n in names]
    model_class = _keras3().Model if is_keras3_model(model) else keras.Model
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return model_class(inputs, list(model.outputs) + [t for p in probes for t in p])


def _probe_names(model: Any) -> list[str]:
    return [layer.name for layer in model.layers
            if type(layer).__name__ != "InputLayer" and not _is_model(layer)]


def check_equivalent(reference: Any, candidate: Any, *, what: str, seed: int = 0) -> float:
    """Raises unless both models compute the same on the same random inputs.

    Two stages. First the whole models run on the same random inputs and the
    output of every top-level layer is compared, not only the models'
    outputs: a random-weight network's outputs can barely depend on its input
    (an untrained MobileNetV2's logits are constant to 1e-7), which would
    hide a difference in its early layers. If anything differs, every layer
    is then run alone on the same random input, free of what comes before
    it: a layer that differs alone computes something else, and is named.
    If every layer computes the same alone, the drift is float rounding
    amplified through the network (BatchNorm over a near-zero variance
    multiplies it by up to 30 per layer): a warning says so and the models
    are taken as equivalent.

    Args:
        reference: the model whose outputs are right.
        candidate: its translation (same layer names).
        what: how to name the translation in messages.
        seed: seed of the random inputs.

    Returns:
        The largest ``|difference| / (ATOL + RTOL * max|value|)`` over all
        compared tensors of the whole models.

    Raises:
        UnsupportedModelError: a layer computes differently alone (named,
            with its difference), or the models differ and some layer could
            not be checked alone (named).
    """
    rng = np.random.default_rng(seed)
    x = [_random(shape, dtype, rng) for shape, dtype in _input_specs(reference)]
    names = [n for n in _probe_names(reference) if n in set(_probe_names(candidate))]
    try:
        probed_reference, probed_candidate = _probed(reference, names), _probed(candidate, names)
    except Exception:  # noqa: BLE001 - a layer also called outside the model: outputs only
        names, probed_reference, probed_candidate = [], reference, candidate
    a, b = _run(probed_reference, x), _run(probed_candidate, x)
    ratios = _differences(a, b) if len(a) == len(b) else [float("inf")]
    worst = max(ratios, default=0.0)
    if worst <= 1:
        return worst
    n_out = len(reference.outputs)
    first = next((n for n, r in zip(names, ratios[n_out:]) if r > 1), None)
    drift = (f"the whole models drift apart by up to {worst:.3g} times the float tolerance "
             f"({ATOL:g} + {RTOL:g} x max|value|)"
             + (f", from layer {first!r} on" if first else ""))
    culprits, unchecked = _check_layers_alone(reference, candidate, rng)
    if not culprits and not unchecked:
        logging.warning("tfedge: %s: %s, but every layer computes the same alone: float "
                        "rounding amplified through the network (e.g. by BatchNorm over a "
                        "near-zero variance). Taken as equivalent.", what, drift)
        return worst
    detail = ""
    if culprits:
        detail += "\nLayers that compute differently alone (same random input):\n  " + \
            "\n  ".join(culprits)
    if unchecked:
        detail += "\nLayers that could not be checked alone:\n  " + "\n  ".join(unchecked)
    raise UnsupportedModelError(
        f"{what} does not compute the same as {reference.name!r}: {drift}.{detail}\n"
        "These layers mean something different in Keras 3 and tf_keras: replace them, or "
        "build the model with tf_keras. " + _WAY_OUT)

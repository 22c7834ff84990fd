"""Model preparation: rewrite a functional graph into one tfmot can prune and quantize.

keras.applications models compute part of their graph with TensorFlow ops on
Keras tensors (``x + 3``, ``x * (1/6)``, residual ``x + y``), which Keras
records as ``TFOpLambda`` layers; they use ``Multiply`` (hard-swish,
squeeze-excite gates) that tfmot's registry has no QuantizeConfig for; and
they start with ``Rescaling`` / ``Normalization``, which tfmot does not
quantize. ``TFOpLambda`` layers also break tfmot's model rebuilds after
pruning (``'list' object has no attribute 'dtype'``: their call arguments do
not survive a config round trip).

:func:`prepare_model` rebuilds the graph (same weights, same function):

* ``TFOpLambda`` ``x + c``, ``x - c``, ``x * c``, ``x / c`` (``c`` a constant)
  become :class:`ConstantOp` layers; ``x + y`` / ``x * y`` of two tensors
  become ``Add`` / ``Multiply``;
* keras.applications' hard-swish ``x * (ReLU6(x + 3) * (1/6))`` becomes one
  :class:`HardSwish` layer (TFLite converts it to its int8 ``HARD_SWISH``);
* ``Activation`` layers of Keras 3's ``hard_silu`` / ``hard_sigmoid`` (carried
  over by :mod:`tfedge.keras3` as :func:`hard_swish` / :func:`hard_sigmoid`)
  become the same layers;
* ``Conv2D`` / ``DepthwiseConv2D`` / ``Dense`` with a swish, sigmoid or gelu
  inside (EfficientNet's squeeze-excite) become the linear layer + the
  activation as a layer of its own, so the kernel's output gets its own
  quantization range (TFLite cannot fuse these activations into the kernel);
  a layer whose output is the model's keeps its activation (and its name);
* swish / silu become :class:`Swish`, whose sigmoid output QAT puts on the
  fixed grid of TFLite's int8 ``LOGISTIC`` (scale 1/256), as it does every
  sigmoid ``Activation`` (:mod:`tfedge.qat_configs`): tfmot
  fake-quantizes a sigmoid's input only, so QAT trained on gates the int8
  model never computes (EfficientNetB0: each layer's own int8 error 7x
  smaller, ``benchmarks/logistic_grid.py``);
* ``Rescaling`` and ``Normalization`` become the constant multiply / add
  they compute (int8 ``MUL`` / ``ADD`` after the input is quantized), so the
  whole body, preprocessing included, is int8.

The rewrite is checked numerically on random inputs before training
(:class:`PreparationReport`). :func:`tfedge.qat_configs.quantize_configs`
gives tfmot the QuantizeConfigs of these layers; quantization itself is
tfmot's, not re-implemented here.

Example:

>>> prepared, report = prepare_model(model)  # doctest: +SKIP
>>> report.rewrites  # doctest: +SKIP
{'HardSwish': 20, 'ConstantOp': 16, 'Multiply (SE gate)': 9}
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge._keras import keras


# TFOpLambda functions rewritten, by what they compute.
_ADD = ("__operators__.add", "math.add")
_SUB = ("math.subtract", "__operators__.sub")
_MUL = ("math.multiply",)
_DIV = ("math.truediv", "math.divide")


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------
@keras.utils.register_keras_serializable("tfedge")
class ConstantOp(keras.layers.Layer):
    """``x + constant`` or ``x * constant`` (a scalar or one value per channel).

    Args:
        op: ``"add"`` or ``"multiply"``.
        constant: a number or a list broadcast against the last axis.
    """

    def __init__(self, op: str, constant: Any, **kwargs):
        super().__init__(**kwargs)
        if op not in ("add", "multiply"):
            raise ValueError(f"ConstantOp op must be 'add' or 'multiply', got {op!r}.")
        self.op = op
        self.constant = np.asarray(constant, "float32").tolist()

    def call(self, inputs):
        c = tf.constant(self.constant, inputs.dtype)
        return inputs + c if self.op == "add" else inputs * c

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op, "constant": self.constant}


@keras.utils.register_keras_serializable("tfedge")
class HardSwish(keras.layers.Layer):
    """``x * ReLU6(x + 3) / 6``, as keras.applications' MobileNetV3 computes it.

    Written in the form TFLite's converter fuses into one ``HARD_SWISH`` op.
    """

    def call(self, inputs):
        return inputs * (tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0))


@keras.utils.register_keras_serializable("tfedge")
def hard_swish(x: Any) -> Any:
    """Keras 3's ``hard_silu`` / ``hard_swish``: ``x * (relu6(x + 3) / 6)``, in Keras 3's
    order of operations (bit-identical; ``* (1 / 6)`` differs in the last bit)."""
    return x * (tf.nn.relu6(x + 3.0) / 6.0)


@keras.utils.register_keras_serializable("tfedge")
def hard_sigmoid(x: Any) -> Any:
    """Keras 3's ``hard_sigmoid``: ``relu6(x + 3) / 6`` (tf_keras's is another
    function, ``clip(0.2 x + 0.5, 0, 1)``), bit-identical."""
    return tf.nn.relu6(x + 3.0) / 6.0


@keras.utils.register_keras_serializable("tfedge")
class Swish(keras.layers.Layer):
    """``x * sigmoid(x)`` (swish / silu), with the sigmoid's output reachable for QAT.

    TFLite converts swish to ``LOGISTIC`` then ``MUL``; the int8 ``LOGISTIC``
    rounds its output to a fixed grid (:data:`LOGISTIC_RANGE`). tfmot's
    ``Activation("swish")`` fake-quantizes only the product, so QAT trains on
    a gate the int8 model never computes. Under
    :class:`tfedge.qat_configs.SwishQuantizeConfig`
    ``gate`` becomes tfmot's fake quantization on that grid; in float it is
    the identity.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = keras.activations.linear

    def call(self, inputs):
        return inputs * self.gate(tf.sigmoid(inputs))


# Keras 3 activation name -> the tf_keras name of its exact maths (the bridge's table).
KERAS3_ACTIVATIONS = {"hard_silu": "tfedge>hard_swish", "hard_swish": "tfedge>hard_swish",
                      "hard_sigmoid": "tfedge>hard_sigmoid"}


def _activation_fn(layer: Any) -> Any:
    return layer.activation if isinstance(layer, keras.layers.Activation) else None


def activation_name(layer: Any) -> str | None:
    """The name of an ``Activation`` layer's function (None for other layers)."""
    return getattr(_activation_fn(layer), "__name__", None)


# TFLite's int8 LOGISTIC always outputs on the grid of scale 1/256, zero point -128
# (the range [0, 255/256]; tensorflow/lite/kernels/activations.cc checks it), whatever
# its learned range. tfmot fake-quantizes a sigmoid's input, never its output.
LOGISTIC_RANGE = (0.0, 255.0 / 256.0)
SIGMOIDS = ("sigmoid",)
SWISHES = ("swish", "silu")


def construction_without_autograph() -> Any:
    """A context in which Keras builds graphs without AutoGraph-converting calls.

    tf_keras AutoGraph-converts the ``call`` of every non-Keras layer (tfmot's
    pruning and quantize wrappers) each time one is called on a Keras tensor;
    on a 200-layer model that is most of ``wrap``'s time. Building the graph
    needs no conversion (the wrappers branch with ``smart_cond``); ``fit``'s
    own tf.function still converts as usual.
    """
    from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=import-outside-toplevel
    return ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED)


CUSTOM_OBJECTS = {"ConstantOp": ConstantOp, "HardSwish": HardSwish, "Swish": Swish}


# ----------------------------------------------------------------------------
# Graph rewrite
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class PreparationReport:
    """What :func:`prepare_model` rewrote and how closely the result matches.

    Attributes:
        rewrites: ``{kind: count}`` of the rewritten layers.
        max_abs_diff: largest difference between the original and rewritten
            model's outputs on random inputs (None if nothing was rewritten).
        tolerance: the bound it was checked against.
    """

    rewrites: dict[str, int]
    max_abs_diff: float | None = None
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _producer(tensor: Any) -> tuple[Any, Any]:
    layer, node_index, _ = tensor._keras_history  # pylint: disable=protected-access
    return layer, layer._inbound_nodes[node_index]  # pylint: disable=protected-access


def _is_keras_tensor(value: Any) -> bool:
    return hasattr(value, "_keras_history") and not isinstance(value, np.ndarray)


def _tfop(layer: Any) -> str | None:
    return layer.get_config().get("function") if type(layer).__name__ == "TFOpLambda" else None


def _binary_operands(node: Any) -> tuple[Any, Any] | None:
    """``(x, y)`` of a TFOpLambda binary op, or None for other call forms."""
    args, kwargs = list(node.call_args), dict(node.call_kwargs)
    kwargs.pop("name", None)
    if len(args) == 2 and not kwargs:
        return args[0], args[1]
    if len(args) == 1 and set(kwargs) == {"y"}:
        return args[0], kwargs["y"]
    if not args and set(kwargs) == {"x", "y"}:
        return kwargs["x"], kwargs["y"]
    return None


def _is_constant(value: Any) -> bool:
    return isinstance(value, (int, float, np.ndarray, np.generic)) and not isinstance(value, bool)


def _hard_sigmoid_input(tensor: Any) -> Any:
    """If ``tensor`` is ``ReLU6(x + 3) * (1/6)`` (keras.applications), returns x."""
    mul, node = _producer(tensor)
    ops = _binary_operands(node) if _tfop(mul) in _MUL else None
    if not ops or not _is_constant(ops[1]) or not np.isclose(float(np.mean(ops[1])), 1 / 6):
        return None
    relu, node = _producer(ops[0])
    if not (isinstance(relu, keras.layers.ReLU) and relu.max_value == 6.0
            and not relu.negative_slope and not relu.threshold):
        return None
    add, node = _producer(node.call_args[0])
    ops = _binary_operands(node) if _tfop(add) in _ADD else None
    if not ops or not _is_constant(ops[1]) or float(np.mean(ops[1])) != 3.0:
        return None
    return ops[0]


def _affine_of(layer: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, offset)`` of a Rescaling or Normalization layer (x * scale + offset)."""
    if isinstance(layer, keras.layers.Rescaling):
        return np.asarray(layer.scale, "float32"), np.asarray(layer.offset, "float32")
    if isinstance(layer, keras.layers.Normalization) and not layer.invert:
        mean = np.asarray(layer.mean, "float32").reshape(-1)
        std = np.maximum(np.sqrt(np.asarray(layer.variance, "float32").reshape(-1)),
                         keras.backend.epsilon())
        return 1.0 / std, -mean / std
    return None


# Activations tfmot fake-quantizes only after the activation when they sit inside a
# Conv/Dense layer, while TFLite cannot fuse them into the kernel: the CONV_2D /
# FULLY_CONNECTED output then gets no learned range of its own (EfficientNet's
# squeeze-excite ``se_reduce`` conv with swish: relative error 0.03 -> 0.61 there).
# A sigmoid is split off too (the gate of a squeeze-excite block) so that its output
# gets TFLite's fixed LOGISTIC grid (LogisticQuantizeConfig).
_UNFUSED_ACTIVATIONS = SWISHES + SIGMOIDS + ("gelu",)
_SPLIT_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _unfused_activation(layer: Any, model: Any) -> str | None:
    """The activation to split off ``layer``; None for a layer whose output is
    one of the model's (splitting would rename the output)."""
    if (type(layer) not in _SPLIT_LAYERS or len(layer._inbound_nodes) != 1  # pylint: disable=protected-access
            or layer in model._output_layers):  # pylint: disable=protected-access
        return None
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in _UNFUSED_ACTIVATIONS else None


def rewrite(model: Any) -> tuple[Any, dict[str, int]]:
    """Rebuilds ``model`` with the rewrites of this module (no numerical check).

    The layers that are kept are the same objects (tfedge calls this on its
    private copy), so they keep their weights.

    Returns:
        ``(model, {kind: count})``; ``model`` itself when nothing applies.
    """
    if not getattr(model, "_is_graph_network", False):
        return model, {}
    counts: collections.Counter = collections.Counter()
    built: dict[int, Any] = {}
    names = {layer.name for layer in model.layers}

    def fresh(name: str) -> str:
        while name in names:
            name += "_"
        names.add(name)
        return name

    def constant_op(x: Any, op: str, c: Any, name: str, replaces: bool = False) -> Any:
        """``replaces``: ``name`` is that of the TFOpLambda replaced (free to reuse)."""
        c = np.asarray(c, "float32")
        if (op == "add" and not c.any()) or (op == "multiply" and (c == 1).all()):
            return x
        counts["ConstantOp"] += 1
        return ConstantOp(op, c, name=name if replaces else fresh(name))(x)

    def value(v: Any) -> Any:
        return built[id(v)] if _is_keras_tensor(v) else v

    def rebuild(layer: Any, node: Any) -> Any:
        if _tfop(layer) is not None:
            out = tfop(layer, node)
            if out is not None:
                return out
        elif isinstance(layer, keras.layers.Multiply) and len(node.call_args[0]) == 2:
            a, b = node.call_args[0]
            if _hard_sigmoid_input(b) is a:
                counts["HardSwish"] += 1
                return HardSwish(name=layer.name)(value(a))
        elif _activation_fn(layer) is hard_swish:
            counts["HardSwish"] += 1
            return HardSwish(name=layer.name)(value(node.call_args[0]))
        elif _activation_fn(layer) is hard_sigmoid:
            counts["hard_sigmoid"] += 1
            h = constant_op(value(node.call_args[0]), "add", 3.0, layer.name + "_add")
            h = keras.layers.ReLU(6.0, name=fresh(layer.name + "_relu6"))(h)
            return constant_op(h, "multiply", 1.0 / 6.0, layer.name + "_scale")
        elif _unfused_activation(layer, model) is not None:
            # Conv/Dense(activation=swish) -> Conv/Dense + Activation(swish): each output
            # gets its own quantization range, as the two TFLite ops need.
            counts["activation split"] += 1
            activation = _unfused_activation(layer, model)
            config = {**layer.get_config(), "activation": "linear"}
            linear = type(layer).from_config(config)
            h = linear(value(node.call_args[0]))
            linear.set_weights(layer.get_weights())
            name = fresh(layer.name + "_activation")
            if activation in SWISHES:
                counts["Swish"] += 1
                return Swish(name=name)(h)
            return keras.layers.Activation(activation, name=name)(h)
        elif activation_name(layer) in SWISHES:
            counts["Swish"] += 1
            return Swish(name=layer.name)(value(node.call_args[0]))
        elif _affine_of(layer) is not None:
            scale, offset = _affine_of(layer)
            counts[type(layer).__name__] += 1
            h = constant_op(value(node.call_args[0]), "multiply", scale, layer.name + "_scale")
            return constant_op(h, "add", offset, layer.name + "_offset")
        args = tf.nest.map_structure(value, node.call_args)
        kwargs = tf.nest.map_structure(value, node.call_kwargs)
        return layer(*args, **kwargs)

    def tfop(layer: Any, node: Any) -> Any:
        function = _tfop(layer)
        ops = _binary_operands(node)
        if ops is None or function not in _ADD + _SUB + _MUL + _DIV:
            return None
        x, y = ops
        x_tensor, y_tensor = _is_keras_tensor(x), _is_keras_tensor(y)
        if x_tensor and y_tensor and function in _ADD + _MUL:
            counts["Add" if function in _ADD else "Multiply"] += 1
            cls = keras.layers.Add if function in _ADD else keras.layers.Multiply
            return cls(name=layer.name)([value(x), value(y)])
        if x_tensor and _is_constant(y):
            y = np.asarray(y, "float32")
            if function in _SUB:
                return constant_op(value(x), "add", -y, layer.name, True)
            if function in _DIV:
                return constant_op(value(x), "multiply", 1.0 / y, layer.name, True)
            return constant_op(value(x), "add" if function in _ADD else "multiply", y,
                               layer.name, True)
        if y_tensor and _is_constant(x) and function in _ADD + _MUL:
            return constant_op(value(y), "add" if function in _ADD else "multiply", x,
                               layer.name, True)
        return None

    for t in model.inputs:
        built[id(t)] = t  # the model's own input tensors are reused
    # In topological order (iterative: deep graphs such as NASNet's 771 layers).
    nodes_by_depth = model._nodes_by_depth  # pylint: disable=protected-access
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input:
                continue
            if any(id(t) not in built for t in tf.nest.flatten(node.keras_inputs)):
                continue  # not reachable from the inputs (cannot happen in a built model)
            out = rebuild(node.layer, node)
            for t, o in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                built[id(t)] = o
    outputs = [built[id(t)] for t in model.outputs]
    if not counts:
        return model, {}
    inputs = model.inputs
    prepared = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                           outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    # Count what the model holds (a hard-swish's own ops were built, then dropped).
    kept = collections.Counter(type(layer).__name__ for layer in prepared.layers
                               if isinstance(layer, (ConstantOp, HardSwish)))
    counts.update({k: kept[k] - counts[k] for k in ("ConstantOp", "HardSwish")})
    return prepared, {k: v for k, v in counts.items() if v}


def _random_inputs(model: Any, batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (batch,) + tuple(t.shape[1:])).astype("float32")
            for t in model.inputs]


def check_equivalent(original: Any, prepared: Any, *, batch: int = 2, seed: int = 0,
                     rtol: float = 1e-4) -> float:
    """Largest output difference of two models on the same random inputs.

    Raises:
        AssertionError: the difference exceeds ``rtol`` times the largest
            output magnitude (plus 1e-5).
    """
    x = _random_inputs(original, batch, seed)
    a = tf.nest.flatten(original(x if len(x) > 1 else x[0], training=False))
    b = tf.nest.flatten(prepared(x if len(x) > 1 else x[0], training=False))
    diff = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))
    scale = max(float(np.max(np.abs(np.asarray(u)))) for u in a)
    bound = rtol * scale + 1e-5
    if not diff <= bound:
        raise AssertionError(f"prepared model differs from {original.name!r} by {diff:.3g} "
                             f"(bound {bound:.3g})")
    return diff


def prepare_model(model: Any, *, check: bool = True) -> tuple[Any, PreparationReport]:
    """Rewrites ``model`` for tfmot (see the module docstring) and checks it.

    Args:
        model: a functional model tfedge owns (its layers are reused).
        check: compare outputs with the original on random inputs.

    Returns:
        ``(prepared model, PreparationReport)``.

    Raises:
        AssertionError: the rewritten model does not compute the same function
            (a bug in a rewrite: it is never trained on).

    Example:

    >>> prepared, report = prepare_model(tfedge_private_copy)  # doctest: +SKIP
    """
    prepared, counts = rewrite(model)
    report = PreparationReport(counts)
    if counts and check:
        report.max_abs_diff = check_equivalent(model, prepared)
        report.tolerance = 1e-4
        logging.info("tfedge: prepared %r for tfmot: %s; outputs equal to the original "
                     "within %.2g (max abs diff %.3g on random inputs)", model.name,
                     ", ".join(f"{k} x{v}" for k, v in counts.items()), 1e-4,
                     report.max_abs_diff)
    return prepared, report

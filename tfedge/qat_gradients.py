"""A vectorized forward and gradient for tfmot's per-channel weight fake-quant, in QAT training.

tfmot's per-channel weight quantizers (every Conv2D kernel of the default
8-bit scheme) fake-quantize with TensorFlow's ``FakeQuantWithMinMaxVarsPerChannel``
op. Its registered gradient (``tensorflow/python/ops/array_ops.py``) runs the
C++ kernel ``FakeQuantWithMinMaxVarsPerChannelGradient``, which loops over the
channels and works on one strided column of the kernel at a time
(``tensorflow/core/kernels/fake_quant_ops_functor.h``). On this project's
2-core CPU that gradient was the main reason a wrapped MobileNet or
ResNet50 step cost 3-4x the plain Keras step (``benchmarks/results/zoo.json``
before this module: 3.7x and 4.2x; after: 1.45x and 1.27x). The same maths
written as whole-tensor ops (one compare per bound, one masked multiply, one
column reduction per bound) takes a 3x3x512x512 kernel's three gradients in
11.7 ms instead of TF's 47.8 ms, and ``dx`` alone (all a QAT step keeps:
tfmot's ranges are not trainable) in 4.9 ms; ``benchmarks/qat_gradients.py``
measures TF's gradient and this one side by side
(``benchmarks/results/qat_gradients.json``).

:func:`vectorized_per_channel_gradient` installs it for the duration of a
``with`` block. ``EdgeModel.train_step`` wraps its body in it: TensorFlow
looks a gradient function up when ``tape.gradient`` runs, which for ``fit``
is while ``tf.function`` traces the train step, so the traced graph holds the
vectorized gradient and everything outside tfedge's train step (the user's
own training loops, other models) keeps TensorFlow's.

The swap edits a private TensorFlow structure: the gradient registry
``tensorflow.python.framework.ops._gradient_registry`` (``tf.RegisterGradient``
refuses to register an op type twice, and an override map would have to
reach inside tfmot's quantizers, where the forward op is built). It is
guarded: if that registry is not the shape this module knows, the block runs
with TensorFlow's gradient and one warning is logged. The original entry is
always put back, also when the block raises; nested and concurrent blocks
(one per replica thread under a ``MirroredStrategy``) share one swap.

Exactly TensorFlow's semantics, per channel ``c`` (last axis):

* the range is nudged as TF's ``Nudge`` does: ``quant_min`` is 1 with
  ``narrow_range`` else 0, ``quant_max`` is ``2**num_bits - 1``;
  ``scale = (max - min) / (quant_max - quant_min)``, the zero point
  ``quant_min - min / scale`` clamped to ``[quant_min, quant_max]`` and
  rounded half away from zero, ``nudged_min = (quant_min - zero) * scale``,
  ``nudged_max = (quant_max - zero) * scale``;
* ``dx = g`` where ``nudged_min <= x <= nudged_max``, else 0;
* ``d_min[c]`` = sum of ``g`` where ``x < nudged_min``, ``d_max[c]`` likewise
  where ``x > nudged_max`` (sums over every axis but the last).

With more than 8 bits TF's ``Nudge`` stores the zero point in a ``uint8``;
those calls keep TensorFlow's own kernel, so the result is TF's in every case.

The forward kernel loops over the channels as well (a 3x3x512x512 kernel:
11-15 ms). :func:`vectorized_per_channel_fake_quant`, the block
``EdgeModel.train_step`` enters, also points
``tf.quantization.fake_quant_with_min_max_vars_per_channel`` (the name
tfmot's quantizers call) at :func:`per_channel_fake_quant`: the kernel's
expression in its float32 order, bit-exact with it (5-6 ms there), with the
gradient above as a ``tf.custom_gradient``. Graphs traced outside the block
(``tfedge.convert``'s) keep TF's op, from which the converter reads the QAT
ranges. A wrapped MobileNet QAT step: 0.150 -> 0.117 s
(``benchmarks/results/qat_step.json``).

Example:

>>> with vectorized_per_channel_gradient():  # doctest: +SKIP
...     grads = tape.gradient(loss, model.trainable_variables)
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import tensorflow as tf
from absl import logging
from tensorflow.python.framework import ops as _tf_ops

OP_TYPE = "FakeQuantWithMinMaxVarsPerChannel"
_TYPE_TAG = "type"  # the key of the function in a registry entry (registry.py)

_lock = threading.Lock()
_depth = 0  # how many blocks are inside the swap (nesting, replica threads)
_saved: dict | None = None  # TF's own registry entry while swapped
_warned = False


def nudged_range(min_: tf.Tensor, max_: tf.Tensor, num_bits: int,
                 narrow_range: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """The per-channel range TF's fake-quant kernels really clamp to.

    Args:
        min_: per-channel minimum, float32, shape ``[d]``.
        max_: per-channel maximum, float32, shape ``[d]``.
        num_bits: bit width (2 to 8).
        narrow_range: whether the lowest level is left out.

    Returns:
        ``(nudged_min, nudged_max)``, each shape ``[d]``, computed in float32
        in the order of TF's ``Nudge``.

    Example:

    >>> lo, hi = nudged_range(tf.constant([-1.0]), tf.constant([1.0]), 8, False)  # doctest: +SKIP
    """
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = float(2 ** num_bits - 1)
    # DivNoNan, not RealDiv: grappler's constant folding turns a division by a
    # constant into a multiplication by its reciprocal (ReduceDivToReciprocalMul),
    # which moves the nudged edges by an ulp in traced code; the kernel's value
    # sitting exactly on the range edge then loses its gradient. The divisor is
    # never 0, so DivNoNan is the exact IEEE division TF's Nudge does.
    scale = tf.math.divide_no_nan(max_ - min_, quant_max - quant_min)
    zero = tf.clip_by_value(quant_min - min_ / scale, quant_min, quant_max)
    floor = tf.floor(zero)  # std::round: half away from zero (zero >= 0 here)
    zero = floor + tf.cast(zero - floor >= 0.5, zero.dtype)
    return (quant_min - zero) * scale, (quant_max - zero) * scale


def _empty_channels(min_: tf.Tensor, max_: tf.Tensor) -> tf.Tensor:
    """Per channel, whether ``min`` and ``max`` are both 0 (TF's kernels special-case it)."""
    return tf.logical_and(tf.equal(min_, 0.0), tf.equal(max_, 0.0))


def per_channel_gradient_values(grad: tf.Tensor, x: tf.Tensor, min_: tf.Tensor,
                                max_: tf.Tensor, num_bits: int = 8,
                                narrow_range: bool = False) -> list[tf.Tensor]:
    """TF's ``fake_quant_with_min_max_vars_per_channel_gradient``, as whole-tensor ops.

    Args:
        grad: the gradient flowing into the fake-quant output, shape of ``x``.
        x: the fake-quant input, shape ``[..., d]`` (rank 1 to 4).
        min_: per-channel minimum, shape ``[d]``.
        max_: per-channel maximum, shape ``[d]``.
        num_bits: bit width; above 8 TF's own kernel is used (see the module).
        narrow_range: as the forward op.

    Returns:
        ``[dx, d_min, d_max]``, shaped as ``x``, ``min_`` and ``max_``.

    Example:

    >>> dx, dmin, dmax = per_channel_gradient_values(g, w, lo, hi)  # doctest: +SKIP
    """
    rank = x.shape.rank
    if num_bits > 8 or rank is None:
        return list(tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
            grad, x, min_, max_, num_bits=num_bits, narrow_range=narrow_range))
    low, high = nudged_range(min_, max_, num_bits, narrow_range)
    dtype = grad.dtype
    # Three independent expressions, as TF's kernel writes them: tfmot's range
    # variables are not trainable, so in a traced train step d_min and d_max
    # feed nothing and grappler prunes their masks and reductions; only dx's
    # compare-and-multiply is left.
    # A channel whose min and max are both 0 passes the gradient through (TF's
    # kernel special-cases it; its nudged range is NaN here, so no mask holds).
    inside = tf.cast(tf.logical_or(tf.logical_and(x >= low, x <= high),
                                   _empty_channels(min_, max_)), dtype)
    axes = list(range(rank - 1))
    d_min = tf.reduce_sum(grad * tf.cast(x < low, dtype), axis=axes)
    d_max = tf.reduce_sum(grad * tf.cast(x > high, dtype), axis=axes)
    return [grad * inside, d_min, d_max]


def per_channel_gradient(op: Any, grad: tf.Tensor) -> list[tf.Tensor]:
    """The gradient function for a ``FakeQuantWithMinMaxVarsPerChannel`` op.

    Args:
        op: the forward op (inputs ``x``, ``min``, ``max``).
        grad: the gradient of its output.

    Returns:
        ``[dx, d_min, d_max]``, as TF's registered gradient returns.

    Example:

    >>> per_channel_gradient(op, grad)  # doctest: +SKIP
    """
    return per_channel_gradient_values(
        grad, op.inputs[0], op.inputs[1], op.inputs[2],
        num_bits=op.get_attr("num_bits"), narrow_range=op.get_attr("narrow_range"))


def _registry_entries() -> dict | None:
    """TF's gradient registry table, if it has the shape this module knows."""
    entries = getattr(getattr(_tf_ops, "_gradient_registry", None), "_registry", None)
    if not isinstance(entries, dict):
        return None
    entry = entries.get(OP_TYPE)
    if not isinstance(entry, dict) or not callable(entry.get(_TYPE_TAG)):
        return None
    return entries


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        logging.warning(
            "tfedge: TensorFlow's gradient registry is not where tfedge expects it "
            "(tensorflow.python.framework.ops._gradient_registry); QAT keeps TensorFlow's "
            "per-channel fake-quant gradient, which is correct but slower.")


@contextlib.contextmanager
def vectorized_per_channel_gradient() -> Iterator[bool]:
    """Within the block, ``FakeQuantWithMinMaxVarsPerChannel`` differentiates vectorized.

    Gradients taken (``tape.gradient``, or ``tf.function`` tracing one) inside
    the block use :func:`per_channel_gradient`; TF's registry entry is put
    back when the last open block exits, whether or not it raised.

    Returns:
        A context manager yielding True when the vectorized gradient is in
        place, False when TF's internals were not recognised (one warning).

    Example:

    >>> with vectorized_per_channel_gradient():  # doctest: +SKIP
    ...     grads = tape.gradient(loss, variables)
    """
    global _depth, _saved
    with _lock:
        entries = _registry_entries()
        if entries is None:
            _warn_once()
        else:
            if _depth == 0:
                _saved = entries[OP_TYPE]
                entries[OP_TYPE] = dict(_saved, **{_TYPE_TAG: per_channel_gradient})
            _depth += 1
    try:
        yield entries is not None
    finally:
        if entries is not None:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    entries[OP_TYPE] = _saved
                    _saved = None


# -- the forward -------------------------------------------------------------------
# TF's forward kernel loops over the channels too (13 ms for a 3x3x512x512
# kernel, the larger part of what a wrapped QAT step still spent after the
# gradient above). tfmot's quant_ops builds it as
# ``tf.quantization.fake_quant_with_min_max_vars_per_channel``, looked up when
# its quantizer runs, so within the block that name points at the whole-tensor
# version below; TF's own function (kept here) is put back on exit.
_TF_FORWARD = tf.quantization.fake_quant_with_min_max_vars_per_channel
_FORWARD_NAME = "fake_quant_with_min_max_vars_per_channel"
_forward_depth = 0


def per_channel_fake_quant_values(x: tf.Tensor, min_: tf.Tensor, max_: tf.Tensor,
                                  num_bits: int = 8,
                                  narrow_range: bool = False) -> tf.Tensor:
    """TF's ``FakeQuantWithMinMaxVarsPerChannel`` forward, bit-exact, as whole-tensor ops.

    The expression is the kernel's, in its order and float32
    (``FakeQuantWithMinMaxVarsPerChannelFunctor``): ``inv_scale`` is
    ``(quant_max - quant_min) / (max - min)`` (not ``1 / scale``),
    ``quant_zero = floor(-nudged_min * inv_scale + 0.5)``, and
    ``y = floor((clamp(x) - nudged_min) * inv_scale - quant_zero + 0.5) * scale``;
    a channel whose min and max are both 0 is all 0.

    Args:
        x: the input, float32, shape ``[..., d]``.
        min_: per-channel minimum, shape ``[d]``.
        max_: per-channel maximum, shape ``[d]``.
        num_bits: bit width (2 to 8).
        narrow_range: whether the lowest level is left out.

    Returns:
        The fake-quantized ``x``, equal bit for bit to TF's op.

    Example:

    >>> y = per_channel_fake_quant_values(w, lo, hi, 8, True)  # doctest: +SKIP
    """
    levels = float(2 ** num_bits - 1) - (1.0 if narrow_range else 0.0)
    scale = tf.math.divide_no_nan(max_ - min_, levels)  # DivNoNan: see nudged_range
    inv_scale = levels / (max_ - min_)  # the numerator is the constant: no rewrite
    low, high = nudged_range(min_, max_, num_bits, narrow_range)
    quant_zero = tf.floor(-low * inv_scale + 0.5)
    # An empty channel (min = max = 0) gets all-zero parameters, so the
    # expression below gives it floor(0.5) * 0 = 0 with no pass over x to mask it.
    empty = _empty_channels(min_, max_)
    low, high, inv_scale, quant_zero, scale = (
        tf.where(empty, tf.zeros_like(v), v) for v in (low, high, inv_scale, quant_zero, scale))
    clamped = tf.maximum(tf.minimum(x, high), low)
    return tf.floor((clamped - low) * inv_scale - quant_zero + 0.5) * scale


def per_channel_fake_quant(inputs: Any, min: Any, max: Any,  # noqa: A002 (TF's names)
                           num_bits: int = 8, narrow_range: bool = False,
                           name: str | None = None) -> tf.Tensor:
    """``tf.quantization.fake_quant_with_min_max_vars_per_channel``, vectorized.

    Same signature and result as TF's; forward by
    :func:`per_channel_fake_quant_values`, gradient by
    :func:`per_channel_gradient_values` (a ``tf.custom_gradient``). More than
    8 bits, a non-float32 input or an unknown rank use TF's own op.

    Args:
        inputs: the tensor (or variable) to fake-quantize, shape ``[..., d]``.
        min: per-channel minimum, shape ``[d]`` (tensor or variable).
        max: per-channel maximum, shape ``[d]``.
        num_bits: bit width.
        narrow_range: whether the lowest level is left out.
        name: an optional name scope.

    Returns:
        The fake-quantized tensor.

    Example:

    >>> y = per_channel_fake_quant(kernel, lo, hi, num_bits=8, narrow_range=True)  # doctest: +SKIP
    """
    x = tf.convert_to_tensor(inputs)
    if num_bits > 8 or x.shape.rank is None or x.dtype != tf.float32:
        return _TF_FORWARD(x, min, max, num_bits=num_bits, narrow_range=narrow_range,
                           name=name)
    with tf.name_scope(name or "FakeQuantPerChannel"):
        # Variables (tfmot's assigned ranges) are read here, where TF's op would.
        min_, max_ = tf.convert_to_tensor(min), tf.convert_to_tensor(max)

        @tf.custom_gradient
        def fake_quant(x, min_, max_):
            def grad(g):
                return per_channel_gradient_values(g, x, min_, max_, num_bits, narrow_range)
            return per_channel_fake_quant_values(x, min_, max_, num_bits, narrow_range), grad

        return fake_quant(x, min_, max_)


@contextlib.contextmanager
def vectorized_per_channel_fake_quant() -> Iterator[bool]:
    """Within the block, per-channel fake quant runs and differentiates vectorized.

    ``tf.quantization.fake_quant_with_min_max_vars_per_channel`` (the name
    tfmot's quantizers call) is :func:`per_channel_fake_quant`, and the
    registered gradient of any ``FakeQuantWithMinMaxVarsPerChannel`` op still
    built is :func:`per_channel_gradient`. TF's function is put back when the
    last open block exits, whether or not it raised; code traced outside (the
    converter's inference graph) keeps TF's op, from which it reads the ranges.

    Returns:
        A context manager yielding what :func:`vectorized_per_channel_gradient` yields.

    Example:

    >>> with vectorized_per_channel_fake_quant():  # doctest: +SKIP
    ...     loss = model(x, training=True)
    """
    global _forward_depth
    with vectorized_per_channel_gradient() as swapped:
        with _lock:
            if _forward_depth == 0:
                setattr(tf.quantization, _FORWARD_NAME, per_channel_fake_quant)
            _forward_depth += 1
        try:
            yield swapped
        finally:
            with _lock:
                _forward_depth -= 1
                if _forward_depth == 0:
                    setattr(tf.quantization, _FORWARD_NAME, _TF_FORWARD)

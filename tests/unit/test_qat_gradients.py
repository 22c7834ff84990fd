"""The vectorized per-channel fake-quant gradient equals TensorFlow's, and the swap is undone."""

import logging as std_logging

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from tfedge import qat_gradients
from tfedge.qat_gradients import (OP_TYPE, vectorized_per_channel_fake_quant,
                                  vectorized_per_channel_gradient)

from tests.helpers import count_vectorized_gradient, warning_messages


def _registered():
    return tf_ops._gradient_registry.lookup(OP_TYPE)


def _ranges(rng, depth, num_bits=8, narrow_range=False):
    """Per-channel (min, max): symmetric, asymmetric, min 0 and max 0, as QAT meets them.

    Channel 1's zero point falls exactly on 2.5, where TF's rounding (half away
    from zero: 3) and round-half-to-even (2) part."""
    kind = np.arange(depth) % 4
    low = -rng.uniform(0.05, 2.0, depth)
    high = rng.uniform(0.05, 2.0, depth)
    low = np.where(kind == 0, -high, np.where(kind == 2, 0.0, low))
    high = np.where(kind == 3, 0.0, high)
    qmin, qmax, step = int(narrow_range), 2 ** num_bits - 1, 2.0 ** -6
    low[1], high[1] = -(2.5 - qmin) * step, (qmax - 2.5) * step
    if depth > 6:  # min and max both 0 (a channel pruned away): TF's special case
        low[6] = high[6] = 0.0
    return low.astype(np.float32), high.astype(np.float32)


def _nudged(low, high, num_bits, narrow_range):
    """TF's Nudge in float32 numpy, only to place inputs exactly on the range edges."""
    qmin = np.float32(1 if narrow_range else 0)
    qmax = np.float32(2 ** num_bits - 1)
    scale = (high - low) / (qmax - qmin)
    with np.errstate(invalid="ignore", divide="ignore"):
        zero = np.clip(qmin - low / scale, qmin, qmax)
    zero = np.nan_to_num(np.floor(zero) + (zero - np.floor(zero) >= 0.5))  # 0/0 channels: 0
    return (qmin - zero) * scale, (qmax - zero) * scale, scale


def _inputs(rng, shape, low, high, num_bits, narrow_range):
    """Random values inside and beyond the range, and per channel values on the nudged
    edges, one float step either side of them, and far outside."""
    lo, hi, scale = _nudged(low, high, num_bits, narrow_range)
    half = lo + np.float32(2.5) * scale  # a rounding point: (x - lo) / scale = 2.5
    edges = np.stack([lo, hi, np.nextafter(lo, -np.inf), np.nextafter(lo, np.inf),
                      np.nextafter(hi, -np.inf), np.nextafter(hi, np.inf), lo - 1, hi + 1,
                      np.zeros_like(lo), half, np.nextafter(half, -np.inf),
                      np.nextafter(half, np.inf)]).astype(np.float32)
    x = rng.uniform(low - 0.5, high + 0.5, shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] >= len(edges):
        flat[:len(edges)] = edges
    else:  # 1-D: one value per channel, the edge kinds taken in turn
        columns = np.arange(shape[-1])
        flat[0] = edges[columns % len(edges), columns]
    return x, np.count_nonzero(x < lo)


def _tape_gradients(x, low, high, grad, num_bits, narrow_range, traced=False):
    """dx, d_min, d_max by GradientTape, eagerly or in a tf.function (as fit runs it:
    grappler rewrites the traced graph); the forward by the name tfmot calls, so
    inside vectorized_per_channel_fake_quant it is tfedge's."""

    def gradients(x, low, high, grad):
        with tf.GradientTape() as tape:
            tape.watch([x, low, high])
            y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, low, high, num_bits=num_bits, narrow_range=narrow_range)
        return tape.gradient(y, [x, low, high], output_gradients=grad)

    if traced:
        gradients = tf.function(gradients)
    return [t.numpy() for t in gradients(*(tf.constant(v) for v in (x, low, high, grad)))]


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (1, 1, 32, 24), (40, 12), (27,)],
                         ids=["conv3x3", "conv1x1", "dense", "1d"])
@pytest.mark.parametrize("num_bits", [8, 4])
@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_gradient_equals_tensorflows(shape, num_bits, narrow_range, traced, monkeypatch):
    rng = np.random.default_rng(num_bits + 10 * narrow_range + len(shape))
    low, high = _ranges(rng, shape[-1], num_bits, narrow_range)
    x, below = _inputs(rng, shape, low, high, num_bits, narrow_range)
    assert below > 0  # the case d_min exists for is exercised
    grad = tf.constant(rng.normal(size=shape).astype(np.float32))
    expected = _tape_gradients(x, low, high, grad, num_bits, narrow_range, traced)  # TF's
    calls = count_vectorized_gradient(monkeypatch)
    with vectorized_per_channel_gradient():
        got = _tape_gradients(x, low, high, grad, num_bits, narrow_range, traced)
    assert calls == [OP_TYPE]  # the vectorized gradient ran, not TF's
    np.testing.assert_array_equal(got[0], expected[0])  # dx: a mask, exact
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-5)
    assert np.any(expected[0] == 0) and np.any(expected[1] != 0) and np.any(expected[2] != 0)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_kernel_on_its_own_symmetric_range_as_tfmot_quantizes_it(traced):
    """tfmot's per-channel weight quantizer: range +-max|w| per channel, narrow range, so
    each channel's largest weight sits on (or by an ulp beside) the nudged edge."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.1, (3, 3, 16, 64)).astype(np.float32)
    bound = np.abs(x).reshape(-1, 64).max(axis=0)
    grad = rng.normal(size=x.shape).astype(np.float32)
    expected = _tape_gradients(x, -bound, bound, grad, 8, True, traced)
    with vectorized_per_channel_gradient():
        got = _tape_gradients(x, -bound, bound, grad, 8, True, traced)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-5)


def test_traced_gradient_has_no_per_channel_loop_op():
    rng = np.random.default_rng(0)
    low, high = _ranges(rng, 8)
    x = tf.constant(rng.uniform(-2, 2, (3, 3, 4, 8)).astype(np.float32))

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, low, high) ** 2)
        return tape.gradient(loss, x)

    def op_types():
        return {op.type for op in gradients.get_concrete_function(x).graph.get_operations()}

    assert "FakeQuantWithMinMaxVarsPerChannelGradient" in op_types()  # TF's, outside
    gradients = tf.function(gradients.python_function)  # traced again, inside the block
    with vectorized_per_channel_gradient():
        types = op_types()
    assert OP_TYPE in types and "FakeQuantWithMinMaxVarsPerChannelGradient" not in types


def test_more_than_eight_bits_keeps_tensorflows_kernel():
    rng = np.random.default_rng(1)
    low, high = _ranges(rng, 6)
    x = rng.uniform(-2, 2, (10, 6)).astype(np.float32)
    grad = tf.constant(rng.normal(size=(10, 6)).astype(np.float32))
    expected = _tape_gradients(x, low, high, grad, 16, False)
    with vectorized_per_channel_gradient():
        got = _tape_gradients(x, low, high, grad, 16, False)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_registry_entry_is_restored_after_the_block_and_after_an_error():
    original = tf_ops._gradient_registry._registry[OP_TYPE]
    tf_function = _registered()
    assert tf_function is not qat_gradients.per_channel_gradient
    with vectorized_per_channel_gradient() as swapped:
        assert swapped and _registered() is qat_gradients.per_channel_gradient
        with vectorized_per_channel_gradient():  # nested: the inner exit keeps the swap
            pass
        assert _registered() is qat_gradients.per_channel_gradient
    assert tf_ops._gradient_registry._registry[OP_TYPE] is original
    with pytest.raises(RuntimeError, match="boom"):
        with vectorized_per_channel_gradient():
            raise RuntimeError("boom")
    assert tf_ops._gradient_registry._registry[OP_TYPE] is original
    assert _registered() is tf_function
    assert qat_gradients._depth == 0


def test_unknown_registry_falls_back_to_tensorflows_gradient_with_one_warning(
        monkeypatch, caplog):
    monkeypatch.setattr(tf_ops, "_gradient_registry", object())
    monkeypatch.setattr(qat_gradients, "_warned", False)
    with caplog.at_level(std_logging.WARNING):
        for _ in range(3):
            with vectorized_per_channel_gradient() as swapped:
                assert swapped is False
    warnings = [m for m in warning_messages(caplog) if "gradient registry" in m]
    assert len(warnings) == 1 and "slower" in warnings[0]


# -- the forward ---------------------------------------------------------------------

def _forward(x, low, high, num_bits, narrow_range, traced, constant_ranges=False):
    """The forward by the name tfmot calls, eagerly or traced; with constant_ranges the
    ranges are graph constants (grappler folds what it can)."""
    def forward(x, low, high):
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, low, high, num_bits=num_bits, narrow_range=narrow_range)

    if constant_ranges:
        lo, hi = tf.constant(low), tf.constant(high)
        fn = tf.function(lambda x: forward(x, lo, hi))
        return fn(tf.constant(x)).numpy()
    if traced:
        forward = tf.function(forward)
    return forward(*(tf.constant(v) for v in (x, low, high))).numpy()


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (1, 1, 32, 24), (40, 12), (27,)],
                         ids=["conv3x3", "conv1x1", "dense", "1d"])
@pytest.mark.parametrize("num_bits", [8, 4])
@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("mode", ["eager", "traced", "constant_ranges"])
def test_forward_is_bit_exact_with_tensorflows(shape, num_bits, narrow_range, mode):
    rng = np.random.default_rng(num_bits + 10 * narrow_range + len(shape))
    low, high = _ranges(rng, shape[-1], num_bits, narrow_range)
    x, _ = _inputs(rng, shape, low, high, num_bits, narrow_range)
    args = (x, low, high, num_bits, narrow_range, mode == "traced", mode == "constant_ranges")
    expected = _forward(*args)  # TF's kernel
    with vectorized_per_channel_fake_quant():
        got = _forward(*args)
    assert np.array_equal(got, expected), np.flatnonzero(got != expected)[:10]
    lo, hi, _ = _nudged(low, high, num_bits, narrow_range)
    assert np.count_nonzero((x > lo) & (x < hi)) >= x.size // 4  # values to round, not clamps


def test_forward_at_every_rounding_point_and_between():
    """Per channel: every level's half point, and one float step either side of it."""
    rng = np.random.default_rng(5)
    for num_bits, narrow_range in [(8, True), (8, False), (4, True), (4, False)]:
        low, high = _ranges(rng, 32, num_bits, narrow_range)
        lo, _, scale = _nudged(low, high, num_bits, narrow_range)
        steps = np.arange(2 ** num_bits, dtype=np.float32)[:, None] + np.float32(0.5)
        half = (lo + steps * scale).astype(np.float32)
        x = np.concatenate([half, np.nextafter(half, -np.inf), np.nextafter(half, np.inf)])
        for traced in (False, True):
            expected = _forward(x, low, high, num_bits, narrow_range, traced)
            with vectorized_per_channel_fake_quant():
                got = _forward(x, low, high, num_bits, narrow_range, traced)
            assert np.array_equal(got, expected), (num_bits, narrow_range, traced)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_vectorized_forward_differentiates_as_tensorflow(traced):
    rng = np.random.default_rng(3)
    shape = (3, 3, 8, 16)
    low, high = _ranges(rng, 16, 8, True)
    x, _ = _inputs(rng, shape, low, high, 8, True)
    grad = tf.constant(rng.normal(size=shape).astype(np.float32))
    expected = _tape_gradients(x, low, high, grad, 8, True, traced)
    with vectorized_per_channel_fake_quant():
        got = _tape_gradients(x, low, high, grad, 8, True, traced)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-5)
    assert np.any(expected[0] == 0)


def test_traced_forward_has_no_per_channel_op_inside_the_block_only():
    rng = np.random.default_rng(0)
    low, high = _ranges(rng, 8)
    x = tf.constant(rng.uniform(-2, 2, (3, 3, 4, 8)).astype(np.float32))

    def op_types():
        fn = tf.function(lambda x: tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, low, high))
        return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}

    assert OP_TYPE in op_types()
    with vectorized_per_channel_fake_quant():
        assert OP_TYPE not in op_types()
    assert OP_TYPE in op_types()


def test_forward_above_eight_bits_and_variables_as_tfmot_passes_them():
    rng = np.random.default_rng(4)
    low, high = _ranges(rng, 6)
    x = rng.uniform(-2, 2, (10, 6)).astype(np.float32)
    expected = _forward(x, low, high, 16, False, False)
    with vectorized_per_channel_fake_quant():
        got = _forward(x, low, high, 16, False, False)  # TF's kernel: same bits
        lo, hi = tf.Variable(low), tf.Variable(high)
        from_variables = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            tf.Variable(x), lo, hi).numpy()
    assert np.array_equal(got, expected)
    assert np.array_equal(from_variables, _forward(x, low, high, 8, False, False))


def test_forward_patch_is_restored_after_the_block_and_after_an_error():
    tf_forward = tf.quantization.fake_quant_with_min_max_vars_per_channel
    registry_entry = tf_ops._gradient_registry._registry[OP_TYPE]
    assert tf_forward is not qat_gradients.per_channel_fake_quant
    with vectorized_per_channel_fake_quant():
        patched = tf.quantization.fake_quant_with_min_max_vars_per_channel
        assert patched is qat_gradients.per_channel_fake_quant
        assert _registered() is qat_gradients.per_channel_gradient  # the gradient too
        with vectorized_per_channel_fake_quant():  # nested: the inner exit keeps it
            pass
        assert tf.quantization.fake_quant_with_min_max_vars_per_channel is patched
    assert tf.quantization.fake_quant_with_min_max_vars_per_channel is tf_forward
    with pytest.raises(RuntimeError, match="boom"):
        with vectorized_per_channel_fake_quant():
            raise RuntimeError("boom")
    assert tf.quantization.fake_quant_with_min_max_vars_per_channel is tf_forward
    assert tf_ops._gradient_registry._registry[OP_TYPE] is registry_entry
    assert qat_gradients._forward_depth == 0 and qat_gradients._depth == 0

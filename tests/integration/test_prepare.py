"""tfedge.prepare: graph rewrites that let tfmot prune and quantize keras.applications models."""

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge import prepare, qat_configs


def _hard_swish_by_tf_ops(x):
    """keras.applications MobileNetV3's hard-swish: x * (ReLU6(x + 3) * (1/6))."""
    return keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])


def _blocks_model():
    """Rescaling + Normalization input, hard-swish by tf ops, an SE block, a residual
    tf-op add and a Concatenate."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    norm = keras.layers.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5])
    h = norm(h)
    h = keras.layers.Conv2D(8, 3, padding="same")(h)
    h = _hard_swish_by_tf_ops(h)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    se = keras.layers.Conv2D(8, 1)(se)
    se = keras.layers.ReLU(6.0)(se + 3.0) * (1.0 / 6.0)  # hard-sigmoid gate
    g = keras.layers.Multiply()([h, se])
    r = keras.layers.Conv2D(8, 1)(g)
    h = g + r  # residual add as a TensorFlow op (TFOpLambda)
    h = keras.layers.Concatenate()([h, g - 0.5])
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, out)


def test_rewritten_blocks_compute_the_original_function():
    model = _blocks_model()
    before = [type(layer).__name__ for layer in model.layers]
    assert "TFOpLambda" in before
    prepared, report = prepare.prepare_model(model)
    kinds = [type(layer).__name__ for layer in prepared.layers]
    assert "TFOpLambda" not in kinds and "Rescaling" not in kinds and "Normalization" not in kinds
    assert report.rewrites["HardSwish"] == 1 and report.rewrites["Add"] == 1
    assert report.rewrites["Rescaling"] == 1 and report.rewrites["Normalization"] == 1
    x = np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(prepared(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4


def test_a_wrong_rewrite_is_caught_by_the_check():
    model = _blocks_model()
    prepared, _ = prepare.rewrite(model)
    op = next(layer for layer in prepared.layers if isinstance(layer, prepare.ConstantOp)
              and layer.op == "add")  # the prepared model's own layer: the original is intact
    op.constant = (np.asarray(op.constant) + 0.5).tolist()
    with pytest.raises(AssertionError, match="differs"):
        prepare.check_equivalent(model, prepared)



def _prune_qat_int8(model, x, y, batch_size=16, loss=None):
    """wrap(prune 50% for one epoch, then strict QAT) -> fit 2 epochs -> finish -> int8.

    Returns (final Keras model, artifact), the artifact checked to be full int8."""
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                       quantize=tfedge.QATConfig(start_epoch=1, strict=True))
    edge.compile("adam", loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    edge.fit(x, y, batch_size=batch_size, epochs=2, verbose=0)
    final = edge.finish()
    art = tfedge.convert(final, x[:16])
    assert art.mode == "int8" and not art.flatbuffer.float_ops(), art.ops
    return final, art

def test_blocks_go_through_prune_and_qat_to_full_int8():
    model = _blocks_model()
    x = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 4
    _, art = _prune_qat_int8(model, x, y)
    assert [type(layer).__name__ for layer in model.layers].count("TFOpLambda") > 0  # untouched
    assert "HARD_SWISH" in art.ops


def _average_pool_block_model():
    """DenseNet's transition: conv -> BN -> ReLU -> AveragePooling2D, whose output feeds
    both a BN -> ReLU -> conv branch and the Concatenate of a dense block."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.AveragePooling2D(2)(h)
    b = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    b = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(b)
    h = keras.layers.Concatenate()([h, b])
    h = keras.layers.Conv2D(8, 3, padding="same")(h)
    return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h)))


def test_average_pooling_goes_through_prune_and_qat_to_full_int8():
    # TFLite's AVERAGE_POOL_2D needs one scale on its input and output: a range of
    # its own made the converter fail ("violate the same scale constraint").
    model = _average_pool_block_model()
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 4
    final, art = _prune_qat_int8(model, x, y)
    assert art.ops.get("AVERAGE_POOL_2D") == 1
    # The outputs agree within a few steps of the int8 output scale (top-1 of an
    # untrained 4-class model on noise is decided by near-ties, so not compared).
    step = art.outputs[0].scale[0]
    report = tfedge.validate(art, final, x)
    # (in steps, with float slack: an error of exactly 3 steps reads 3.000001)
    assert report.max_abs_error / step <= 3 + 1e-3, (report.max_abs_error, step)


def test_batchnorm_before_a_fused_relu_gets_no_range_of_its_own():
    # TFLite runs a BatchNormalization with no conv before it as MUL + ADD and fuses
    # a ReLU / ReLU6 after it into the ADD: one int8 tensor, the ReLU's. Any other
    # consumer, or a second one, needs the BN's own range.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Concatenate()([keras.layers.Conv2D(5, 3, padding="same")(inputs), inputs])
    fused = keras.layers.BatchNormalization(name="bn_relu")(h)
    a = keras.layers.Activation("relu")(fused)
    h = keras.layers.Concatenate()([keras.layers.Conv2D(4, 1)(a), a])
    shared = keras.layers.BatchNormalization(name="bn_shared")(h)
    b = keras.layers.Add()([keras.layers.ReLU(6.0)(shared), shared])
    leaky = keras.layers.BatchNormalization(name="bn_leaky")(keras.layers.Concatenate()([b, a]))
    h = keras.layers.ReLU(negative_slope=0.1)(leaky)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h)))
    prepared, _ = prepare.prepare_model(model)
    configs = qat_configs.quantize_configs(prepared)
    assert {n: configs[n].quantize_output for n in ("bn_relu", "bn_shared", "bn_leaky")} == {
        "bn_relu": False, "bn_shared": True, "bn_leaky": True}
    assert qat_configs.quantize_configs(prepared, fuse_relu=False)["bn_relu"].quantize_output
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    final, art = _prune_qat_int8(model, x, np.arange(32) % 4)
    assert "RELU" not in art.ops  # the ReLU after bn_relu lives in the ADD
    step = art.outputs[0].scale[0]
    assert tfedge.validate(art, final, x).max_abs_error / step <= 3 + 1e-3


def test_conv_with_swish_is_split_so_its_output_gets_a_range():
    # EfficientNet's squeeze-excite: GAP -> Conv2D(activation="swish") -> Conv2D(sigmoid)
    # -> Multiply. tfmot fake-quantizes only after the swish; TFLite runs CONV_2D then
    # LOGISTIC + MUL, so the conv output needs a range of its own.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(inputs)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    se = keras.layers.Conv2D(4, 1, activation="swish")(se)
    se = keras.layers.Conv2D(8, 1, activation="sigmoid")(se)
    h = keras.layers.Multiply()([h, se])
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(h)))
    prepared, report = prepare.prepare_model(model)
    assert report.rewrites["activation split"] == 3  # two swish convs and the sigmoid gate
    assert not any(getattr(layer, "activation", None) is keras.activations.swish
                   for layer in prepared.layers if isinstance(layer, keras.layers.Conv2D))
    x = np.random.default_rng(1).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(prepared(x), model(x), rtol=1e-5, atol=1e-5)
    y = np.arange(32) % 4
    final, art = _prune_qat_int8(model, x, y)
    report = tfedge.validate(art, final, x)
    assert report.max_abs_error <= 3 * art.outputs[0].scale[0], report


def _swish_se_model(output_activation="sigmoid"):
    """EfficientNet's block: conv -> swish -> squeeze-excite (swish reduce, sigmoid gate)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.Activation("swish", name="act")(h)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    se = keras.layers.Conv2D(4, 1, activation="swish")(se)
    se = keras.layers.Conv2D(8, 1, activation="sigmoid", name="gate")(se)
    h = keras.layers.Multiply()([h, se])
    out = keras.layers.Dense(4, activation=output_activation, name="out")(
        keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, out)


def test_swish_and_sigmoid_gates_become_layers_with_the_same_function():
    model = _swish_se_model()
    prepared, report = prepare.prepare_model(model)
    assert report.rewrites["Swish"] == 2  # the Activation layer and the reduce conv's
    assert isinstance(prepared.get_layer("act"), prepare.Swish)
    assert prepared.get_layer("gate_activation").activation is keras.activations.sigmoid
    # The output layer keeps its name and its sigmoid (splitting it would rename the output).
    assert prepared.output_names == model.output_names == ["out"]
    x = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(prepared(x), model(x), rtol=1e-5, atol=1e-6)
    clone = keras.models.clone_model(prepared)  # get_config round trip
    assert isinstance(clone.get_layer("act"), prepare.Swish)


def _qat(model, x, logistic_grid):
    edge = tfedge.wrap(model, quantize=tfedge.QATConfig(logistic_grid=logistic_grid))
    edge.compile(keras.optimizers.Adam(1e-5), "mse")
    edge.fit(x, np.full((len(x), 4), 0.5, "float32"), batch_size=8, epochs=1, verbose=0)
    return edge.finish()


def test_qat_puts_sigmoid_outputs_on_tflites_logistic_grid():
    # TFLite's int8 LOGISTIC outputs multiples of 1/256 whatever it learned; tfmot
    # fake-quantizes a sigmoid's input only, so QAT trained on a gate never computed.
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    errors = {}
    for grid in (False, True):
        qat = _qat(_swish_se_model(None), x, grid)
        gate = next(layer for layer in qat.layers if layer.name.endswith("gate_activation"))
        values = np.asarray(keras.Model(qat.inputs, gate.output)(x)) * 256
        on_grid = np.allclose(values, np.round(values), atol=1e-3)
        assert on_grid == grid, (grid, values.ravel()[:4])
        art = tfedge.convert(qat, x[:16])
        assert art.mode == "int8" and not art.flatbuffer.float_ops(), art.ops
        report = tfedge.validate(art, qat, x)
        errors[grid] = (report.max_abs_error / art.outputs[0].scale[0],
                        report.mean_abs_error / art.outputs[0].scale[0])
    # The int8 file computes what the QAT model computed, up to rounding.
    # (max, mean) error in steps of the output scale: measured (2.0, 0.41) without the
    # grid and (0, 0) with it.
    assert errors[True][0] <= 1 + 1e-3 and errors[True][1] < errors[False][1] / 2, errors


@pytest.mark.slow
def test_keras_applications_mobilenet_v3_small_prune_qat_int8():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None,
                                                classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = np.arange(16) % 10
    final, art = _prune_qat_int8(model, x, y, batch_size=8,
                                 loss="sparse_categorical_crossentropy")
    assert art.ops.get("HARD_SWISH", 0) > 0
    assert tfedge.validate(art, final, x).agreement >= 0.9


def test_qat_activation_ranges_start_from_the_data():
    # tfmot starts every activation range at [-6, 6] and moves it by 0.1% a step;
    # start_ranges sets them from a batch (the values each quantizer sees).
    import tensorflow_model_optimization as tfmot
    from tfedge import qat_ranges

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    qat = tfmot.quantization.keras.quantize_model(model)
    x = np.random.default_rng(0).uniform(0, 0.5, (64, 6)).astype("float32")
    moving, all_values = qat_ranges.range_variables(qat)
    assert len(all_values) == 1 and len(moving) == 2
    weights = [v.numpy() for v in qat.trainable_variables]
    assert qat_ranges.start_ranges(qat, x) == 3
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(qat.trainable_variables, weights))
    np.testing.assert_allclose([all_values[0]["min_var"].numpy(), all_values[0]["max_var"].numpy()],
                               [0.0, x.max()], rtol=1e-6)
    relu, logits = keras.Model(inputs, hidden)(x).numpy(), model(x).numpy()
    (relu_min, relu_max), (low, high) = [(float(p["min_var"].numpy()), float(p["max_var"].numpy()))
                                         for p in moving]  # in graph order
    assert relu_min == 0.0
    np.testing.assert_allclose(relu_max, relu.max(), rtol=0.03)  # QAT's input is quantized
    np.testing.assert_allclose([low, high], [min(logits.min(), 0), max(logits.max(), 0)],
                               rtol=0.05, atol=0.01)


def test_qat_in_wrap_starts_ranges_from_the_training_data():
    model = _blocks_model()
    x = np.random.default_rng(0).uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    y = np.arange(32) % 4
    scales = []
    for samples in (0, 32):
        edge = tfedge.wrap(model, quantize=tfedge.QATConfig(range_samples=samples))
        edge.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        edge.fit(x, y, batch_size=16, epochs=1, verbose=0)
        art = tfedge.convert(edge.finish(), x[:16])
        scales.append(art.outputs[0].scale[0])
    # tfmot's start: the logits' range stays near [-6, 6] after 2 steps (step ~ 12 / 255).
    assert scales[0] > 0.04 and scales[1] < scales[0] / 2, scales

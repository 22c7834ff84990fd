"""Keras 3 models (``import keras``) through wrap -> fit -> finish -> convert -> validate.

tfmot only works on tf_keras; tfedge.keras3 carries a Keras 3 model across
(checked numerically) and hands a Keras 3 model back. These tests build the
models with Keras 3 itself, as a user whose code says ``import keras`` would.
"""

import logging

import numpy as np
import pytest

import tfedge  # noqa: F401  (first: makes tf.keras tf_keras; `import keras` stays Keras 3)
from tfedge import keras as tf_keras
from tfedge import keras3 as bridge
from tfedge.errors import UnsupportedModelError

from tests.helpers import build_digits_cnn

keras = pytest.importorskip("keras")
if not keras.__version__.startswith("3."):  # pragma: no cover - the venv pins Keras 3
    pytest.skip(f"needs Keras 3, found keras {keras.__version__}", allow_module_level=True)


def build_keras3_digits_cnn(width: int = 16, name: str = "digits_cnn"):
    """conftest's digits CNN, built with Keras 3."""
    return build_digits_cnn(width, name, keras=keras)


def compile_keras3_style(edge):
    """compile with Keras 3 objects, as Keras 3 training code does."""
    edge.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    return edge


def _digits_as_rgb_32(x):
    """8x8x1 digits -> 32x32x3 (nearest-neighbour upscaling, grey to RGB)."""
    return np.repeat(np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), 3, axis=3)


def _calibrate_batchnorm(model, x):
    """BatchNorm statistics of real images, as after training (not the identity)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)


def _kernels(model):
    return {layer.name: layer.get_weights()[0] for layer in model.layers
            if getattr(layer, "kernel", None) is not None}


# ----------------------------------------------------------------------------
# The foundation's end-to-end digits test, with a Keras 3 model
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras3_pipeline(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    model = build_keras3_digits_cnn()
    before = [w.copy() for w in model.get_weights()]
    edge = compile_keras3_style(tfedge.wrap(
        model, prune=tfedge.PruneConfig(0.8, begin_epoch=1, end_epoch=7)))
    edge.fit(x_train, y_train, epochs=9, batch_size=32, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(monitor="loss", patience=50)])
    trained = edge.finish()
    artifact = tfedge.convert(trained, representative_data=x_train[:300])
    report = tfedge.validate(artifact, trained, x_test, y_test)
    return model, before, edge, trained, artifact, report


def test_finish_gives_back_a_keras3_model_with_the_sparsity(keras3_pipeline):
    model, _, _, trained, _, _ = keras3_pipeline
    assert isinstance(trained, keras.Model) and not isinstance(trained, tf_keras.Model)
    assert trained.name == model.name
    assert [layer.name for layer in trained.layers] == [layer.name for layer in model.layers]
    kernels = _kernels(trained)
    assert len(kernels) == 4
    for name, kernel in kernels.items():
        assert np.mean(kernel == 0) == pytest.approx(0.8, abs=0.01), name


def test_round_trip_keras3_model_computes_what_tfedge_trained(keras3_pipeline, digits):
    _, _, edge, trained, _, _ = keras3_pipeline
    _, (x_test, _) = digits
    inside = edge.predict(x_test, verbose=0)  # the tf_keras network, pruning wrappers on
    given_back = trained.predict(x_test, verbose=0)
    assert np.std(inside) > 1.0  # real, trained logits
    np.testing.assert_allclose(given_back, inside, rtol=1e-5, atol=1e-5)


def test_users_keras3_model_is_not_changed(keras3_pipeline):
    model, before, _, trained, _, _ = keras3_pipeline
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))


def test_keras3_model_converts_to_full_int8_and_agrees(keras3_pipeline):
    _, _, _, _, artifact, report = keras3_pipeline
    assert artifact.inputs[0].dtype == "INT8" and artifact.outputs[0].dtype == "INT8"
    assert artifact.flatbuffer.float_ops() == []
    for row in artifact.flatbuffer.weight_sparsity():
        assert row["sparsity"] >= 0.79, row  # the sparsity survives conversion
    assert report.keras_accuracy >= 0.9
    assert abs(report.keras_accuracy - report.tflite_accuracy) <= 0.015
    assert report.agreement >= 0.98


# ----------------------------------------------------------------------------
# The bridge itself
# ----------------------------------------------------------------------------
def _graph_with_nested_shared_and_renamed_layers():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.LeakyReLU(negative_slope=0.2, name="leaky")(h)  # tf_keras: alpha
    h = keras.layers.Dropout(0.3)(h)
    flat = keras.layers.Flatten()(h)
    shared = keras.layers.Dense(16, activation="tanh", name="shared")
    a = shared(flat)
    b = shared(keras.layers.Dense(flat.shape[-1], name="mix")(flat))  # called twice
    head = keras.Sequential([keras.Input((32,)), keras.layers.Dense(12, activation="relu"),
                             keras.layers.Dense(10)], name="head")
    outputs = head(keras.layers.Concatenate()([a, b]))
    model = keras.Model(inputs, outputs, name="graph")
    rng = np.random.default_rng(0)  # BatchNorm statistics that are not the identity
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 1, 8), rng.normal(0, 1, 8),
                    rng.uniform(0.5, 2, 8)])
    return model


def test_bridge_is_exact_for_nested_shared_and_renamed_layers(digits):
    _, (x_test, _) = digits
    model = _graph_with_nested_shared_and_renamed_layers()
    tf_model = bridge.to_tf_keras(model)
    assert isinstance(tf_model, tf_keras.Model)
    assert [layer.name for layer in tf_model.layers] == [layer.name for layer in model.layers]
    assert isinstance(tf_model.get_layer("head"), tf_keras.Sequential)
    assert tf_model.get_layer("leaky").alpha == pytest.approx(0.2)
    expected = model.predict(x_test, verbose=0)
    np.testing.assert_allclose(tf_model.predict(x_test, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    back = bridge.to_keras3(tf_model, like=model)
    assert isinstance(back, keras.Model) and back is not model
    np.testing.assert_allclose(back.predict(x_test, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_sequential_built_without_input_is_carried():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)],
                             name="seq")
    model.build((None, 5))
    tf_model = bridge.to_tf_keras(model)
    assert isinstance(tf_model, tf_keras.Sequential) and tf_model.name == "seq"
    assert bridge.max_difference(model, tf_model) <= 1e-6


def test_keras_applications_mobilenetv2_is_carried_exactly(digits):
    _, (x_test, _) = digits
    x = _digits_as_rgb_32(x_test[:64])
    keras.utils.set_random_seed(4)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3),
                                           classes=10, classifier_activation=None)
    _calibrate_batchnorm(model, x)
    tf_model = bridge.to_tf_keras(model)
    assert [type(layer).__name__ for layer in tf_model.layers] == \
        [type(layer).__name__ for layer in model.layers]
    # An untrained MobileNetV2's logits hardly depend on its input, so compare
    # what every layer computes, on real images.
    names = [layer.name for layer in model.layers[1:]]
    ours = tf_keras.Model(tf_model.inputs, [tf_model.get_layer(n).output for n in names])
    theirs = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    varying = 0
    for name, a, b in zip(names, theirs.predict(x, verbose=0), ours.predict(x, verbose=0)):
        scale = np.abs(a).max()
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
        varying += bool(a.std(axis=0).mean() > 1e-3 * scale)
    assert varying > 100  # most layers' outputs do depend on the image


def _calibrated_efficientnet(digits):
    """EfficientNetB0 whose BatchNorm saw a few near-identical digits: channels of
    near-zero variance, which amplify any float rounding difference."""
    _, (x_test, _) = digits
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    _calibrate_batchnorm(model, _digits_as_rgb_32(x_test[:16]))
    return model


def test_ill_conditioned_efficientnet_is_carried_bit_exactly(digits):
    # tf_keras's default fused BatchNorm kernel rounds differently from Keras 3's
    # tf.nn.batch_normalization; through this network that grew to 9091x the float
    # tolerance. The copy uses the unfused kernel: every layer's output is identical.
    model = _calibrated_efficientnet(digits)
    tf_model = bridge.to_tf_keras(model)
    assert all(not layer.fused for layer in tf_model.layers
               if isinstance(layer, tf_keras.layers.BatchNormalization))
    assert bridge.check_equivalent(model, tf_model, what="copy") == 0.0


def test_rounding_drift_in_an_ill_conditioned_network_is_not_an_error(digits, caplog):
    # The same network with tf_keras's fused BatchNorm kernel (a clone: `fused` is not
    # in tf_keras's config): its outputs drift apart although every layer computes the
    # same alone. That must not block the user.
    model = _calibrated_efficientnet(digits)
    exact = bridge.to_tf_keras(model)
    tf_model = tf_keras.models.clone_model(exact)
    tf_model.set_weights(exact.get_weights())
    assert all(layer.fused for layer in tf_model.layers
               if isinstance(layer, tf_keras.layers.BatchNormalization))
    with caplog.at_level(logging.WARNING):
        worst = bridge.check_equivalent(model, tf_model, what="fused copy")
    assert worst > 1
    assert "every layer computes the same alone" in caplog.text
    assert "Taken as equivalent" in caplog.text


# ----------------------------------------------------------------------------
# What cannot be carried: clear errors, and the way out
# ----------------------------------------------------------------------------
class Scale(keras.layers.Layer):
    """A custom Keras 3 layer: a learned per-channel scale."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


class TfKerasScale(tf_keras.layers.Layer):
    """Its tf_keras twin: same config, same weights, same math."""

    factor = 1.0

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale * self.factor


class WrongTwin(TfKerasScale):
    factor = 3.0  # not the same math


def _model_with_custom_layer():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    h = Scale(name="my_scale")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="custom")
    model.get_layer("my_scale").set_weights([np.linspace(0.5, 2, 144).astype("float32")])
    return model


def test_custom_layer_is_named_with_the_way_out():
    with pytest.raises(UnsupportedModelError, match=r"(?s)custom/my_scale: custom Scale.*"
                       r"custom_objects="):
        tfedge.wrap(_model_with_custom_layer(), prune=0.5)


def test_custom_layer_with_a_tf_keras_twin_trains_and_comes_back(digits):
    (x, y), (x_test, _) = digits
    model = _model_with_custom_layer()
    tf_model = bridge.to_tf_keras(model, custom_objects={"Scale": TfKerasScale})
    edge = compile_keras3_style(tfedge.wrap(tf_model, prune=0.5))
    edge.fit(x[:256], y[:256], epochs=2, batch_size=32, verbose=0)
    back = bridge.to_keras3(edge.finish(), like=model)
    assert isinstance(back.get_layer("my_scale"), Scale)
    np.testing.assert_allclose(back.predict(x_test, verbose=0), edge.predict(x_test, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_a_twin_that_computes_differently_is_caught_and_named():
    with pytest.raises(UnsupportedModelError,
                       match=r"(?s)does not compute the same.*compute differently alone.*"
                             r"custom/my_scale \(Scale\): max abs difference [0-9.]+"):
        bridge.to_tf_keras(_model_with_custom_layer(), custom_objects={"Scale": WrongTwin})


def test_keras3_only_constructs_are_all_named():
    inputs = keras.Input((16,))
    h = keras.layers.Dense(8, lora_rank=2, name="lora")(inputs)  # Keras 3 only option
    h = keras.ops.sin(h)  # a Keras 3 operation tf_keras has no layer for
    model = keras.Model(inputs, keras.layers.Dense(2, activation="squareplus", name="out")(h))
    with pytest.raises(UnsupportedModelError) as info:
        tfedge.wrap(model, prune=0.5)
    text = str(info.value)
    assert "lora: Keras 3 option lora_rank=2 has no tf_keras equivalent" in text
    assert "/sin: a Keras 3 operation" in text and "Use a layer instead" in text
    assert "out: activation 'squareplus' does not exist in tf_keras" in text


def test_mobilenet_v3_constructs_translate_by_their_exact_maths():
    """hard_sigmoid (relu6(x + 3) / 6 in Keras 3), hard_silu and x + c / x * c / x - y."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(8)(inputs)
    a = keras.layers.Activation("hard_sigmoid", name="hs")(h)
    b = keras.layers.Activation("hard_silu", name="hsw")(h * 3.0)
    out = keras.layers.Dense(2)((a + 1.0) - b / 2.0)
    model = keras.Model(inputs, out)
    tf_model = bridge.to_tf_keras(model)  # checked layer by layer inside
    x = np.random.default_rng(0).normal(0, 3, (8, 16)).astype("float32")
    np.testing.assert_allclose(tf_model(x).numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    prepared, report = tfedge.prepare.prepare_model(tf_model)
    assert report.rewrites.get("HardSwish") == 1 and report.rewrites.get("hard_sigmoid") == 1


def test_convnext_layers_of_keras_applications_are_carried():
    """ConvNeXt's LayerScale and StochasticDepth are keras.applications' own
    (unregistered) layers: they go to tf_keras's twins, weights and all."""
    from keras.src.applications import convnext  # noqa: PLC0415  (Keras 3 internals)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 8))
    h = keras.layers.Dense(8)(inputs)
    h = convnext.LayerScale(0.5, 8, name="scale")(h)
    out = keras.layers.Add()([inputs, convnext.StochasticDepth(0.1, name="drop")(h)])
    model = keras.Model(inputs, out)
    model.get_layer("scale").gamma.assign(np.linspace(-1, 1, 8).astype("float32"))
    tf_model = bridge.to_tf_keras(model)
    assert [type(layer).__name__ for layer in tf_model.layers][2:4] == ["LayerScale",
                                                                        "StochasticDepth"]
    np.testing.assert_array_equal(tf_model.get_layer("scale").get_weights()[0],
                                  np.linspace(-1, 1, 8).astype("float32"))
    assert bridge.check_equivalent(model, tf_model, what="copy") == 0.0


def test_keras3_hard_activations_are_carried_bit_exactly():
    """The bridge's hard_silu / hard_sigmoid compute Keras 3's exact float32 results
    (a reordered ``* (1 / 6)`` differs in the last bit for ~1 input in 6)."""
    x = np.random.default_rng(0).normal(0, 4, 100_000).astype("float32")
    for name in ("hard_silu", "hard_sigmoid"):
        ours = tf_keras.activations.get(tfedge.prepare.KERAS3_ACTIVATIONS[name])
        np.testing.assert_array_equal(np.asarray(ours(x)),
                                      np.asarray(keras.activations.get(name)(x)), err_msg=name)


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = keras.layers.Conv2D(8, 3, activation="relu")
        self.flat = keras.layers.Flatten()
        self.out = keras.layers.Dense(10)

    def call(self, x):
        return self.out(self.flat(self.conv(x)))


def test_subclassed_keras3_model_converts_and_validates_but_wrap_says_why_not(digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(6)
    model = SubclassedNet()
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)  # Keras 3 trains it natively
    with pytest.raises(UnsupportedModelError, match=r"(?s)subclassed Keras 3 model.*"
                       r"convert and tfedge.validate accept it.*functional"):
        tfedge.wrap(model, prune=0.5)
    artifact = tfedge.convert(model, representative_data=x[:300])
    assert artifact.flatbuffer.float_ops() == []
    report = tfedge.validate(artifact, model, x_test, y_test)
    assert report.keras_accuracy >= 0.85 and report.agreement >= 0.98


def test_subclassed_keras3_model_never_called_has_a_clear_error():
    with pytest.raises(UnsupportedModelError, match=r"call it once on a batch"):
        tfedge.convert(SubclassedNet(), representative_data=np.zeros((4, 8, 8, 1), "float32"))


def test_keras3_teacher_distills_into_a_keras3_student(digits):
    (x, y), (x_test, _) = digits
    keras.utils.set_random_seed(7)
    teacher = build_keras3_digits_cnn(width=16, name="teacher")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x[:512], y[:512], epochs=2, batch_size=32, verbose=0)
    before = [w.copy() for w in teacher.get_weights()]
    edge = compile_keras3_style(tfedge.wrap(build_keras3_digits_cnn(width=4, name="student"),
                                            teacher=teacher))
    history = edge.fit(x[:512], y[:512], epochs=2, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    student = edge.finish()
    assert isinstance(student, keras.Model) and student.name == "student"
    np.testing.assert_allclose(student.predict(x_test, verbose=0),
                               edge.predict(x_test, verbose=0), rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))


def test_keras3_compile_objects_are_translated():
    args = bridge.compile_arguments(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(
            1e-3, 100, 0.9), beta_1=0.8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy(name="acc")],
        run_eagerly=False)
    assert isinstance(args["optimizer"], tf_keras.optimizers.Adam)
    assert args["optimizer"].get_config()["beta_1"] == pytest.approx(0.8)
    assert args["loss"].get_config()["from_logits"] is True
    assert args["metrics"][0] == "accuracy" and args["metrics"][1].name == "acc"
    assert args["run_eagerly"] is False
    with pytest.raises(UnsupportedModelError, match="gradient_accumulation_steps=4"):
        bridge.compile_arguments(optimizer=keras.optimizers.SGD(gradient_accumulation_steps=4))


def test_keras3_two_output_model_trains_with_dict_losses_by_output_name():
    """A Keras 3 detector-style model compiled as its Keras 3 code would: losses keyed by
    output name, through prune -> QAT; the finished model keeps the names."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs))
    model = keras.Model(inputs, [keras.layers.Dense(4, name="boxes")(h),
                                 keras.layers.Dense(3, name="scores")(h)])
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                       quantize=tfedge.QATConfig(start_epoch=1))
    edge.compile(keras.optimizers.Adam(1e-3),
                 {"boxes": "mse", "scores": keras.losses.BinaryCrossentropy(from_logits=True)})
    rng = np.random.default_rng(0)
    x = rng.random((128, 8, 8, 1), np.float32)
    history = edge.fit(x, {"boxes": rng.random((128, 4), np.float32),
                           "scores": rng.integers(0, 2, (128, 3)).astype(np.float32)},
                       batch_size=32, epochs=2, verbose=0)
    assert {"boxes_loss", "scores_loss"} <= set(history.history)
    assert list(edge.finish().output_names) == ["boxes", "scores"]


# ----------------------------------------------------------------------------
# A keras.applications model with pruning + QAT, to full int8
# ----------------------------------------------------------------------------
@pytest.mark.slow
def test_keras3_mobilenetv2_prunes_with_qat_to_full_int8(digits, caplog):
    """The mechanics on a real keras.applications graph: a few steps of each phase.

    (Minutes on 2 shared cores, nearly all of it tfmot's QAT and the TFLite
    converter; the accuracy of so short a run means nothing and is not tested:
    the digits test above checks accuracy, this one that the int8 flatbuffer
    computes what the QAT model computes.)
    """
    (x, y), (x_test, y_test) = digits
    x, x_test = _digits_as_rgb_32(x[:64]), _digits_as_rgb_32(x_test[:100])
    keras.utils.set_random_seed(8)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3),
                                           classes=10, classifier_activation=None)
    edge = compile_keras3_style(tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                                            quantize=True))
    edge.fit(x, y[:64], epochs=2, batch_size=32, verbose=0)  # epoch 0 prunes, epoch 1 QAT
    with caplog.at_level(logging.WARNING):
        qat_model = edge.finish()
    # QAT's fake-quant layers exist only in tf_keras: finish says so and keeps them.
    assert isinstance(qat_model, tf_keras.Model) and "quantization-aware" in caplog.text
    artifact = tfedge.convert(qat_model)  # the ranges come from QAT
    assert artifact.inputs[0].dtype == "INT8" and artifact.outputs[0].dtype == "INT8"
    assert artifact.flatbuffer.float_ops() == []
    pruned = [r for r in artifact.flatbuffer.weight_sparsity() if r["sparsity"] >= 0.49]
    assert len(pruned) >= 30  # the pruned convolutions keep their zeros through QAT
    report = tfedge.validate(artifact, qat_model, x_test, y_test[:100])
    assert report.num_samples == 100 and report.snr_db > 15

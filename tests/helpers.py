"""Shared builders for the tests: the small digits CNN, its compile settings, log messages.

Import them as ``from tests.helpers import build_digits_cnn`` (the fixtures that
use them are in ``tests/conftest.py``).
"""

import logging as std_logging

from tfedge import keras, qat_gradients


def build_digits_cnn(width: int = 16, name: str = "digits_cnn", keras=keras):
    """A small int8-friendly CNN for 8x8x1 digits (logits output).

    ``keras``: the Keras to build it with (tf_keras; Keras 3 in test_keras3).
    """
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def compile_for_digits(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def build_cnn(width, input_shape):
    """A small digits CNN whose channels scale with ``width`` (tune's ``build_fn``)."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(max(1, int(16 * width)), 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(max(1, int(32 * width)), 3, strides=2, padding="same",
                            activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(max(1, int(64 * width)), activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="cnn")


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def warning_messages(caplog) -> list:
    """The messages of the records ``caplog`` caught at WARNING or above."""
    return [r.getMessage() for r in caplog.records if r.levelno >= std_logging.WARNING]


def residual_concat_model():
    """Conv-BN-ReLU stem, depthwise block with a residual Add, a Concatenate of two
    branches, and a Dense head after both GlobalAveragePooling and Flatten."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    a = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    a = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name="stem_bn")(a))
    b = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    b = keras.layers.ReLU()(keras.layers.BatchNormalization(name="dw_bn")(b))
    b = keras.layers.Conv2D(16, 1, name="proj")(b)
    r = keras.layers.Add(name="residual")([a, b])
    left = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="left")(r)
    right = keras.layers.Conv2D(16, 1, activation="relu", name="right")(r)
    c = keras.layers.Concatenate(name="concat")([left, right])
    c = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="c3")(c)
    h = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(c), keras.layers.Flatten()(keras.layers.MaxPooling2D()(c))])
    h = keras.layers.Dense(32, activation="relu", name="fc")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="rescat")


def dense_heavy_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.Conv2D(32, 1, activation="relu", name="pointwise")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(256, activation="relu", name="fc1")(h)
    h = keras.layers.Dense(256, activation="relu", name="fc2")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="dense_heavy")


def compile_residual(model):
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def count_vectorized_gradient(monkeypatch) -> list:
    """Makes tfedge's per-channel fake-quant gradient record each call; returns the
    list it appends the op types to (the swap installs the patched function)."""
    calls = []
    real = qat_gradients.per_channel_gradient

    def counted(op, grad):
        calls.append(op.type)
        return real(op, grad)

    monkeypatch.setattr(qat_gradients, "per_channel_gradient", counted)
    return calls

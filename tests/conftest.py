"""Shared fixtures: real digits data and a small CNN trained on it once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfedge  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TF builds tf.keras)
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402


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


@pytest.fixture(scope="session")
def digits():
    """((x_train, y_train), (x_test, y_test)) of scikit-learn's digits, 8x8x1 in [0, 1]."""
    return load_digits()


@pytest.fixture
def make_digits_cnn():
    """The builder of the small digits CNN: ``make_digits_cnn(width=16)``."""
    keras.utils.set_random_seed(0)
    return build_digits_cnn


@pytest.fixture(scope="session")
def trained_digits_cnn(digits):
    """A float digits CNN trained for 15 epochs (about 97% test accuracy)."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_for_digits(build_digits_cnn())
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def digits_int8(trained_digits_cnn, digits):
    """The trained digits CNN converted to full int8 (a TFLiteArtifact)."""
    (x_train, _), _ = digits
    return tfedge.convert(trained_digits_cnn, representative_data=x_train[:300])

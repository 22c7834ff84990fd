"""Shared fixtures: real digits data and a small CNN trained on it once per session.

tests/unit holds the tests that train nothing; tests/integration the rest.
The builders the fixtures use are in :mod:`tests.helpers`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import tfedge  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TF builds tf.keras)
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402

from tests.helpers import build_digits_cnn, compile_for_digits  # noqa: E402


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

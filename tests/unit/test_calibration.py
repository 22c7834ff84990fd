"""Calibration data: representative samples checked with clear errors, datasets read."""

import logging as std_logging

import numpy as np
import pytest
import tensorflow as tf

from tfedge.calibration import representative_from_dataset, representative_samples

from tests.helpers import warning_messages


def test_representative_data_is_checked_with_clear_errors(digits, caplog):
    (x_train, y_train), _ = digits
    shape = (None, 8, 8, 1)
    with pytest.raises(ValueError, match=r"does not fit the model input"):
        representative_samples(x_train[:, :4], shape, 300)
    with pytest.raises(ValueError, match="numeric"):
        representative_samples(np.array([["a"] * 64]).reshape(1, 8, 8, 1), shape, 300)
    bad = x_train[:150].copy()
    bad[7, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[7\]"):
        representative_samples(bad, shape, 300)
    with pytest.raises(ValueError, match="identical"):
        representative_samples(np.repeat(x_train[:1], 150, axis=0), shape, 300)
    with pytest.raises(ValueError, match="needs representative_data"):
        representative_samples(None, shape, 300)
    with caplog.at_level(std_logging.WARNING):
        assert len(representative_samples(x_train[:40], shape, 300)) == 40
    assert any("only 40 representative samples" in m for m in warning_messages(caplog))
    # (x, y) datasets: only x is used, batched or not
    ds = tf.data.Dataset.from_tensor_slices((x_train[:70], y_train[:70]))
    np.testing.assert_array_equal(representative_from_dataset(ds.batch(32), 50), x_train[:50])
    np.testing.assert_array_equal(representative_from_dataset(ds, 300), x_train[:70])
    samples = representative_samples(ds.batch(16), shape, 64)
    assert len(samples) == 64 and samples[0].shape == (1, 8, 8, 1)

"""TFLiteRunner and validate on outputs TFLite orders differently from Keras."""

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge._validate import TFLiteRunner, compare_outputs


@pytest.fixture(scope="module")
def two_output_model(digits):
    (x, _), _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(32, activation="relu")(h)
    # Named so that TFLite's sorted signature order is the reverse of Keras'.
    boxes = keras.layers.Dense(4, name="z_boxes")(h)
    scores = keras.layers.Dense(3, activation="sigmoid", name="a_scores")(h)
    model = keras.Model(inputs, [boxes, scores])
    return model, tfedge.convert(model, representative_data=x[:200])


def test_runner_returns_outputs_in_keras_order(two_output_model, digits):
    model, artifact = two_output_model
    _, (x, _) = digits
    runner = TFLiteRunner(artifact.content)
    assert runner.output_names == sorted(model.output_names)  # TFLite's own order differs
    boxes, scores = runner.predict(x[:40], output_names=model.output_names)
    k_boxes, k_scores = model.predict(x[:40], verbose=0)
    assert boxes.shape == k_boxes.shape == (40, 4) and scores.shape == k_scores.shape == (40, 3)
    assert np.abs(scores - k_scores).max() < 0.05  # sigmoid outputs, scale 1/256
    assert np.abs(boxes - k_boxes).max() < 0.1 * np.abs(k_boxes).max()


def test_validate_reports_each_output(two_output_model, digits):
    model, artifact = two_output_model
    _, (x, _) = digits
    report = tfedge.validate(artifact, model, x[:100])
    assert set(report.per_output) == {"z_boxes", "a_scores"}
    assert all(stats["snr_db"] > 20 for stats in report.per_output.values()), report.per_output
    assert report.agreement is None and "a_scores" in str(report)


def test_compare_outputs_metrics_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    cand = np.array([[0.9, 0.1], [0.2, 0.7], [1.0, 1.5]])
    report = compare_outputs(ref, cand, y=[0, 1, 1])
    assert report.agreement == pytest.approx(2 / 3)
    assert report.keras_accuracy == pytest.approx(2 / 3)
    assert report.tflite_accuracy == pytest.approx(1.0)
    assert report.max_abs_error == pytest.approx(1.0)
    noise = 0.01 + 0.01 + 0.04 + 0.09 + 1.0 + 0.25
    assert report.snr_db == pytest.approx(10 * np.log10(7.0 / noise))


def test_disagreements_keras_scores_as_near_ties_are_counted():
    step = 1 / 256  # an int8 softmax output
    ref = np.array([[0.5, 0.5 - step, 0.0],        # TFLite picks a class one step below
                    [0.6, 0.4, 0.0],               # ... 51 steps below
                    [0.1, 0.2, 0.7],               # agrees
                    [0.3, 0.3 - 3 * step, 0.4],    # ... 0.1 + 3 steps below
                    [0.3, 0.3 - 2 * step, 0.29]])  # ... two steps below (counted)
    cand = np.array([[0.49, 0.51, 0.0], [0.3, 0.7, 0.0], [0.1, 0.2, 0.7],
                     [0.3, 0.5, 0.2], [0.3, 0.31, 0.0]])
    report = compare_outputs(ref, cand, output_step=step)
    assert report.agreement == pytest.approx(1 / 5)
    assert report.near_ties == 2, report
    assert "4 differ, 2 of them Keras near-ties" in str(report)
    assert compare_outputs(ref, cand).near_ties is None  # float output: no step known
    assert compare_outputs(ref, ref, output_step=step).near_ties == 0


def test_identical_outputs_have_infinite_snr():
    a = np.random.default_rng(0).normal(size=(5, 3))
    assert compare_outputs(a, a.copy()).snr_db == float("inf")

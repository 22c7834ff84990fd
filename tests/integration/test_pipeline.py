"""The foundation end to end on real digits: wrap -> fit -> finish -> convert -> validate."""

import json

import numpy as np
import pytest

import tfedge
from tfedge.errors import ConversionError

from tests.helpers import compile_for_digits


@pytest.fixture(scope="module")
def pruned_pipeline(digits):
    from tests.helpers import build_digits_cnn
    from tfedge import keras

    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    model = build_digits_cnn()
    wrapped = compile_for_digits(tfedge.wrap(
        model, prune=tfedge.PruneConfig(0.8, begin_epoch=1, end_epoch=10)))
    wrapped.fit(x_train, y_train, epochs=14, batch_size=32, verbose=0)
    plain = wrapped.finish()
    artifact = tfedge.convert(plain, representative_data=x_train[:300])
    report = tfedge.validate(artifact, plain, x_test, y_test)
    return plain, artifact, report


def test_every_pruned_layer_reaches_80_percent(pruned_pipeline):
    plain, _, _ = pruned_pipeline
    rows = tfedge.sparsity_report(plain).rows
    assert len(rows) == 4
    for row in rows:
        assert row["sparsity"] == pytest.approx(0.8, abs=0.01), row


def test_converted_model_is_full_int8(pruned_pipeline):
    _, artifact, _ = pruned_pipeline
    assert artifact.inputs[0].dtype == "INT8" and artifact.outputs[0].dtype == "INT8"
    assert artifact.flatbuffer.float_ops() == []
    tensor_types = {t.dtype for t in artifact.flatbuffer.tensors}
    assert tensor_types <= {"INT8", "INT32"}, tensor_types
    # The sparsity survives conversion: read back from the flatbuffer's weights.
    for row in artifact.flatbuffer.weight_sparsity():
        assert row["sparsity"] >= 0.79, row


def test_tflite_matches_keras_on_held_out_digits(pruned_pipeline):
    _, _, report = pruned_pipeline
    assert report.keras_accuracy >= 0.9
    assert abs(report.keras_accuracy - report.tflite_accuracy) <= 0.015
    assert report.agreement >= 0.98
    assert report.snr_db > 20


def test_report_prints_and_serializes(pruned_pipeline):
    _, artifact, report = pruned_pipeline
    text = str(report)
    assert "top-1 agreement" in text and "SNR" in text
    data = json.loads(report.to_json())
    assert data["num_samples"] == report.num_samples
    assert "INT8" in str(artifact)


def test_artifact_saves_and_loads(pruned_pipeline, tmp_path):
    _, artifact, _ = pruned_pipeline
    path = artifact.save(tmp_path / "sub" / "model.tflite")
    again = tfedge.load(path)
    assert again.content == artifact.content and again.ops == artifact.ops


def test_float_model_fails_the_full_int8_check(trained_digits_cnn):
    float_artifact = tfedge.convert(trained_digits_cnn, mode="float32")
    with pytest.raises(ConversionError, match=r"(?s)not full integer: \d+ op\(s\).*CONV_2D"):
        tfedge.check_full_integer(float_artifact)


def test_missing_representative_data_names_the_fix(trained_digits_cnn):
    with pytest.raises(ValueError, match="representative_data"):
        tfedge.convert(trained_digits_cnn)


def test_ill_shaped_representative_data_names_the_shapes(trained_digits_cnn):
    with pytest.raises(ValueError, match=r"does not fit the model input"):
        tfedge.convert(trained_digits_cnn, representative_data=np.zeros((10, 28, 28, 1)))


def test_representative_data_as_dataset_and_generator(trained_digits_cnn, digits):
    import tensorflow as tf

    (x, y), _ = digits
    ds = tf.data.Dataset.from_tensor_slices((x[:120], y[:120])).batch(16)
    a = tfedge.convert(trained_digits_cnn, representative_data=ds)
    b = tfedge.convert(trained_digits_cnn, representative_data=lambda: (s for s in x[:120]))
    assert a.num_calibration_samples == b.num_calibration_samples == 120
    assert a.content == b.content  # same samples, same calibration


def test_validate_rejects_non_tflite(tmp_path, trained_digits_cnn, digits):
    _, (x, y) = digits
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(tfedge.InvalidModelFileError, match="Not a TFLite model"):
        tfedge.validate(str(bad), trained_digits_cnn, x[:4], y[:4])

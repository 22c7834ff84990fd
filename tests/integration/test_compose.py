"""One wrap, one fit: prune -> (cluster) -> QAT phases by epoch, sparsity read from the .tflite."""

import logging

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge.cluster import ClusterConfig
from tfedge.quantize import QATConfig
from tfedge.phases import Phase, plan_phases

from tests.helpers import compile_for_digits


def test_prune_then_pqat_keeps_sparsity_in_the_int8_flatbuffer(trained_digits_cnn, digits,
                                                               tmp_path):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    edge = tfedge.wrap(trained_digits_cnn, prune=tfedge.PruneConfig(0.8, end_epoch=2),
                       quantize=True)  # QAT starts where pruning ends: epoch 2
    assert edge.phases == [Phase("prune", 0), Phase("quantize", 2)]
    assert edge.qat_plan.scheme == "int8+sparsity_preserving"
    compile_for_digits(edge)
    first_optimizer = edge.optimizer
    history = edge.fit(x, y, epochs=4, batch_size=32, verbose=0, validation_data=(x_test, y_test))
    assert edge.phase == "quantize" and edge.optimizer is not first_optimizer
    assert history.epoch == [0, 1, 2, 3] and len(history.history["val_accuracy"]) == 4
    path = tfedge.convert(edge.finish()).save(tmp_path / "pqat.tflite")
    artifact = tfedge.load(path)  # read back from the file
    rows = artifact.flatbuffer.weight_sparsity()
    assert len(rows) == 4
    for row in rows:
        assert row["dtype"] == "INT8" and row["sparsity"] >= 0.79, row
    report = tfedge.validate(artifact, edge, x_test, y_test)
    assert report.tflite_accuracy > 0.9 and report.agreement >= 0.98, str(report)


def test_phases_continue_across_fit_calls_with_a_new_learning_rate(make_digits_cnn, digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    edge = compile_for_digits(tfedge.wrap(
        make_digits_cnn(), prune=tfedge.PruneConfig(0.5, end_epoch=2),
        quantize=QATConfig(learning_rate=1e-4)))
    edge.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert edge.phase == "prune"
    history = edge.fit(x, y, epochs=1, batch_size=32, verbose=0)  # epoch 2: QAT starts
    assert edge.phase == "quantize" and len(history.epoch) == 1
    assert float(edge.optimizer.learning_rate) == pytest.approx(1e-4)
    assert type(edge.optimizer) is keras.optimizers.Adam


def test_plain_epochs_before_qat_then_recompiled(make_digits_cnn, digits):
    (x, y), _ = digits
    edge = compile_for_digits(tfedge.wrap(make_digits_cnn(), quantize=QATConfig(start_epoch=1)))
    assert edge.phase == "train"
    history = edge.fit(x[:256], y[:256], epochs=2, batch_size=32, verbose=0)
    assert edge.phase == "quantize" and history.epoch == [0, 1]
    assert tfedge.quantize.is_quantization_aware(edge.finish())


def test_impossible_combinations_are_refused(make_digits_cnn):
    model = make_digits_cnn()
    with pytest.raises(ValueError, match="int8 only"):
        tfedge.wrap(model, prune=0.5, quantize="int16x8")
    with pytest.raises(ValueError, match="int8 only"):
        tfedge.wrap(model, cluster=8, quantize="int16x8")
    with pytest.raises(ValueError, match="would be stripped before"):
        tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=4),
                    quantize=QATConfig(start_epoch=2))
    with pytest.raises(ValueError, match=r"QATConfig\(start_epoch=N\)"):
        tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_step=100), quantize=True)
    with pytest.raises(ValueError, match=r"QATConfig\(start_epoch=N\)"):
        tfedge.wrap(model, cluster=8, quantize=True)
    with pytest.raises(ValueError, match="not after the cluster phase"):
        plan_phases(None, ClusterConfig(8, start_epoch=3), QATConfig(start_epoch=3))
    with pytest.raises(ValueError, match="no optimization"):
        tfedge.wrap(model)


def test_finish_before_qat_warns_and_gives_the_pruned_model(make_digits_cnn, digits, caplog):
    (x, y), _ = digits
    edge = compile_for_digits(tfedge.wrap(make_digits_cnn(), prune=tfedge.PruneConfig(
        0.5, end_epoch=1), quantize=True))
    edge.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    with caplog.at_level(logging.WARNING):
        plain = edge.finish()
    assert "quantize phase(s) started" in caplog.text or "before the quantize" in caplog.text
    assert not tfedge.quantize.is_quantization_aware(plain)
    assert tfedge.sparsity_report(plain).overall == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_prune_cluster_then_pcqat_keeps_zeros_and_shared_values(trained_digits_cnn, digits):
    (x, y), (x_test, y_test) = digits
    x, y = x[:320], y[:320]
    edge = compile_for_digits(tfedge.wrap(
        trained_digits_cnn, prune=tfedge.PruneConfig(0.5, end_epoch=1),
        cluster=ClusterConfig(8, start_epoch=1), quantize=QATConfig(start_epoch=2)))
    assert edge.qat_plan.scheme == "int8+sparse_clusters_preserving"
    edge.fit(x, y, epochs=3, batch_size=32, verbose=0)
    artifact = tfedge.convert(edge.finish())
    fb = artifact.flatbuffer
    for op, info in fb.weight_tensors():
        weights = fb.constant(info.index)
        assert np.mean(weights == 0) >= 0.49
        # Per-channel int8 scales: each output channel keeps at most 8 values.
        assert max(len(np.unique(w)) for w in weights) <= 8, info.name
    assert tfedge.validate(artifact, edge, x_test, y_test).agreement >= 0.97


def test_config_objects_round_trip():
    cluster = ClusterConfig(16, start_epoch=2, init="linear", layers=["a"])
    assert ClusterConfig.from_config(cluster.get_config()).get_config() == cluster.get_config()
    edge_config = tfedge.wrap(_tiny(), prune=tfedge.PruneConfig(0.5, end_epoch=1),
                              quantize=True).get_config()
    assert edge_config["phases"] == [{"name": "prune", "start_epoch": 0},
                                     {"name": "quantize", "start_epoch": 1}]
    assert QATConfig.from_config(edge_config["quantize"]).scheme == "int8"


def _tiny():
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
